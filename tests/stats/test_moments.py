"""Layer-input moments: the sampled input vectors are exactly what the layer multiplies its weights with."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit.stats.moments import MomentCollector, weighted_layers


def _single(node, inputs, initializers, input_shape):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


CONVS = [
    dict(group=1, cin=3, cout=8, kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1)),
    dict(group=8, cin=8, cout=8, kernel=(5, 5), strides=(1, 1), pads=(2, 2, 2, 2), dilations=(1, 1)),
    dict(group=2, cin=4, cout=6, kernel=(3, 3), strides=(2, 1), pads=(0, 1, 2, 0), dilations=(2, 1)),
    dict(group=1, cin=4, cout=4, kernel=(3, 3), strides=(2, 2), auto_pad="SAME_UPPER", dilations=(1, 1)),
    dict(group=1, cin=4, cout=4, kernel=(2, 2), strides=(2, 2), auto_pad="SAME_LOWER", dilations=(1, 1)),
]


@pytest.mark.parametrize("conv", CONVS, ids=lambda c: f"g{c['group']}k{c['kernel'][0]}{c.get('auto_pad', '')}")
def test_conv_patches_times_weights_give_the_conv_output(conv):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((conv["cout"], conv["cin"] // conv["group"], *conv["kernel"])).astype(np.float32)
    attrs = {k: v for k, v in conv.items() if k in ("group", "strides", "pads", "dilations", "auto_pad")}
    model = _single(helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs), ["x"],
                    [numpy_helper.from_array(w, "w")], [2, conv["cin"], 11, 13])
    x = rng.standard_normal((2, conv["cin"], 11, 13)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    layer = weighted_layers(model)[0]
    assert layer.positions(x.shape) == y.shape[2] * y.shape[3]
    vectors = layer.patches(x, np.random.default_rng(1), 10**6)  # every position: [batch * positions, groups, columns]
    got = np.einsum("grc,sgc->sgr", layer.matrices(w), vectors).reshape(2, -1, conv["cout"]).transpose(0, 2, 1)
    np.testing.assert_allclose(got, y.reshape(2, conv["cout"], -1), atol=1e-4)
    np.testing.assert_array_equal(layer.weight_from(layer.matrices(w)), w)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_and_matmul_layers_read_rows_and_find_their_bias(trans_b):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3) if trans_b else (3, 5)).astype(np.float32)
    gemm = _single(helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=trans_b), ["x"],
                   [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(5, np.float32), "b")], [4, 3])
    layer = weighted_layers(gemm)[0]
    assert (layer.axis, layer.rows, layer.columns, layer.bias) == (0 if trans_b else 1, 5, 3, "b")
    x = rng.standard_normal((4, 3)).astype(np.float32)
    vectors = layer.patches(x, np.random.default_rng(0), 10)
    np.testing.assert_allclose(np.einsum("rc,sc->sr", layer.matrices(w)[0], vectors[:, 0]), x @ (w.T if trans_b else w),
                               rtol=1e-5)

    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(rng.standard_normal((3, 5)).astype(np.float32), "w"),
                               numpy_helper.from_array(np.zeros(5, np.float32), "b")])
    layer = weighted_layers(helper.make_model(graph, ir_version=8))[0]
    assert (layer.op_type, layer.bias, layer.rows, layer.columns) == ("MatMul", "b", 5, 3)
    assert layer.positions((2, 4, 3)) == 4


def test_collector_moments_match_numpy_and_repeat_with_the_seed():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    model = _single(helper.make_node("Conv", ["x", "w"], ["y"], name="pw"), ["x"], [numpy_helper.from_array(w, "w")],
                    [1, 3, 4, 4])
    layers = weighted_layers(model)
    batches = [rng.standard_normal((1, 3, 4, 4)).astype(np.float32) + 1.0 for _ in range(5)]
    collector = MomentCollector(layers, images=5, min_samples_per_column=1, seed=0)
    for batch in batches:
        collector.update({"x": batch})
    moments = collector.moments["pw"]
    every = np.concatenate([b.reshape(3, -1) for b in batches], axis=1)  # 16 positions < the per-image budget
    assert moments.count == every.shape[1]
    np.testing.assert_allclose(moments.second[0], every @ every.T / every.shape[1], rtol=1e-5)
    np.testing.assert_allclose(moments.mean[0], every.mean(axis=1), rtol=1e-5)
    again = MomentCollector(layers, images=5, min_samples_per_column=1, seed=0)
    for batch in batches + batches:
        again.update({"x": batch})
    assert again.done and again.moments["pw"].count == moments.count  # images past the budget are ignored


def test_a_layer_too_wide_for_its_samples_gets_the_mean_only():
    w = np.ones((2, 64), np.float32)
    model = _single(helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1), ["x"],
                    [numpy_helper.from_array(w, "w")], [1, 64])
    collector = MomentCollector(weighted_layers(model), images=4, min_samples_per_column=8)
    for value in range(4):
        collector.update({"x": np.full((1, 64), value, np.float32)})
    moments = collector.moments["fc"]
    assert moments.second is None
    np.testing.assert_allclose(moments.mean[0], np.full(64, 1.5))


def test_second_moments_stop_at_their_byte_budget_in_graph_order():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="second")]
    weights = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), name) for name in ("w1", "w2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16, 8])], weights)
    layers = weighted_layers(helper.make_model(graph, ir_version=8))
    one_gram = 8 * 8 * 8  # float64 sums of one 8-column layer
    collector = MomentCollector(layers, images=2, min_samples_per_column=1, gram_bytes=one_gram)
    for _ in range(2):
        collector.update({"x": rng.standard_normal((1, 16, 8)).astype(np.float32),
                          "h": rng.standard_normal((1, 16, 8)).astype(np.float32)})
    assert collector.moments["first"].second is not None
    assert collector.moments["second"].second is None, "past the budget: the mean alone (round-to-nearest weights)"
    assert collector.moments["second"].mean.shape == (1, 8)
    assert collector.max_bytes >= one_gram
