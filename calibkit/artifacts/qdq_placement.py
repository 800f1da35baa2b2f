"""Placement rules calibkit adds on top of ONNX Runtime's Q/DQ graph, and why.

ONNX Runtime quantizes both the output of a convolution and the output of the Clip/Relu after it.
TensorRT fuses Conv + activation and needs only the second quantization point; the first adds a
rounding step TensorRT would honour. So for every ``X -> Q(a) -> DQ(a) -> Clip|Relu -> Q(b)``:

* ``tensorrt`` target: drop ``Q(a)/DQ(a)``; the activation reads the float output directly.
* ``onnxruntime`` target: quantize ``X`` with ``b`` and run the activation on the quantized tensor
  (a Clip with bounds ``round(lo/b)`` and ``min(127, round(hi/b))``), so ONNX Runtime's CPU provider
  fuses the convolution into an integer ``QLinearConv`` and no float round trip is left between
  layers. Where the lower bound is 0 (ReLU, ReLU6) the tensor is stored as UINT8 with zero point 0:
  the same grid of values 0..127 x b that TensorRT's symmetric INT8 holds there, and the storage
  ONNX Runtime needs to fuse on x86. Every other activation is stored as UINT8 with zero point
  128 (again the same values). Both targets give the numbers of TensorRT's Conv+Clip fusion.

A residual ``Add`` that reads a convolution's output (directly or through its Relu/Clip) is fused by
TensorRT into that convolution's kernel: the kernel adds the other, residual input, read in INT8, to its
own float accumulator. NVIDIA Model Optimizer's ONNX PTQ partitions the graph the same way. So on the
``tensorrt`` target the pair on that input is dropped (:func:`fuse_residual_adds`) and only the residual
input keeps one. The ``onnxruntime`` target keeps both: ONNX Runtime needs them to run ``QLinearAdd``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from calibkit.graph.index import GraphIndex
from calibkit.graph.onnx_model import clamp_bounds, drop_unused_initializers

ACTIVATIONS = ("Clip", "Relu")

# Ops whose output a convolution's kernel produces itself (its epilogue), so an Add reading it can join.
CONVOLUTIONS = ("Conv", "ConvTranspose")


def fold_activation_qdq(model: onnx.ModelProto, target: str) -> int:
    """Apply the rule above in place; return how many activations were rewritten."""
    graph = model.graph
    index = GraphIndex(graph)  # as the graph was: the rewrites below never create a pattern to match
    producer, consumers = index.producer, index.consumers
    inits = {init.name: init for init in graph.initializer}
    removed: set[int] = set()
    rewritten = 0
    for act in [n for n in graph.node if n.op_type in ACTIVATIONS]:
        dq_a = producer.get(act.input[0])
        q_a = producer.get(dq_a.input[0]) if dq_a is not None and dq_a.op_type == "DequantizeLinear" else None
        q_b = index.only_reader(act.output[0])
        if q_a is None or q_a.op_type != "QuantizeLinear" or q_b is None or q_b.op_type != "QuantizeLinear":
            continue
        if index.only_reader(q_a.output[0]) is not dq_a or index.only_reader(dq_a.output[0]) is not act:
            continue
        removed.update({id(q_a), id(dq_a)})
        if target == "tensorrt":
            act.input[0] = q_a.input[0]
        else:
            _clip_on_int8(graph, act, q_a.input[0], q_b, consumers, inits)
        rewritten += 1
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(GraphIndex(graph, kept).topological())
    drop_unused_initializers(graph)
    if target == "onnxruntime":
        _unsigned_activations(graph)
    return rewritten


def fuse_residual_adds(model: onnx.ModelProto) -> int:
    """TensorRT target: drop the Q/DQ pair between a convolution (or its activation) and the residual
    ``Add`` that alone reads it, one input per Add (see the module docstring); return how many."""
    graph = model.graph
    tensors = GraphIndex(graph)
    producer = tensors.producer
    removed: set[int] = set()
    for add in [n for n in graph.node if n.op_type == "Add"]:
        for index, name in enumerate(add.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or not _from_convolution(q.input[0], tensors):
                continue
            if tensors.only_reader(q.output[0]) is not dq or tensors.only_reader(name) is not add:
                continue
            add.input[index] = q.input[0]
            removed.update({id(q), id(dq)})
            break
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused_initializers(graph)
    return len(removed) // 2


def _from_convolution(tensor: str, index: GraphIndex) -> bool:
    """``tensor`` is a convolution's output, or its Relu/Clip's, read only by the one Q that follows."""
    if index.only_reader(tensor) is None:
        return False
    node = index.producer.get(tensor)
    if node is not None and node.op_type in ACTIVATIONS:
        node = index.producer.get(node.input[0])
        if node is not None and index.only_reader(node.output[0]) is None:
            return False
    return node is not None and node.op_type in CONVOLUTIONS


def _unsigned_activations(graph: onnx.GraphProto) -> None:
    """Store every remaining INT8 activation as UINT8 with zero point 128: the same values, and
    one activation type throughout, which ONNX Runtime needs to fuse QLinearConv and QLinearAdd."""
    inits = {init.name: init for init in graph.initializer}
    for name in {node.input[2] for node in graph.node if node.op_type == "QuantizeLinear" and len(node.input) > 2}:
        zero = numpy_helper.to_array(inits[name])
        if zero.dtype == np.int8:
            shifted = (zero.astype(np.int16) + 128).astype(np.uint8)
            inits[name].CopyFrom(numpy_helper.from_array(shifted, name))


def _clip_on_int8(graph, act, source: str, q_b, consumers, inits) -> None:
    scale = float(numpy_helper.to_array(inits[q_b.input[1]]).reshape(-1)[0])
    lo, hi = clamp_bounds(act, inits) or (-math.inf, math.inf)
    if lo == 0.0:
        # Unsigned storage with zero point 0 holds exactly TensorRT's non-negative INT8 grid, and
        # ONNX Runtime only fuses convolutions with unsigned activations on x86.
        dtype, low = np.uint8, 0
        zero = inits[q_b.input[2]]
        zero.CopyFrom(numpy_helper.from_array(np.zeros(numpy_helper.to_array(zero).shape, np.uint8), zero.name))
    else:
        dtype, low = np.int8, int(np.clip(np.round(lo / scale), -128, 127)) if math.isfinite(lo) else -128
    high = int(np.clip(np.round(hi / scale), low, 127)) if math.isfinite(hi) else 127
    names = []
    for which, value in (("min", low), ("max", high)):
        name = f"{act.output[0]}_q{which}"
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        names.append(name)
    quantized_in, quantized_out = q_b.output[0], f"{act.output[0]}_quantized"
    q_b.input[0] = source
    for user in consumers.get(quantized_in, []):
        for i, name in enumerate(user.input):
            if name == quantized_in:
                user.input[i] = quantized_out
    act.op_type = "Clip"
    del act.input[:]
    act.input.extend([quantized_in, *names])
    del act.output[:]
    act.output.append(quantized_out)
    del act.attribute[:]
