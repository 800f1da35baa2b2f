"""The stress detector's architecture (``datasets/build_stress_detector.py``, narrow and at 448 px so the
suite stays short) under a memory budget it cannot meet in one piece: calibrate runs its statistics in
graph segments and compare its per-layer drift in a separate segmented pass, written after the comparison."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.test_real_models import calibkit, peak_gb

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def narrow_stress_detector(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "datasets"))
    from build_stress_detector import build

    path = tmp_path_factory.mktemp("stress") / "stress-detector-448.onnx"
    onnx.save(build(0, 448, (16, 32, 64, 128, 160), (0, 1, 2, 2, 1)), str(path))
    return path


def test_the_stress_architecture_calibrates_and_compares_in_graph_segments(narrow_stress_detector, doc_pages,
                                                                           tmp_path):
    from calibkit.graph.onnx_model import activation_bytes, load_model

    exposed = sum(activation_bytes(load_model(narrow_stress_detector), (1, 3, 448, 448)).values())
    assert exposed > 120e6, "one image exposes more than the budget below and the inline per-layer limit / 3"
    run = tmp_path / "run"
    done = calibkit("calibrate", "--model", narrow_stress_detector, "--images", doc_pages["calib"], "--out", run,
                    "--samples", 0, "--method", "mse", "--memory-budget", 0.05, "--no-engine-check")
    assert done.returncode == 0, done.stderr[-2000:]
    timings = json.loads((run / "timings.json").read_text())
    assert timings["statistics_graph_segments"] >= 4, timings
    done = calibkit("compare", "--model", narrow_stress_detector, "--images", doc_pages["eval"], "--candidates",
                    f"int8:{run},fp16", "--out", tmp_path / "report", "--no-bench", "--no-engine-check")
    assert done.returncode in (0, 3), done.stderr[-2000:]
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    comparison = document["comparison"]
    assert "layers_pending" not in comparison and comparison["layer_images"] == comparison["images"] == 4
    assert comparison["timings"]["layer_pass_s"] > 0, "the per-layer drift ran as a separate, segmented pass"
    convs = sum(node.op_type == "Conv" for node in load_model(narrow_stress_detector).graph.node)
    for candidate in comparison["candidates"]:
        layers = candidate["layers"]
        assert len(layers) >= convs, candidate["name"]
        assert all(np.isfinite(row["sqnr_db"]) or row["sqnr_db"] == float("inf") for row in layers)
    fp16 = {row["tensor"]: row["sqnr_db"] for row in comparison["candidates"][-1]["layers"]}
    assert min(fp16.values()) > 30, "FP16 stays close to FP32 on every layer of random weights"
    assert peak_gb(document) < 2.0
