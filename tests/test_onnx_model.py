import onnx
import pytest
from onnx import TensorProto, helper

from calibkit.errors import CalibkitError
from calibkit.onnx_model import float_activations, image_input, load_model, with_outputs


def _model(inputs):
    node = helper.make_node("Identity", [inputs[0].name], ["out"])
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    return helper.make_model(graph)


def test_small_model_is_nchw_with_dynamic_batch(small_model):
    info = image_input(load_model(small_model))
    assert (info.name, info.layout, info.height, info.width, info.channels) == ("input", "NCHW", 32, 32, 3)


def test_nhwc_is_detected():
    m = _model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 224, 224, 3])])
    assert image_input(m).layout == "NHWC"


@pytest.mark.parametrize(
    "value_info, message",
    [
        (helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 128]), "float image tensor"),
        (helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 32, 32]), "no 3-channel axis"),
        (helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 32, 32]), "expects 1 channel"),
    ],
)
def test_non_image_inputs_are_refused(value_info, message):
    with pytest.raises(CalibkitError, match=message):
        image_input(_model([value_info]), "m.onnx")


def test_two_inputs_are_refused():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8])
    with pytest.raises(CalibkitError, match="2 inputs"):
        image_input(_model([a, b]), "m.onnx")


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(CalibkitError, match="model file does not exist"):
        load_model(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(CalibkitError, match=r"bad.onnx: not a readable ONNX model"):
        load_model(bad)


def test_float_activations_cover_input_and_every_node_output(small_model):
    names = float_activations(load_model(small_model))
    assert names[0] == "input"
    assert names[1:] == ["c1", "r1", "c2", "r2", "c3", "sum", "pooled", "flat", "logits"]
    exposed = with_outputs(load_model(small_model), ["c1", "logits"])
    assert [o.name for o in exposed.graph.output] == ["logits", "c1"]
    assert len(onnx.load(str(small_model)).graph.output) == 1
