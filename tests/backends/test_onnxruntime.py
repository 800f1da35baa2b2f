import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibkit.backends.onnxruntime import OrtSession


def qdq_conv_model(path, weights, w_scales, in_scale, out_scale):
    """x -> Q/DQ -> Conv(DQ(int8 per-channel weights)) -> Relu -> Q/DQ -> y: a TensorRT-style Q/DQ graph
    that ONNX Runtime would otherwise rewrite into its own INT8 kernels."""
    inits = [
        numpy_helper.from_array(weights, "w_q"),
        numpy_helper.from_array(w_scales, "w_s"),
        numpy_helper.from_array(np.zeros(len(w_scales), np.int8), "w_z"),
        numpy_helper.from_array(np.float32(in_scale), "x_s"),
        numpy_helper.from_array(np.float32(out_scale), "y_s"),
        numpy_helper.from_array(np.int8(0), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "z"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "z"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "y_s", "z"], ["r_q"]),
        helper.make_node("DequantizeLinear", ["r_q", "y_s", "z"], ["y"]),
    ]
    channels, inputs = weights.shape[:2]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, inputs, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, path)
    return path


def fake_quant(x, scale):
    return np.clip(np.round(x / scale), -128, 127) * scale  # np.round rounds half to even, as QuantizeLinear


def test_qdq_as_written_computes_the_graphs_quantize_dequantize_arithmetic(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (8, 16, 1, 1)).astype(np.int8)
    w_scales = rng.uniform(0.001, 0.01, 8).astype(np.float32)
    path = qdq_conv_model(tmp_path / "qdq.onnx", weights, w_scales, 0.02, 0.05)
    x = rng.normal(0, 1, (1, 16, 6, 6)).astype(np.float32)
    y = OrtSession(path, ["CPUExecutionProvider"], qdq_as_written=True).run(x)["y"]
    w = weights[:, :, 0, 0].astype(np.float64) * w_scales[:, None]
    conv = np.einsum("oc,nchw->nohw", w, fake_quant(x.astype(np.float64), np.float32(0.02)))
    expected = fake_quant(np.maximum(conv, 0), 0.05)
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_sessions_sharing_one_arena_give_a_private_arena_s_outputs(small_model):
    """Latency measurement holds several sessions on one shared arena (registered once per process,
    however many sessions ask); their results are those of sessions with arenas of their own."""
    batch = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    private = OrtSession(small_model, ["CPUExecutionProvider"]).run(batch)
    shared = [OrtSession(small_model, ["CPUExecutionProvider"], shared_arena=True) for _ in range(3)]
    for session in shared + shared[::-1]:
        for name, value in session.run(batch).items():
            np.testing.assert_array_equal(value, private[name])
