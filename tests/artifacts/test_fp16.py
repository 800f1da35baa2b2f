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
