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

from calibkit.onnx_model import constant_values


@dataclass(frozen=True)
class GraphFacts:
    """What a rule may ask about a node's inputs: which tensors are constants, and each tensor's producer op."""

    constants: set[str]
    producers: dict[str, str]


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
        facts.producers.get(name) in ("Conv", "ConvTranspose") for name in node.input)


RULES: tuple[PlacementRule, ...] = (
    PlacementRule(("Conv", "ConvTranspose", "Gemm", "MatMul"), always,
                  "weighted ops run as INT8 kernels: activation input per tensor, weights per output channel; "
                  "a MatMul of two activations (attention's Q.K^T and P.V) quantizes both"),
    PlacementRule(("Add",), residual_of_convolution,
                  "a residual Add fed by a convolution runs in INT8: TensorRT fuses it into that convolution, which "
                  "reads the residual input in INT8 (the TensorRT target keeps only that input's pair, see "
                  "qdq_placement); an Add of a constant (bias, epsilon, HardSwish's +3, position embedding) is "
                  "pointwise work fused in float, and a transformer's residual stream stays float for the "
                  "LayerNorm that reads it"),
    PlacementRule(("GlobalAveragePool", "AveragePool", "MaxPool"), always,
                  "pooling runs in INT8 on an INT8 input"),
    PlacementRule(("Concat",), only_activation_inputs,
                  "a concatenation of INT8 branches stays INT8; one with a constant part stays float"),
)


def quantized_op_types(rules: tuple[PlacementRule, ...] = RULES) -> list[str]:
    return [op for rule in rules for op in rule.ops]


def nodes_kept_float(model: onnx.ModelProto, rules: tuple[PlacementRule, ...] = RULES) -> list[str]:
    """Names of the nodes whose op a rule names but whose condition fails (they stay float)."""
    facts = GraphFacts(set(constant_values(model)),
                       {out: node.op_type for node in model.graph.node for out in node.output})
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
