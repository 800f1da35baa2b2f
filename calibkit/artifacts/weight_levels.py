"""A run's chosen INT8 weights (:mod:`calibkit.calib.weights`) written into a Q/DQ graph.

ONNX Runtime's quantizer writes every weight rounded to nearest with scale ``max|w| / 127`` per output
channel. For each quantized layer of the run this replaces those integers by the run's levels (same
shape, same scales, so nothing else in the graph changes) and its bias by the corrected one:

* a float bias (TensorRT target, and a MatMul's bias Add) is read from a new initializer
  ``<bias>_corrected``: the original stays, for any node that is put back in float;
* an INT32 bias (ONNX Runtime target) is requantized at its own scale.

A layer kept in float (excluded, or left float by the placement rules) is left as it is: its weights
are not rounded, so there is nothing to correct.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from calibkit.calib.weights import LayerWeights, RefinedWeights
from calibkit.errors import CalibkitError
from calibkit.graph.attributes import attribute
from calibkit.graph.index import GraphIndex

CORRECTED = "_corrected"


def write_weight_levels(quantized: onnx.ModelProto, refined: RefinedWeights) -> int:
    """Apply ``refined`` to ``quantized`` in place; returns how many layers it changed."""
    graph = quantized.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = GraphIndex(graph).producer
    changed = 0
    for node in list(graph.node):
        layer = refined.layers.get(node.name)
        if layer is None or len(node.input) < 2:
            continue
        dequantize = producers.get(node.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or dequantize.input[0] not in initializers:
            continue
        if layer.levels is not None:
            axis = attribute(dequantize, "axis", 1)
            _write_levels(initializers[dequantize.input[0]], initializers[dequantize.input[1]], axis, layer)
        if layer.corrected_bias is not None:
            _write_bias(graph, node, layer, initializers, producers)
        changed += 1
    return changed


def _write_levels(values: onnx.TensorProto, scale: onnx.TensorProto, axis: int, layer: LayerWeights) -> None:
    """Replace the levels of every output channel whose scale is the run's. The quantizer gives a channel
    of near-zero weights (around 1e-9) a larger floor scale of its own; such a channel keeps its levels."""
    written = numpy_helper.to_array(scale).reshape(-1)
    if tuple(values.dims) != layer.levels.shape or written.size != layer.scales.size:
        raise CalibkitError(f"{layer.node}: the quantizer's weight layout {tuple(values.dims)} does not match the "
                            f"run's weights {layer.levels.shape}; re-run calibkit calibrate with this calibkit")
    same = np.isclose(written, layer.scales, rtol=1e-5, atol=0)
    shape = [1] * len(values.dims)
    shape[axis] = -1
    levels = np.where(same.reshape(shape), layer.levels, numpy_helper.to_array(values))
    values.CopyFrom(numpy_helper.from_array(levels.astype(np.int8), values.name))


def _write_bias(graph: onnx.GraphProto, node: onnx.NodeProto, layer: LayerWeights,
                initializers: dict[str, onnx.TensorProto], producers: dict[str, onnx.NodeProto]) -> None:
    corrected = layer.corrected_bias
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 2:
        source = producers.get(node.input[2])
        if source is not None and source.op_type == "DequantizeLinear" and source.input[0] in initializers:
            stored = initializers[source.input[0]]
            scale = numpy_helper.to_array(initializers[source.input[1]]).astype(np.float64)
            levels = np.round(corrected.astype(np.float64) / scale).reshape(tuple(stored.dims))
            stored.CopyFrom(numpy_helper.from_array(levels.astype(np.int32), stored.name))
            return
        readers = [node] if node.input[2] == layer.bias else []
    else:
        readers = [n for n in graph.node if n.op_type == "Add" and layer.bias in n.input]
    if len(readers) != 1:
        return
    name = layer.bias + CORRECTED
    if name not in initializers:
        initializers[name] = numpy_helper.from_array(corrected, name)
        graph.initializer.append(initializers[name])
    reader = readers[0]
    for index, current in enumerate(reader.input):
        if current == layer.bias:
            reader.input[index] = name
