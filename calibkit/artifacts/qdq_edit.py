"""One node of a Q/DQ model put back in float, in memory.

Leave-one-out sensitivity needs the quantized model once per layer with that layer in float. Quantizing
and writing the whole model per layer costs more than the inference it measures; editing the quantized
graph gives the graph that quantizing with the node excluded writes (TensorRT target):

* the node's weights and bias are the float initializers again, and so is the bias of an Add that reads
  its output (a MatMul's), where the run corrected it for rounded weights
  (:mod:`calibkit.artifacts.weight_levels`);
* an activation input keeps its Q/DQ pair while another quantized node reads the same tensor (then
  every reader, the excluded node too, reads the dequantized values); otherwise the pair goes and
  every reader reads the float tensor.

Where a float input no longer exists in the quantized graph (an activation ONNX Runtime folded into a
quantization), the edit is refused (``None``) and the caller quantizes again.
"""

from __future__ import annotations

from typing import AbstractSet, Sequence

import onnx

from calibkit.artifacts.weight_levels import CORRECTED
from calibkit.graph.index import GraphIndex

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def with_node_in_float(quantized: onnx.ModelProto, float_model: onnx.ModelProto, node_name: str,
                       quantized_nodes: AbstractSet[str]) -> onnx.ModelProto | None:
    """A copy of ``quantized`` with ``node_name`` in float, as described above. ``quantized_nodes`` are
    the names of the nodes whose inputs the placement rules quantize
    (:func:`calibkit.artifacts.placement.quantized_nodes` of ``float_model``)."""
    float_node = next((n for n in float_model.graph.node if n.name == node_name), None)
    if float_node is None:
        return None
    float_inits = {init.name: init for init in float_model.graph.initializer}
    still_read = {name for n in float_model.graph.node if n.name in quantized_nodes and n.name != node_name
                  for name in n.input}
    edited = onnx.ModelProto()
    edited.CopyFrom(quantized)
    graph = edited.graph
    target = next((n for n in graph.node if n.name == node_name), None)
    if target is None or len(target.input) != len(float_node.input):
        return None
    available = ({out for n in graph.node for out in n.output} | {i.name for i in graph.input}
                 | {i.name for i in graph.initializer})
    if any(name and name not in available and name not in float_inits for name in float_node.input):
        return None
    have = {init.name for init in graph.initializer}
    rewire: dict[str, str] = {}
    for index, name in enumerate(float_node.input):
        if name in float_inits:
            if name not in have:
                graph.initializer.append(float_inits[name])
            target.input[index] = name
        elif name and name not in still_read and target.input[index] != name:
            rewire[target.input[index]] = name
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in rewire:
                node.input[index] = rewire[name]
            elif node.op_type == "Add" and set(node.input) & set(target.output) and name.endswith(CORRECTED) \
                    and name[: -len(CORRECTED)] in float_inits:
                node.input[index] = name[: -len(CORRECTED)]
                if node.input[index] not in have:
                    graph.initializer.append(float_inits[node.input[index]])
    _drop_unread_qdq(graph)
    return edited


def with_nodes_in_float(quantized: onnx.ModelProto, float_model: onnx.ModelProto, node_names: Sequence[str],
                        quantized_nodes: AbstractSet[str]) -> onnx.ModelProto | None:
    """:func:`with_node_in_float` for several nodes, one after another: each edit sees the ones before it
    as float nodes, so the result is the graph that quantizing with all of them excluded writes."""
    edited, left = quantized, set(quantized_nodes)
    for name in node_names:
        edited = with_node_in_float(edited, float_model, name, left)
        if edited is None:
            return None
        left.discard(name)
    return edited


def _drop_unread_qdq(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes whose outputs nothing reads, then the initializers nothing reads any more."""
    outputs = {o.name for o in graph.output}
    while True:
        read = GraphIndex(graph).consumers.keys() | outputs
        dead = [n for n in graph.node if n.op_type in QDQ_OPS and not any(out in read for out in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = GraphIndex(graph).consumers.keys() | outputs
    kept = [init for init in graph.initializer if init.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
