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


def _run(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
    assert all(producers[name].op_type == "DequantizeLinear" for name in add.input), "residual Add not quantized"
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
    cpu = _run(export_qdq(small_model, ranges, tmp_path / "o.onnx", target="onnxruntime"), batch)
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
    from calibkit.onnx_model import float_activations

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
