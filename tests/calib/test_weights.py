"""Weight rounding and bias correction: GPTQ lowers each layer's output error, bias correction removes
the mean shift rounding adds, and a layer without enough data keeps round-to-nearest."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit.calib.weights import RefinedWeights, check_rounding, gptq, nearest, refine_weights
from calibkit.errors import CalibkitError
from calibkit.stats.moments import MomentCollector, weighted_layers


def _output_error(weights, levels, scales, second):
    delta = levels * scales[..., None] - weights
    return float(np.einsum("grc,gcd,grd->", delta, second, delta))


def test_gptq_beats_nearest_on_correlated_inputs():
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((48, 48)) * np.logspace(0, -2, 48)
    x = mixing @ rng.standard_normal((48, 4000))
    second = (x @ x.T / x.shape[1])[None]
    weights = rng.standard_normal((1, 16, 48))
    scales = np.abs(weights).max(axis=2) / 127
    rounded = gptq(weights, second, scales)
    assert np.array_equal(rounded, np.round(rounded)) and np.abs(rounded).max() <= 127
    plain = _output_error(weights, nearest(weights, second, scales), scales, second)
    assert _output_error(weights, rounded, scales, second) < 0.5 * plain


def test_gptq_handles_dead_inputs_and_groups():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 9, 500))
    x[1, 4] = 0.0  # an input that never fires
    second = np.einsum("gip,gjp->gij", x, x) / 500
    weights = rng.standard_normal((3, 1, 9))
    scales = np.abs(weights).max(axis=2) / 127
    rounded = gptq(weights, second, scales)
    assert np.isfinite(rounded).all() and rounded.shape == weights.shape


def _one_layer(weight, bias):
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[1]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, ir_version=8)


def test_bias_correction_removes_a_planted_channel_shift():
    rng = np.random.default_rng(2)
    scale = 0.01
    levels = rng.integers(-100, 100, size=(6, 32))
    levels[:, 0] = 127  # keeps the per-channel scale at exactly 0.01
    weight = ((levels + np.where(levels == 127, 0.0, 0.4)) * scale).astype(np.float32)  # nearest rounds 0.4 down
    bias = rng.standard_normal(6).astype(np.float32)
    model = _one_layer(weight, bias)
    layers = weighted_layers(model)
    x = (rng.random((400, 32)) + 0.5).astype(np.float32)  # positive inputs: the rounding error adds up
    collector = MomentCollector(layers, images=400, min_samples_per_column=1)
    for row in x:
        collector.update({"x": row[None]})
    fp32 = (x @ weight.T + bias).mean(axis=0)
    for correct in (False, True):
        refined = refine_weights(model, layers, collector.moments, "nearest", bias_correction=correct)
        layer = refined.layers["fc"]
        assert layer.levels is None  # round-to-nearest: the quantizer's own levels
        dequantized = np.round(weight / layer.scales[:, None]) * layer.scales[:, None]
        new_bias = layer.corrected_bias if correct else bias
        shift = np.abs((x @ dequantized.T + new_bias).mean(axis=0) - fp32).max()
        if correct:
            assert shift < 1e-4
        else:
            assert shift > 0.05  # 0.4 steps x 31 inputs x mean input 1.0 x 0.01


def test_a_layer_with_too_few_samples_keeps_nearest_and_files_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((4, 16)).astype(np.float32)
    model = _one_layer(weight, np.zeros(4, np.float32))
    layers = weighted_layers(model)
    few = MomentCollector(layers, images=2, min_samples_per_column=8)
    for _ in range(2):
        few.update({"x": rng.standard_normal((1, 16)).astype(np.float32)})
    refined = refine_weights(model, layers, few.moments, "gptq")
    assert refined.layers["fc"].levels is None and refined.layers["fc"].corrected_bias is not None
    many = MomentCollector(layers, images=200, min_samples_per_column=8)
    for _ in range(200):
        many.update({"x": rng.standard_normal((1, 16)).astype(np.float32)})
    refined = refine_weights(model, layers, many.moments, "gptq")
    assert refined.layers["fc"].levels.dtype == np.int8 and "gptq rounding on 1 of 1" in refined.summary()
    loaded = RefinedWeights.load(refined.save(tmp_path / "weights.npz"))
    assert loaded.summary() == refined.summary()
    np.testing.assert_array_equal(loaded.layers["fc"].levels, refined.layers["fc"].levels)
    np.testing.assert_array_equal(loaded.layers["fc"].corrected_bias, refined.layers["fc"].corrected_bias)


def test_unknown_rounding_is_one_error_line():
    with pytest.raises(CalibkitError, match="unknown weight rounding 'adaround'; available: gptq, nearest"):
        check_rounding("adaround")
