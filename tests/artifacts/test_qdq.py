import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from calibkit.artifacts.qdq import export_qdq
from calibkit.calib.registry import compute_ranges, get_calibrator
from calibkit.data.images import discover_images
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.stats.collect import collect_statistics

SPEC = Preprocess(size=(32, 32))


@pytest.fixture(scope="module")
def small_ranges(small_model, tmp_path_factory):
    from tests.conftest import write_images

    folder = tmp_path_factory.mktemp("calib")
    write_images(folder, 16, seed=7)
    stats = collect_statistics(small_model, discover_images(folder), SPEC, batch_size=8, bins=512)
    return compute_ranges(stats.tensors, get_calibrator("minmax")), folder


def _producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def assert_convs_fully_quantized(model):
    producers = _producers(model)
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        data, weight = (producers[name] for name in conv.input[:2])
        assert data.op_type == weight.op_type == "DequantizeLinear", conv.name
        weight_scale = numpy_helper.to_array(inits[weight.input[1]])
        out_channels = numpy_helper.to_array(inits[weight.input[0]]).shape[0]
        assert weight_scale.shape == (out_channels,), f"{conv.name} weights are not per-channel"
        assert numpy_helper.to_array(inits[weight.input[0]]).dtype == np.int8


def _run(path, batch, as_written=False):
    options = ort.SessionOptions()
    if as_written:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_every_conv_has_quantized_inputs_and_per_channel_weights(small_model, small_ranges, tmp_path, target):
    ranges, _ = small_ranges
    path = export_qdq(small_model, ranges, tmp_path / "q.onnx", target=target)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert_convs_fully_quantized(model)
    producers = _producers(model)
    add = next(n for n in model.graph.node if n.op_type == "Add")
    kinds = [producers[name].op_type for name in add.input]  # c3 (a Conv) and r1 (the residual branch)
    # TensorRT fuses the Add into conv3 and reads the residual in INT8; ONNX Runtime's QLinearAdd needs both.
    assert kinds == (["Conv", "DequantizeLinear"] if target == "tensorrt" else ["DequantizeLinear"] * 2), kinds
    assert not list(tmp_path.glob("*-inferred*")) and not list(small_model.parent.glob("*-inferred*"))


def test_tensorrt_target_drops_the_pre_activation_quantization(small_model, small_ranges, tmp_path):
    ranges, _ = small_ranges
    model = onnx.load(str(export_qdq(small_model, ranges, tmp_path / "q.onnx", target="tensorrt")))
    producers = _producers(model)
    for clip in (n for n in model.graph.node if n.op_type == "Clip"):
        assert producers[clip.input[0]].op_type == "Conv"
    assert all(i.data_type != onnx.TensorProto.INT32 for i in model.graph.initializer), "bias must stay float"


def test_onnxruntime_target_runs_integer_convolutions(small_model, small_ranges, tmp_path):
    ranges, _ = small_ranges
    path = export_qdq(small_model, ranges, tmp_path / "q.onnx", target="onnxruntime")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["QLinearConv"] == 3 and ops["Conv"] == 0


def test_both_targets_agree_and_stay_close_to_fp32(small_model, small_ranges, tmp_path):
    from calibkit.data.preprocess import decode_image

    ranges, folder = small_ranges
    batch = np.stack([SPEC(decode_image(i.path)) for i in discover_images(folder)])
    reference = _run(small_model, batch)
    trt = _run(export_qdq(small_model, ranges, tmp_path / "t.onnx", target="tensorrt"), batch)
    # the graph's own arithmetic: ONNX Runtime's fused u8s8 kernels saturate 16-bit sums on x86 CPUs
    # without VNNI (AVX2 only: 31 % of the output spread on this model), whatever the export
    cpu = _run(export_qdq(small_model, ranges, tmp_path / "o.onnx", target="onnxruntime"), batch, as_written=True)
    spread = np.abs(reference).max()
    assert np.abs(trt - reference).max() < 0.05 * spread
    assert np.abs(cpu - trt).max() < 0.02 * spread


def test_exclusions_keep_matched_nodes_in_float(small_model, small_ranges, tmp_path):
    ranges, _ = small_ranges
    model = onnx.load(str(export_qdq(small_model, ranges, tmp_path / "q.onnx", exclude=["conv2", "Gemm"])))
    producers = _producers(model)
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    assert conv2.input[1] == "w2", "excluded conv2 still has quantized weights"
    fc = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert fc.input[1] == "wf"
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert producers[conv1.input[1]].op_type == "DequantizeLinear"
    with pytest.raises(CalibkitError, match="matches no node"):
        export_qdq(small_model, ranges, tmp_path / "x.onnx", exclude=["conv99"])
    assert not (tmp_path / "x.onnx").exists()


def test_an_opset_11_model_exports_loadable_models(small_model, tmp_path):
    from calibkit.calib.registry import TensorRange
    from calibkit.graph.onnx_model import float_activations

    old = onnx.load(str(small_model))
    old.opset_import[0].version = 11  # every op of the small model means the same at opset 11
    onnx.checker.check_model(old)
    path = tmp_path / "opset11.onnx"
    onnx.save(old, str(path))
    ranges = {name: TensorRange(4.0, -4.0, 4.0) for name in float_activations(old)}
    for target in ("tensorrt", "onnxruntime"):
        out = export_qdq(path, ranges, tmp_path / f"{target}.onnx", target=target)
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 10)


def _qdq_add_graph(second_reader: bool):
    """conv -> relu -> Q/DQ -> add <- Q/DQ <- x: the relu output optionally read by a second node."""
    from onnx import TensorProto, helper

    def qdq(name):
        return [helper.make_node("QuantizeLinear", [name, "s", "z"], [f"{name}_q"], name=f"{name}_Q"),
                helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [f"{name}_dq"], name=f"{name}_DQ")]

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["r"], name="relu"),
             *qdq("r"), *qdq("x"), helper.make_node("Add", ["r_dq", "x_dq"], ["y"], name="add")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])]
    if second_reader:
        nodes.append(helper.make_node("Identity", ["r"], ["r2"], name="other"))
        outputs.append(helper.make_tensor_value_info("r2", TensorProto.FLOAT, [1, 2, 3, 3]))
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("second_reader", [False, True])
def test_residual_add_is_fused_on_the_convolution_input_only_when_nothing_else_reads_it(second_reader):
    from calibkit.artifacts.qdq_placement import fuse_residual_adds

    model = _qdq_add_graph(second_reader)
    assert fuse_residual_adds(model) == (0 if second_reader else 1)
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert list(add.input) == (["r_dq", "x_dq"] if second_reader else ["r", "x_dq"])
    onnx.checker.check_model(model, full_check=True)
