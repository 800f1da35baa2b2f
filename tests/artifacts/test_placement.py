"""The placement rules on small real graphs: the Paddle-style CNN of conftest and an attention block."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit.artifacts.placement import RULES, quantized_inputs, quantized_op_types
from calibkit.artifacts.qdq import export_qdq
from calibkit.backends.onnxruntime import OrtSession
from calibkit.calib.registry import TensorRange, compute_ranges, get_calibrator
from calibkit.data.images import discover_images
from calibkit.data.loader import iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.graph.normalize import normalized_model
from calibkit.graph.onnx_model import float_activations
from calibkit.stats.collect import collect_statistics
from tests.artifacts.test_qdq import assert_convs_fully_quantized
from tests.conftest import build_paddle_style_cnn, write_images


def producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def dequantized(model, node) -> list[bool]:
    """Per input of ``node``: does a DequantizeLinear produce it?"""
    made_by = producers(model)
    return [name in made_by and made_by[name].op_type == "DequantizeLinear" for name in node.input]


@pytest.fixture(scope="module")
def paddle_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("paddle_run")
    model = build_paddle_style_cnn(root / "paddle_style.onnx")
    write_images(root / "images", 12, size=(40, 36), seed=3)
    stats = collect_statistics(model, discover_images(root / "images"), Preprocess(size=(32, 32)), bins=512)
    return model, stats, compute_ranges(stats.tensors, get_calibrator("minmax")), root


def test_constant_weights_are_never_calibrated_as_activations(paddle_run):
    model, stats, ranges, _ = paddle_run
    weights = {node.output[0] for node in onnx.load(str(model)).graph.node if node.op_type == "Constant"}
    assert not weights & set(stats.tensors), "Constant-node weights and BatchNorm parameters are not histogrammed"
    assert not any(r.fallback for r in ranges.values()), "no fallback range: every calibrated tensor varies"


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_constant_weight_convs_get_per_channel_weights_and_the_graph_runs(paddle_run, target):
    model, _, ranges, root = paddle_run
    path = export_qdq(model, ranges, root / f"q.{target}.onnx", target=target)
    quantized = onnx.load(str(path))
    onnx.checker.check_model(quantized, full_check=True)
    assert_convs_fully_quantized(quantized)
    assert not [n for n in quantized.graph.node if n.op_type == "BatchNormalization"], "BN fused into its Conv"
    image = next(iter_batches(discover_images(root / "images")[:1], Preprocess(size=(32, 32)), 1)).array
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()


def test_constant_inputs_stay_float_and_nothing_sits_between_conv_and_activation(paddle_run):
    model, _, ranges, root = paddle_run
    quantized = onnx.load(str(export_qdq(model, ranges, root / "trt.onnx", target="tensorrt")))
    initializers = {init.name for init in quantized.graph.initializer}
    adds = [n for n in quantized.graph.node if n.op_type == "Add"]
    constant_adds = [n for n in adds if any(name in initializers for name in n.input)]
    assert len(constant_adds) == 3, "HardSwish's +3 in both blocks and the classifier's bias"
    assert not any(any(dequantized(quantized, n)) for n in constant_adds), "an Add of a constant stays float"
    residual = next(n for n in adds if n not in constant_adds)
    assert dequantized(quantized, residual)[1] is False, "an Add of two HardSwish outputs is fused in float"
    users = {name: [n.op_type for n in quantized.graph.node if name in n.input] for n in quantized.graph.node
             for name in n.output}
    for conv in (n for n in quantized.graph.node if n.op_type == "Conv"):
        assert "QuantizeLinear" not in users[conv.output[0]], "the Conv's output flows to its activation in float"


def build_attention(path, tokens=6, dim=8, seed=0):
    """One attention head the way transformer exports write it: 3-D MatMuls with bias Adds, Softmax,
    and the two activation-by-activation MatMuls (Q.K^T and P.V)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)
             for name, shape in (("wq", (dim, dim)), ("bq", (dim,)), ("wk", (dim, dim)), ("bk", (dim,)))]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q0"], name="q_proj"),
        helper.make_node("Add", ["q0", "bq"], ["q"], name="q_bias"),
        helper.make_node("MatMul", ["x", "wk"], ["k0"], name="k_proj"),
        helper.make_node("Add", ["k0", "bk"], ["k"], name="k_bias"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["y"], name="pv"),
    ]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, dim])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_attention_matmuls_are_quantized_and_bias_softmax_stay_float(tmp_path):
    path = build_attention(tmp_path / "attention.onnx")
    graph = normalized_model(path).model
    names = float_activations(graph)
    x = np.random.default_rng(1).standard_normal((1, 6, 8)).astype(np.float32)
    values = OrtSession(path, ["CPUExecutionProvider"], expose=names, model=graph).run(x, names)
    ranges = {n: TensorRange(float(np.abs(v).max()), float(v.min()), float(v.max())) for n, v in values.items()}
    quantized = onnx.load(str(export_qdq(path, ranges, tmp_path / "q.onnx")))
    nodes = {n.name: n for n in quantized.graph.node}
    matmuls = [n for n in quantized.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 4 and all(dequantized(quantized, n) == [True, True] for n in matmuls)
    assert not any(dequantized(quantized, nodes["softmax"])), "Softmax stays float"
    for bias in (n for n in quantized.graph.node if n.op_type == "Add"):
        assert not any(dequantized(quantized, bias)), "a bias Add stays float"


def test_every_rule_documents_itself():
    assert all(rule.why and rule.ops for rule in RULES)
    assert len(set(quantized_op_types())) == len(quantized_op_types()), "an op has one rule"


def test_quantized_inputs_name_what_gets_a_pair(paddle_run):
    model, _, ranges, root = paddle_run
    graph = normalized_model(model).model
    quantized = onnx.load(str(export_qdq(model, ranges, root / "names.onnx")))
    paired = {node.input[0] for node in quantized.graph.node if node.op_type == "QuantizeLinear"}
    assert quantized_inputs(graph) == paired
    assert "image" in paired and not any(name.endswith("plus3") for name in paired)


def test_a_yolo_head_keeps_its_output_layer_and_box_score_concat_float(tmp_path):
    """The YOLOv8 export's layout: the stem convolution is INT8; the head's last convolution (only decoding
    reads it) and the Concat of decoded boxes (pixels) with sigmoid scores (0-1) stay float."""
    from tests.conftest import build_tiny_yolov8

    model = onnx.load(build_tiny_yolov8(tmp_path / "yolo.onnx"))
    inputs = quantized_inputs(model)
    assert "images" in inputs, "the stem convolution reads INT8"
    assert "r1" not in inputs, "the head's output convolution stays float"
    assert not {"boxes", "scores"} & inputs, "the box/score Concat stays float"


def test_a_convolution_reading_softmax_probabilities_stays_float(tmp_path):
    """YOLOv8's DFL: a fixed 1x1 convolution takes the expectation over box bins of a Softmax."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="branch"),
        helper.make_node("Softmax", ["c1"], ["p"], name="bins", axis=1),
        helper.make_node("Transpose", ["p"], ["pt"], name="move", perm=[0, 1, 2, 3]),
        helper.make_node("Conv", ["pt", "w2"], ["e"], name="dfl"),
        helper.make_node("Conv", ["e", "w3"], ["y"], name="after"),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (16, 3, 1, 1)), ("w2", (1, 16, 1, 1)), ("w3", (2, 1, 1, 1)))]
    graph = helper.make_graph(nodes, "dfl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    inputs = quantized_inputs(model)
    assert "x" in inputs and "pt" not in inputs, inputs
    assert "e" in inputs, "a convolution whose result leaves the network undecoded stays INT8"
