"""A task plug-in from outside calibkit (``examples/keypoints_task.py``): its metrics on known keypoint
shifts, calibkit's task contract, and a real comparison that calls a broken INT8 candidate unusable."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit import workflow
from calibkit.artifacts.qdq import export_qdq
from calibkit.calib.registry import TensorRange, compute_ranges, get_calibrator
from calibkit.compare.run import Candidate
from calibkit.data.images import discover_images
from calibkit.data.preprocess import Preprocess
from calibkit.stats.collect import collect_statistics
from calibkit.tasks import registry
from calibkit.tasks.contract import check_task_contract

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "keypoints_task.py"
SPEC = Preprocess(size=(64, 64))


@pytest.fixture
def keypoints(monkeypatch):
    """The example module, registered for this test only."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = importlib.util.spec_from_file_location("keypoints_task", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def heatmap_model(path: Path, seed: int = 0) -> Path:
    """A seeded conv net from a 64x64 image to four 16x16 sigmoid heatmaps: a pose head's shape."""
    rng = np.random.default_rng(seed)
    shapes = {"w1": (8, 3, 3, 3), "w2": (8, 8, 3, 3), "w3": (4, 8, 1, 1)}
    weights = [numpy_helper.from_array((rng.standard_normal(s) * np.sqrt(2 / np.prod(s[1:]))).astype(np.float32), n)
               for n, s in shapes.items()]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["logits"], name="head"),
             helper.make_node("Sigmoid", ["logits"], ["heatmaps"], name="sigmoid")]
    graph = helper.make_graph(nodes, "pose", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [1, 4, 16, 16])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_pck_and_the_error_follow_known_keypoint_shifts(keypoints):
    scorer = keypoints.KeypointScorer(threshold=0.5, reach=1.0, cell=4.0)
    reference = [np.array([[3, 3, 0.9], [5, 5, 0.9], [7, 7, 0.9], [1, 1, 0.2]], float)]
    candidate = [np.array([[3, 3, 0.9], [5, 6, 0.9], [10, 11, 0.8], [1, 1, 0.7]], float)]
    scorer.add(reference, candidate, None)
    other = keypoints.KeypointScorer(threshold=0.5, reach=1.0, cell=4.0)
    other.add(reference, reference, None)
    scorer.merge(other)
    result = scorer.result()
    assert result["pck"] == pytest.approx(100 * 5 / 6), "the third keypoint moved 5 cells, past the reach of 1"
    assert result["mean_error_px"] == pytest.approx((0 + 1 + 5) * 4.0 / 6)
    assert result["visibility_agreement"] == pytest.approx(100 * 7 / 8), "the invisible fourth one became visible"


def test_the_plugin_keeps_the_contract_and_a_broken_candidate_is_called_unusable(keypoints, image_folder, tmp_path):
    model = heatmap_model(tmp_path / "pose.onnx")
    items = discover_images(image_folder)
    task = workflow.model_task(model, SPEC, "keypoints", items=items)
    assert type(task).__module__ == "keypoints_task" and "keypoints" in registry.available_tasks()
    check_task_contract(task, model, items[:8], SPEC)
    ranges = compute_ranges(collect_statistics(model, items, SPEC, batch_size=4).tensors, get_calibrator("minmax"))
    clipped = {name: TensorRange(1e-3, -1e-3, 1e-3) for name in ranges}  # every activation clipped to nothing
    candidates = [workflow.fp16_candidate(model, tmp_path),
                  Candidate("int8 clipped", "int8", export_qdq(model, clipped, tmp_path / "clipped.onnx"))]
    report = tmp_path / "report.html"
    result = workflow.compare_and_report(model, items, SPEC, candidates, report, task, batch_sizes=[], layer_images=0)
    fp16, broken = result["comparison"]["candidates"]
    assert fp16["metrics"]["pck"] >= 90 and fp16["verdict"]["status"] == "usable"
    assert broken["metrics"]["pck"] < 50 and broken["verdict"]["status"] == "unusable"
    written = json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))["comparison"]
    assert written["task"]["name"] == "keypoints" and "PCK vs FP32" in report.read_text(encoding="utf-8")


def test_the_cli_offers_the_plugin_and_accepts_its_metrics_in_rules(keypoints, capsys):
    from calibkit.cli.options import build_parser
    from calibkit.errors import CalibkitError
    from calibkit.tasks.verdict import rules_for

    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "keypoints" in shown and "keypoints auto" in shown, "--task and --budget-metric list the plug-in"
    task = keypoints.Keypoints(registry.TaskContext([registry.OutputInfo("heatmaps", (1, 4, 16, 16))], (64, 64), SPEC))
    assert rules_for(task, ["pck<99"], None), "--fail-on takes the plug-in's own metric"
    with pytest.raises(CalibkitError, match="pck"):
        rules_for(task, ["top1<99"], None)
