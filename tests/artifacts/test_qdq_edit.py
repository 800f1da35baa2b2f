"""A node rewired to float in memory gives the model that quantizing with the node excluded writes."""

import numpy as np
import onnx
import pytest

from calibkit.artifacts.placement import quantized_nodes
from calibkit.artifacts.qdq import export_qdq
from calibkit.artifacts.qdq_edit import with_node_in_float
from calibkit.backends.onnxruntime import OrtSession
from calibkit.calib.registry import compute_ranges, get_calibrator
from calibkit.data.preprocess import Preprocess
from calibkit.graph.normalize import normalized_model
from calibkit.sensitivity.ranking import quantizable_nodes
from calibkit.stats.collect import collect_statistics
from tests.conftest import build_paddle_style_cnn


@pytest.mark.parametrize("builder", ["small", "paddle"])
def test_rewired_nodes_match_a_requantized_model(small_model, image_folder, tmp_path, builder):
    model = small_model if builder == "small" else build_paddle_style_cnn(tmp_path / "paddle.onnx")
    from calibkit.data.images import discover_images

    spec = Preprocess(size=(32, 32))
    stats = collect_statistics(model, discover_images(image_folder), spec, batch_size=4)
    ranges = compute_ranges(stats.tensors, get_calibrator("minmax"))
    quantized = onnx.load(str(export_qdq(model, ranges, tmp_path / "all.onnx")))
    float_model = normalized_model(model).model
    quantized_names = quantized_nodes(float_model)
    batch = np.random.default_rng(0).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    rewired = 0
    for node in quantizable_nodes(model):
        edited = with_node_in_float(quantized, float_model, node, quantized_names)
        if edited is None:
            continue
        rewired += 1
        onnx.checker.check_model(edited, full_check=True)
        expected = OrtSession(export_qdq(model, ranges, tmp_path / "one.onnx", [node]), ["CPUExecutionProvider"])
        got = OrtSession(tmp_path / "edited", ["CPUExecutionProvider"], model=edited)
        for name, value in expected.run(batch).items():
            np.testing.assert_allclose(got.run(batch)[name], value, rtol=1e-5, atol=1e-5, err_msg=node)
        readers = {name for n in edited.graph.node for name in n.input}
        assert not [n for n in edited.graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in readers]
    assert rewired >= len(quantizable_nodes(model)) - 1, "the in-memory path serves (nearly) every layer"


def test_several_nodes_rewired_in_turn_match_a_model_quantized_without_them(small_model, image_folder, tmp_path):
    from calibkit.artifacts.qdq_edit import with_nodes_in_float
    from calibkit.data.images import discover_images

    spec = Preprocess(size=(32, 32))
    stats = collect_statistics(small_model, discover_images(image_folder), spec, batch_size=4)
    ranges = compute_ranges(stats.tensors, get_calibrator("minmax"))
    quantized = onnx.load(str(export_qdq(small_model, ranges, tmp_path / "all.onnx")))
    float_model = normalized_model(small_model).model
    batch = np.random.default_rng(1).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    for nodes in (["conv2", "conv3"], ["conv3", "fc", "conv1"]):
        edited = with_nodes_in_float(quantized, float_model, nodes, quantized_nodes(float_model))
        onnx.checker.check_model(edited, full_check=True)
        expected = OrtSession(export_qdq(small_model, ranges, tmp_path / "some.onnx", nodes), ["CPUExecutionProvider"])
        got = OrtSession(tmp_path / "edited", ["CPUExecutionProvider"], model=edited)
        for name, value in expected.run(batch).items():
            np.testing.assert_allclose(got.run(batch)[name], value, rtol=1e-5, atol=1e-5, err_msg=str(nodes))
