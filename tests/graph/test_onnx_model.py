import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibkit.errors import CalibkitError
from calibkit.graph.onnx_model import (
    clamp_bounds,
    constant_values,
    float_activations,
    image_input,
    load_model,
    with_outputs,
)


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


def test_clamp_bounds_of_relu_and_of_clip_in_every_form():
    lo = numpy_helper.from_array(np.array(-1.5, np.float32), "lo")
    six = helper.make_node("Constant", [], ["six"], value=numpy_helper.from_array(np.array(6.0, np.float32)))
    graph = helper.make_graph(
        [six, helper.make_node("Clip", ["x", "lo", "six"], ["a"]), helper.make_node("Clip", ["x", "", "six"], ["b"]),
         helper.make_node("Relu", ["x"], ["c"]), helper.make_node("Clip", ["x", "x"], ["d"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in "abcd"], [lo])
    model = helper.make_model(graph)
    constants = constant_values(model)
    bounds = [clamp_bounds(node, constants) for node in model.graph.node[1:]]
    assert bounds == [(-1.5, 6.0), (-math.inf, 6.0), (0.0, math.inf), None]
    old_style = helper.make_node("Clip", ["x"], ["e"], min=0.0, max=6.0)
    assert clamp_bounds(old_style, {}) == (0.0, 6.0)
    assert clamp_bounds(helper.make_node("Sigmoid", ["x"], ["f"]), {}) is None


def test_float_activations_trust_a_complete_value_info(small_model):
    model = load_model(small_model)
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in inferred.graph.value_info:
        if info.name == "c3":
            info.type.tensor_type.elem_type = TensorProto.INT64
    # With every node output typed, no inference runs, so the declared type decides.
    assert "c3" in float_activations(model) and "c3" not in float_activations(inferred)


def test_the_outline_keeps_inputs_and_nodes_without_the_weights(small_model):
    from calibkit.graph.onnx_model import image_input, model_outline

    outline, whole = model_outline(small_model), onnx.load(str(small_model))
    assert [n.op_type for n in outline.graph.node] == [n.op_type for n in whole.graph.node]
    assert image_input(outline, small_model) == image_input(whole, small_model)
    assert [tuple(i.dims) for i in outline.graph.initializer] == [tuple(i.dims) for i in whole.graph.initializer]
    assert not any(i.raw_data or i.float_data for i in outline.graph.initializer)
    outline.graph.name = "changed"
    assert model_outline(small_model).graph.name == whole.graph.name, "each call gets its own copy"
