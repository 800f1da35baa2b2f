"""Real TensorRT-RTX builds (ahead of time, no GPU) of a small quantized CNN: every convolution the Q/DQ
model quantizes runs INT8, and a planted placement TensorRT cannot run in INT8 is named as float."""

import onnx
import pytest

from calibkit.artifacts.fp16 import export_fp16
from calibkit.artifacts.qdq import export_qdq
from calibkit.calib.registry import compute_ranges, get_calibrator
from calibkit.data.images import discover_images
from calibkit.data.preprocess import Preprocess
from calibkit.engine import builder
from calibkit.engine.check import EngineModel, build, requested_precisions
from calibkit.engine.summary import EngineSettings, check_engines, engine_lines
from calibkit.errors import CalibkitError
from calibkit.stats.collect import collect_statistics

needs_trt_rtx = pytest.mark.skipif(not builder.available(), reason="TensorRT-RTX not installed: pip install -e '.[trt-rtx]'")
SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def quantized(small_model, tmp_path_factory):
    from tests.conftest import write_images

    folder = tmp_path_factory.mktemp("engine-calib")
    write_images(folder, 8, seed=3)
    stats = collect_statistics(small_model, discover_images(folder), Preprocess(size=(32, 32)), batch_size=4, bins=512)
    out = tmp_path_factory.mktemp("engine-models")
    return export_qdq(small_model, compute_ranges(stats.tensors, get_calibrator("minmax")), out / "m.qdq.onnx")


def without_activation_qdq(path, node_name, out):
    """``path`` with the Q/DQ pair in front of ``node_name``'s activation input removed (weights stay INT8)."""
    model = onnx.load(str(path))
    made_by = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.name == node_name)
    dq = made_by[conv.input[0]]
    q = made_by[dq.input[0]]
    conv.input[0] = q.input[0]
    for unused in (dq, q):
        if not any(unused.output[0] in n.input for n in model.graph.node):
            model.graph.node.remove(unused)
    onnx.save(model, str(out))
    return out


def test_requested_precision_follows_the_dequantized_inputs(quantized, small_model, tmp_path):
    assert {kind for _, _, kind in requested_precisions(onnx.load(str(quantized))).values()} == {"int8"}
    assert {kind for _, _, kind in requested_precisions(onnx.load(str(small_model))).values()} == {"float"}


@needs_trt_rtx
def test_every_quantized_convolution_runs_int8(quantized, small_model, tmp_path):
    fp16 = export_fp16(small_model, tmp_path / "m.fp16.onnx")
    models = [EngineModel("fp32", "fp32", small_model, "fp32"), EngineModel("fp16", "fp16", fp16, "fp16"),
              EngineModel("int8 minmax", "int8", quantized, "minmax")]
    section = check_engines(models, SHAPE, EngineSettings(True, "sm89", True), tmp_path)
    fp32, half, int8 = section["models"]
    assert all(m["built"] for m in section["models"])
    assert int8["precision_counts"] == {"Int8": 4} and not int8["fell_to_float"]
    assert "all 4 convolutions and matrix products calibkit quantized run INT8" in int8["verdict"]
    assert half["precision_counts"] == {"Half": 4} and fp32["precision_counts"] == {"Float": 4}
    int8_layers = [l for l in int8["layers"] if l["type"] in ("correlation", "gemm") and l["precision"] == "Int8"]
    assert len(int8_layers) >= 3, "the precisions come from the builder's own layer list"
    assert int8["versus_fp16"]["kernels"] == half["kernels"]
    assert (tmp_path / "minmax.sm89.trtrtx.engine").stat().st_size == pytest.approx(int8["engine_mb"] * 1e6, abs=1000)
    assert any("structure, not speed" in line for line in engine_lines(section))


@needs_trt_rtx
def test_a_convolution_without_its_activation_qdq_is_named_as_float(quantized, tmp_path):
    planted = without_activation_qdq(quantized, "conv2", tmp_path / "planted.onnx")
    with pytest.warns(UserWarning, match="runs float in TensorRT"):
        section = check_engines([EngineModel("int8 planted", "int8", planted, "planted")], SHAPE,
                                EngineSettings(True, "sm89"))
    model = section["models"][0]
    assert model["built"] and model["fell_to_float"] == ["conv2"]
    assert model["verdict"].startswith("INT8 requested, runs float in TensorRT: 1 of 4")


@needs_trt_rtx
def test_a_model_the_parser_refuses_is_not_built_with_its_errors_verbatim(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    check = build(EngineModel("broken", "fp32", broken, "broken"), SHAPE, "sm89")
    assert not check.built and check.errors
    assert check.verdict().startswith("TensorRT-RTX cannot build this model for sm89")


def test_unknown_target_is_refused_before_any_work():
    if not builder.available():
        pytest.skip("TensorRT-RTX not installed")
    with pytest.raises(CalibkitError, match="--trt-target 'sm90': TensorRT-RTX builds for sm75"):
        EngineSettings(True, "sm90").resolved()
