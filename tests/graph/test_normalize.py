import collections

import onnx
import pytest

from calibkit.artifacts.qdq import export_qdq
from calibkit.calib.registry import TensorRange
from calibkit.errors import CalibkitError
from calibkit.graph.normalize import MIN_QDQ_OPSET, check_equivalent, fp32_reference, normalize, normalized_model
from calibkit.graph.onnx_model import file_sha256
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
    assert check_equivalent(fp32_reference(original, (1, 3, 32, 32)), done, paddle_style) < 1e-5
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


def test_a_large_graph_is_memoised_on_disk_and_reads_back_the_same(paddle_style, tmp_path, monkeypatch):
    import calibkit.graph.normalize as normalize_module

    in_memory = normalized_model(paddle_style).model.SerializeToString()
    monkeypatch.setattr(normalize_module, "MEMO_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(normalize_module, "_MEMO", normalize_module._Memo())
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(paddle_style.read_bytes())
    first, second = normalized_model(copy), normalized_model(copy)
    assert first.file is not None and first.file.is_file() and first.file.with_suffix(".bin").is_file()
    assert first.model.SerializeToString() == second.model.SerializeToString() == in_memory
    assert check_equivalent(fp32_reference(copy, (1, 3, 32, 32)), first, copy) < 1e-5, "ONNX Runtime reads the memo's file"
    others = []
    for index in range(normalize_module.MEMO_ENTRIES):
        other = tmp_path / f"other{index}.onnx"
        other.write_bytes(paddle_style.read_bytes())
        others.append(normalized_model(other))
    assert not first.file.exists() and not first.file.with_suffix(".bin").exists(), "an evicted graph's files go"


def _graph_with(nodes, value_info=(), opsets=(("", 13),)):
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])], value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=8)


def test_each_normalize_pass_does_what_its_reason_says():
    from onnx import TensorProto, helper

    from calibkit.graph.normalize import PASSES

    passes = {step.name: step for step in PASSES}
    assert all(step.reason for step in PASSES), "every pass says why it is there"
    relu = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["y"], ["z"], name="Relu_0")]
    model = _graph_with(relu, opsets=(("", 13), ("com.microsoft.nchwc", 1), ("ai.onnx.ml", 5)))
    passes["keep used opsets"].apply(model)
    assert [o.domain for o in model.opset_import] == [""], "only the domains nodes use stay imported"
    passes["name every node"].apply(model)
    names = [node.name for node in model.graph.node]
    assert names[1] == "Relu_0" and names[0] and len(set(names)) == 2, "unnamed nodes get names no other has"
    stale = _graph_with(relu, value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT16, [7])])
    passes["drop value infos"].apply(stale)
    assert not stale.graph.value_info
