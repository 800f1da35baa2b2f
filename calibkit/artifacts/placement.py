"""Where Q/DQ pairs go, as a table of rules: which ops get INT8 inputs, and on what condition.

The partitions follow what TensorRT fuses (NVIDIA Model Optimizer's ONNX PTQ places its pairs the same
way): a quantized input tells TensorRT to run that op in INT8, and a pointwise chain after it (bias,
BatchNorm, activation, HardSwish's arithmetic) is fused into the op's kernel, so it is left in float.
Every op not named in :data:`RULES` stays float, which keeps LayerNormalization, Softmax, GELU/Erf,
Sigmoid score heads and box decoding (Exp, Div, Mul, Softmax over box bins) out of INT8.

Inputs only: on the TensorRT target no op's output is quantized for its own sake; a tensor gets a pair
because a quantized op reads it. Constants are never quantized as activations: weights of the weighted
ops are quantized per output channel, and an op whose other inputs are constants stays float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx

from calibkit.graph.index import GraphIndex
from calibkit.graph.onnx_model import constant_values


@dataclass(frozen=True)
class GraphFacts:
    """What a rule may ask about a node's neighbourhood: which tensors are constants, and the graph's
    producers and readers (:class:`~calibkit.graph.index.GraphIndex`)."""

    constants: set[str]
    index: GraphIndex

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "GraphFacts":
        return cls(set(constant_values(model)), GraphIndex(model.graph))


# Ops that move or regroup values without computing: an INT8 tensor passes through them as INT8.
LAYOUT_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Split", "Slice", "Identity", "Concat",
              "MaxPool", "Resize")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class PlacementRule:
    """Quantize the inputs of ``ops`` where ``applies(node, facts)`` holds; ``why`` documents it."""

    ops: tuple[str, ...]
    applies: Callable[[onnx.NodeProto, GraphFacts], bool]
    why: str


def always(node: onnx.NodeProto, facts: GraphFacts) -> bool:
    return True


def only_activation_inputs(node: onnx.NodeProto, facts: GraphFacts) -> bool:
    return all(name not in facts.constants for name in node.input if name)


def residual_of_convolution(node: onnx.NodeProto, facts: GraphFacts) -> bool:
    return only_activation_inputs(node, facts) and any(
        facts.index.producer_op(name) in ("Conv", "ConvTranspose") for name in node.input)


def feeds_int8_kernel(node: onnx.NodeProto, facts: GraphFacts) -> bool:
    """True when an output of ``node`` reaches a weighted op through layout ops only, so an INT8 result
    is read by an INT8 kernel."""
    seen, waiting = set(), list(node.output)
    while waiting:
        tensor = waiting.pop()
        for user in facts.index.consumers.get(tensor, []):
            if user.op_type in WEIGHTED_OPS:
                return True
            if user.op_type in LAYOUT_OPS and user.name not in seen:
                seen.add(user.name)
                waiting.extend(user.output)
    return False


def reads_probabilities(node: onnx.NodeProto, facts: GraphFacts) -> bool:
    """True when ``node``'s first input is a Softmax output, through layout ops only."""
    tensor, hops = node.input[0], 0
    while (producer := facts.index.producer.get(tensor)) is not None and hops < 16:
        if producer.op_type == "Softmax":
            return True
        if producer.op_type not in LAYOUT_OPS or producer.op_type == "Concat":
            return False
        tensor, hops = producer.input[0], hops + 1
    return False


def decoded_output_layer(node: onnx.NodeProto, facts: GraphFacts) -> bool:
    """True for a head's output layer: no convolution or matrix product (other than one reading
    probabilities) reads ``node``'s result, and decoding does (a sigmoid, softmax or box arithmetic, not
    only reshapes) on its way out of the network."""
    seen, waiting, decoded = set(), list(node.output), False
    while waiting:
        for user in facts.index.consumers.get(waiting.pop(), []):
            if user.name in seen:
                continue
            seen.add(user.name)
            if user.op_type in WEIGHTED_OPS and not reads_probabilities(user, facts):
                return False
            decoded = decoded or user.op_type not in LAYOUT_OPS
            waiting.extend(user.output)
    return decoded


def quantized_convolution(node: onnx.NodeProto, facts: GraphFacts) -> bool:
    return not reads_probabilities(node, facts) and not decoded_output_layer(node, facts)


def concat_of_int8_branches(node: onnx.NodeProto, facts: GraphFacts) -> bool:
    return only_activation_inputs(node, facts) and feeds_int8_kernel(node, facts)


RULES: tuple[PlacementRule, ...] = (
    PlacementRule(("Conv", "ConvTranspose"), quantized_convolution,
                  "convolutions run as INT8 kernels: activation input per tensor, weights per output channel. Two "
                  "stay float: one that reads a Softmax's probabilities (YOLOv8's DFL, a fixed 1x1 convolution "
                  "taking the expectation over 16 box bins, whose small probabilities a per-tensor INT8 step of "
                  "1/127 rounds away), and a head's output layer, after which no convolution or matrix product "
                  "computes and whose result is decoded (sigmoid scores, box arithmetic: its rounding lands "
                  "undamped in box coordinates and scores; on YOLOv8n-DocLayNet AP50:95 against FP32 0.91 -> "
                  "0.97, for 6 of 64 convolutions); a convolution whose result leaves the network as it is "
                  "(a feature or logit map) stays INT8"),
    PlacementRule(("Gemm", "MatMul"), always,
                  "matrix products run as INT8 kernels; a MatMul of two activations (attention's Q.K^T and P.V) "
                  "quantizes both"),
    PlacementRule(("Add",), residual_of_convolution,
                  "a residual Add fed by a convolution runs in INT8: TensorRT fuses it into that convolution, which "
                  "reads the residual input in INT8 (the TensorRT target keeps only that input's pair, see "
                  "qdq_placement); an Add of a constant (bias, epsilon, HardSwish's +3, position embedding) is "
                  "pointwise work fused in float, and a transformer's residual stream stays float for the "
                  "LayerNorm that reads it"),
    PlacementRule(("GlobalAveragePool", "AveragePool", "MaxPool"), always,
                  "pooling runs in INT8 on an INT8 input"),
    PlacementRule(("Concat",), concat_of_int8_branches,
                  "a concatenation whose result an INT8 kernel reads (through layout ops) stays INT8; one a float "
                  "op reads stays float: a detector head's Concat of decoded boxes (hundreds of pixels) and "
                  "post-sigmoid scores (0-1) would share one INT8 scale, a step of pixels that also caps the "
                  "scores; one with a constant part stays float"),
)


def quantized_op_types(rules: tuple[PlacementRule, ...] = RULES) -> list[str]:
    return [op for rule in rules for op in rule.ops]


def nodes_kept_float(model: onnx.ModelProto, rules: tuple[PlacementRule, ...] = RULES) -> list[str]:
    """Names of the nodes whose op a rule names but whose condition fails (they stay float)."""
    facts = GraphFacts.of(model)
    by_op = {op: rule for rule in rules for op in rule.ops}
    return [node.name for node in model.graph.node
            if node.op_type in by_op and not by_op[node.op_type].applies(node, facts)]


def quantized_nodes(model: onnx.ModelProto, rules: tuple[PlacementRule, ...] = RULES) -> set[str]:
    """Names of the nodes whose inputs the rules quantize."""
    kept_float = set(nodes_kept_float(model, rules))
    ops = set(quantized_op_types(rules))
    return {node.name for node in model.graph.node if node.op_type in ops and node.name not in kept_float}


def quantized_inputs(model: onnx.ModelProto, rules: tuple[PlacementRule, ...] = RULES) -> set[str]:
    """The activations the rules give a Q/DQ pair: non-constant inputs of the nodes they quantize."""
    quantized = quantized_nodes(model, rules)
    constants = set(constant_values(model))
    return {name for node in model.graph.node if node.name in quantized
            for name in node.input if name and name not in constants}
