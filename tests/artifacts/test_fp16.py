import numpy as np
import onnx
import onnxruntime as ort

from calibkit.artifacts.fp16 import export_fp16


def test_fp16_model_keeps_fp32_io_and_close_outputs(small_model, tmp_path):
    path = export_fp16(small_model, tmp_path / "m.fp16.onnx")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = {i.name: i.data_type for i in model.graph.initializer}
    assert weights["w1"] == onnx.TensorProto.FLOAT16 and weights["wf"] == onnx.TensorProto.FLOAT16
    batch = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]  # noqa: E731
    reference, half = run(small_model), run(path)
    assert np.abs(half - reference).max() < 1e-2 * np.abs(reference).max()


def test_nodes_reading_constants_beyond_fp16_stay_fp32(tmp_path):
    # a weight of 1e5 on a small input: clamped to 65504 in FP16 it would scale that output by 0.65
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.diag([1e5, 1.0, 1.0, 1.0]).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
         helper.make_node("Relu", ["mm"], ["y"], name="relu")],
        "large_weight", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    source = tmp_path / "large_weight.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(source))
    path = export_fp16(source, tmp_path / "large_weight.fp16.onnx")
    types = {i.name: i.data_type for i in onnx.load(str(path)).graph.initializer}
    assert types["w"] == onnx.TensorProto.FLOAT
    x = np.array([[1e-3, 1.0, 2.0, 3.0]], np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, [[100.0, 1.0, 2.0, 3.0]], rtol=1e-3)
