import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import compute_data_quant_params, quantize_nparray

from calibkit.artifacts.weight_qdq import channel_scales, fold_weight_quantizers, quantize, weight_overrides
from calibkit.graph.normalize import normalized_model
from calibkit.graph.onnx_model import float_activations


def _real_weights(model):
    """Every Conv weight of ``model``, plus the same weight with a zero channel and a tiny one planted."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    planted = weights[0].copy()
    planted[0] = 0.0
    planted[1] = 1e-42  # a subnormal channel: ONNX Runtime's scale falls back to 1.0
    return weights + [planted]


def test_scales_and_levels_are_onnx_runtime_s_channel_by_channel(demo_model):
    weights = _real_weights(normalized_model(demo_model).model)
    for weight in weights[:12] + weights[-1:]:
        scales = channel_scales(weight, 0)
        levels = quantize(weight, scales, np.zeros(scales.size, np.int8), 0)
        for channel in range(weight.shape[0]):
            zero_point, scale = compute_data_quant_params(weight[channel].ravel(), onnx.TensorProto.INT8, True)
            assert zero_point == 0 and scales[channel].tobytes() == np.float32(scale).tobytes()
            expected = quantize_nparray(onnx.TensorProto.INT8, weight[channel].ravel(), scale, zero_point)
            np.testing.assert_array_equal(levels[channel].ravel(), expected)


def _quantize(model, ranges, fast: bool) -> onnx.ModelProto:
    table = TensorsData(CalibrationMethod.MinMax,
                        {n: TensorData(lowest=np.float32(-a), highest=np.float32(a)) for n, a in ranges.items()})
    options = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": True}
    if fast:
        options.update({"TensorQuantOverrides": weight_overrides(model), "AddQDQPairToWeight": True})
    quantizer = QDQQuantizer(onnx.ModelProto.FromString(model.SerializeToString()), True, False, QuantType.QInt8,
                             QuantType.QInt8, table, [], [], ["Conv", "Gemm", "MatMul"], options)
    quantized = quantizer.quantize_model()
    if fast:
        assert fold_weight_quantizers(quantized) > 0
    return quantized


@pytest.mark.parametrize("source", ["demo_model", "tiny_vit"])
def test_overrides_and_folding_give_the_quantizer_s_own_model(source, request):
    """The quantizer fed the scales and folded afterwards writes the same nodes and the same initializers
    (INT8 weights, scales, INT32 biases) as the quantizer left to do it channel by channel."""
    model = normalized_model(request.getfixturevalue(source)).model
    rng = np.random.default_rng(0)
    ranges = {name: float(rng.uniform(0.5, 8.0)) for name in float_activations(model)}
    fast, slow = _quantize(model, ranges, True), _quantize(model, ranges, False)
    nodes = lambda m: [(n.op_type, tuple(n.input), tuple(n.output)) for n in m.graph.node]  # noqa: E731
    assert sorted(nodes(fast)) == sorted(nodes(slow))
    values = lambda m: {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}  # noqa: E731
    fast_values, slow_values = values(fast), values(slow)
    assert fast_values.keys() == slow_values.keys()
    assert any(v.dtype == np.int8 and v.ndim == 4 for v in fast_values.values()) or source == "tiny_vit"
    for name, value in slow_values.items():
        assert fast_values[name].dtype == value.dtype and np.array_equal(fast_values[name], value), name
