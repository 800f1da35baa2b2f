import pytest

from calibkit.artifacts.qdq import export_qdq
from calibkit.bench.profile import kind_of, profile_ops, summarize
from calibkit.calib.registry import TensorRange


def test_profile_splits_int8_time_into_integer_kernels_conversions_and_float(small_model, tmp_path):
    ranges = {name: TensorRange(4.0, -4.0, 4.0) for name in ("input", "c1", "r1", "c2", "r2", "c3", "sum", "pooled", "flat", "logits")}
    quantized = export_qdq(small_model, ranges, tmp_path / "q.ort.onnx", target="onnxruntime")
    int8 = summarize(profile_ops(quantized, (3, 32, 32), runs=3))
    fp32 = summarize(profile_ops(small_model, (3, 32, 32), runs=3))
    assert int8["integer"] > 0 and int8["integer"] + int8["conversion"] + int8["float"] == pytest.approx(1.0)
    assert fp32["integer"] == fp32["conversion"] == 0 and fp32["float"] == pytest.approx(1.0)
    assert {"Conv", "FusedConv"} & {t["op"] for t in fp32["top_float"]}


def test_op_kinds():
    assert [kind_of(op) for op in ("QLinearConv", "DequantizeLinear", "Mul", "MatMulInteger")] == [
        "integer", "conversion", "float", "integer"]


def test_cpu_fallbacks_lists_every_node_a_cpu_only_session_ran(small_model):
    from calibkit.bench.profile import cpu_fallbacks

    placed = cpu_fallbacks(small_model, (3, 32, 32), ["CPUExecutionProvider"])
    assert placed["nodes"] >= 5 and len(placed["on_cpu"]) == placed["nodes"]
    assert {"Conv", "Gemm"} <= {n["op"] for n in placed["on_cpu"]}
