"""Depthwise equalisation on a small real graph whose depthwise input channels span 0.01x to 10x."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit.data.images import discover_images
from calibkit.data.loader import iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.graph.equalize import MIN_SCALE, channel_scales, depthwise_inputs, equalize
from calibkit.graph.normalize import normalized_model
from calibkit.stats.channels import channel_absmax
from calibkit.workflow import CALIBRATED_GRAPH, calibrate
from tests.conftest import write_images

SPEC = Preprocess(size=(32, 32))


def build_uneven_depthwise(path, channels=8, seed=0):
    """A Conv whose output channels are scaled from 0.01 to 10, a ReLU, then a depthwise 3x3 Conv: the
    start of a MobileNet block with badly spread channel ranges."""
    rng = np.random.default_rng(seed)
    spread = np.geomspace(0.01, 10, channels).astype(np.float32)
    weights = {
        "w1": rng.standard_normal((channels, 3, 3, 3)).astype(np.float32) * spread[:, None, None, None],
        "dw": rng.standard_normal((channels, 1, 3, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "dw"], ["out"], name="depthwise", pads=[1, 1, 1, 1], group=channels),
    ]
    graph = helper.make_graph(nodes, "uneven", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", channels, 32, 32])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    root = tmp_path_factory.mktemp("uneven")
    write_images(root / "images", 10, size=(40, 40), seed=5)
    return build_uneven_depthwise(root / "uneven.onnx"), root


def run(path, batch):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]


def test_equalising_is_exact_and_evens_the_channels(uneven, tmp_path):
    path, root = uneven
    graph = normalized_model(path).model
    assert list(depthwise_inputs(graph).values()) == ["r1"]
    items = discover_images(root / "images")
    peaks = channel_absmax(graph, path, items, SPEC, ["r1"])
    assert peaks["r1"].max() / peaks["r1"].min() > 100
    equalized, done = equalize(graph, peaks)
    assert list(done.scales) == ["depthwise"] and min(done.scales["depthwise"]) >= MIN_SCALE
    onnx.save(equalized, str(tmp_path / "eq.onnx"))
    batch = next(iter_batches(items, SPEC, 4)).array
    np.testing.assert_allclose(run(tmp_path / "eq.onnx", batch), run(path, batch), rtol=1e-4, atol=1e-4)
    after = channel_absmax(equalized, tmp_path / "eq.onnx", items, SPEC, ["depthwise_equalized"])["depthwise_equalized"]
    assert after.max() / np.median(after) < 1.5, "every input channel now spans about the tensor's range"


def test_even_channels_are_left_as_exported():
    assert channel_scales(np.array([5.0, 6.0, 5.5, 4.0])) is None
    assert channel_scales(np.zeros(4)) is None
    np.testing.assert_allclose(channel_scales(np.array([0.001, 1.0, 1.0, 100.0])), [MIN_SCALE, 0.01, 0.01, 1.0])


def test_calibration_on_the_equalised_graph_lowers_int8_error(uneven, tmp_path):
    path, root = uneven
    batch = next(iter_batches(discover_images(root / "images"), SPEC, 10)).array
    reference = run(path, batch)
    errors = {}
    for equalize_depthwise in (False, True):
        out = tmp_path / str(equalize_depthwise)
        calibrate(path, root / "images", out, "minmax", samples=0, preprocess=SPEC, shard_size=None,
                  report_coverage=False, equalize_depthwise=equalize_depthwise)
        assert (out / CALIBRATED_GRAPH).is_file() == equalize_depthwise
        errors[equalize_depthwise] = float(np.mean((run(out / "minmax.qdq.onnx", batch) - reference) ** 2))
    assert errors[True] < 0.5 * errors[False], errors


def test_a_depthwise_input_bounded_by_relu6_is_left_as_exported(tmp_path):
    path = build_uneven_depthwise(tmp_path / "relu6.onnx")
    model = onnx.load(str(path))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "Clip"
    relu.input.extend(["zero", "six"])
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                                    numpy_helper.from_array(np.array(6.0, np.float32), "six")])
    assert depthwise_inputs(normalized_model(path).model) == {"depthwise": "r1"}  # ReLU: unbounded above
    onnx.save(model, str(path))
    assert depthwise_inputs(normalized_model(path).model) == {}
