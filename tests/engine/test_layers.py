"""The builder's layer lines read back: types, datatypes, constants and the ONNX nodes behind each layer."""

from calibkit.engine.layers import parse_layer, parse_layers, parse_memory

# Two layer lines in the form TensorRT-RTX 1.7 prints them (names shortened), with the lines around them.
LOG = """Layers:
Name: __myl_MulCast_myl0_0, LayerType: kgen, Inputs: [ { Name: input, Dimensions: [1,3,32,32], Strides: [3072,1024,32,1], StrideOrder: [3,2,1,0], Datatype: Float, Format: (Linear) Row major linear format }], Constants: [ { Name: __mye1_myl0, Dimensions: [1,8,3,32,32], Strides: [1,1,1,1,1], StrideOrder: [4,3,2,1,0], Datatype: Int8, Format: (Arbitrary) Format }], Outputs: [ { Name: q_input, Dimensions: [1,4,32,32], Strides: [4096,1,128,4], StrideOrder: [3,0,2,1], Datatype: Int8, Format: (NHWC) Channel major format }], TacticName: __myl_MulCast_0x1, StreamId: 0, Metadata: [ONNX Layer: input_QuantizeLinear][ONNX Layer: conv1]
Name: conv1_myl0_1, LayerType: correlation, Inputs: [ { Name: q_input, Dimensions: [1,4,32,32], Strides: [4096,1,128,4], StrideOrder: [3,0,2,1], Datatype: Int8, Format: (NHWC) Channel major format }], Constants: [ { Name: __mye2_dconst_myl0, Dimensions: [8,4,3,3], Strides: [36,1,12,4], StrideOrder: [3,0,2,1], Datatype: Int8, Format: (NHWC) Channel major format }], Outputs: [ { Name: c1, Dimensions: [1,8,32,32], Strides: [8192,1,256,8], StrideOrder: [3,0,2,1], Datatype: Float, Format: (NHWC) Channel major format }], TacticName: __myelin_CASK_STUB, StreamId: 0, Metadata: [ONNX Layer: conv1][ONNX Layer: input_DequantizeLinear][ONNX Layer: w1_DequantizeLinear]
Name: __myl_Wait_myl0_2, LayerType: wait, Inputs: [], Outputs: [], TacticName: , StreamId: 1, Metadata:

I/O Tensors:
 Name: input, IOMode: Input
"""


def test_layers_keep_types_datatypes_and_onnx_nodes():
    layers = parse_layers("Total Activation Memory: 123 bytes\n" + LOG + "Total Weights Memory: 456 bytes\n")
    assert [l.type for l in layers] == ["kgen", "correlation", "wait"]
    pointwise, conv, wait = layers
    assert conv.computes and not pointwise.computes and not wait.is_kernel
    assert conv.precision == "Int8" and pointwise.precision == "Float"
    assert conv.onnx_nodes == ("conv1", "input_DequantizeLinear", "w1_DequantizeLinear")
    assert [t.shape for t in conv.constants] == [(8, 4, 3, 3)] and conv.outputs[0].dtype == "Float"
    assert pointwise.constants[0].nbytes == 8 * 3 * 32 * 32


def test_memory_totals_and_lines_that_are_not_layers():
    assert parse_memory("Total Activation Memory: 123 bytes\nTotal Weights Memory: 456 bytes") == {
        "activation_bytes": 123, "weights_bytes": 456}
    assert parse_layer("I/O Tensors:") is None
    assert parse_layers("no layer list here") == []


def test_a_float_input_makes_the_layer_float_whatever_its_weights():
    line = LOG.splitlines()[2].replace("Datatype: Int8, Format: (NHWC) Channel major format }], Constants",
                                       "Datatype: Half, Format: (NHWC) Channel major format }], Constants")
    assert parse_layer(line).precision == "Half"
