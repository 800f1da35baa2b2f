import collections

import onnx
import pytest

from calibkit.artifacts.qdq import export_qdq
from calibkit.calib.registry import TensorRange
from calibkit.errors import CalibkitError
from calibkit.normalize import MIN_QDQ_OPSET, check_equivalent, normalize, normalized_model
from calibkit.onnx_model import file_sha256
from tests.conftest import build_paddle_style_cnn


@pytest.fixture(scope="module")
def paddle_style(tmp_path_factory):
    return build_paddle_style_cnn(tmp_path_factory.mktemp("paddle") / "paddle_style.onnx")


def test_constants_are_folded_batchnorm_fused_and_opset_raised(paddle_style):
    before = file_sha256(paddle_style)
    original = onnx.load(str(paddle_style))
    done = normalize(original, paddle_style)
    ops = collections.Counter(node.op_type for node in done.model.graph.node)
    assert ops["Constant"] == ops["BatchNormalization"] == ops["Identity"] == 0
    assert ops["Conv"] == 2 and ops["MatMul"] + ops["Gemm"] == 1
    assert done.opset == (11, MIN_QDQ_OPSET)
    assert done.removed["BatchNormalization"] == 2 and done.removed["Constant"] >= 20
    initializers = {init.name for init in done.model.graph.initializer}
    fc = next(node for node in done.model.graph.node if node.op_type in ("MatMul", "Gemm"))
    assert fc.input[1] in initializers, "the weight behind Identity became an initializer"
    assert check_equivalent(original, done, (1, 3, 32, 32), paddle_style) < 1e-5
    assert "opset 11->13" in done.summary() and "BatchNormalization -2" in done.summary()
    assert file_sha256(paddle_style) == before, "the user's file is never changed"
    onnx.checker.check_model(done.model, full_check=True)


def test_every_node_is_named_and_normalising_is_deterministic(paddle_style):
    first, second = normalized_model(paddle_style).model, normalize(onnx.load(str(paddle_style))).model
    assert all(node.name for node in first.graph.node)
    assert first.SerializeToString() == second.SerializeToString()


def test_an_already_quantized_model_is_refused(small_model, tmp_path):
    ranges = {name: TensorRange(4.0, -4.0, 4.0) for name in ("input", "r1", "c2", "r2", "c3", "sum", "pooled", "flat")}
    quantized = export_qdq(small_model, ranges, tmp_path / "q.onnx")
    with pytest.raises(CalibkitError, match="already quantized .*DequantizeLinear.*pass the FP32 model"):
        normalize(onnx.load(str(quantized)), quantized)
