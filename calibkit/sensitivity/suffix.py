"""Run a variant of a graph from the first tensors it changes, on values the base graph computed.

Leave-one-out sensitivity runs the quantized graph once per layer with that layer in float. Upstream of
the layer, every variant computes exactly what the fully quantized graph computes, so running it from
the input again repeats work that is already done: on EfficientNet-Lite0 about half of every pass.
:func:`suffix_of` keeps the nodes of a variant that differ from the base graph and everything they
feed; :class:`SuffixRunner` runs the base graph once per batch with the tensors those suffixes read
exposed, then each suffix on them. The suffix gives the variant's outputs up to float rounding (ONNX
Runtime fuses a cut graph slightly differently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import onnx
from onnx import helper

from calibkit.backends import load
from calibkit.backends.onnxruntime import pieces, unpadded
from calibkit.graph.index import GraphIndex
from calibkit.graph.onnx_model import has_subgraph, tensor_types

# Bytes per batch of the base graph's tensors exposed for one group of suffixes, bytes of the weights
# the group's sessions hold (in float, as they run), and the most suffixes in a group: together they bound
# the memory of a sensitivity pass whatever the model. Each group costs one base pass: on EfficientNet's
# 50 layers, groups of 16 (4 base passes) ranked in 33 s at a 1.65 GB peak (the demo's whole command:
# 1.78 GB), groups of 8 (7 passes) in 40-43 s at 1.45 GB, and groups of 25 reached 1.91 GB, all measured
# while every variant's outputs were held; scored batch by batch, groups of 16 peak at 1.45 GB.
EXPOSED_BYTES = 256 << 20
WEIGHT_BYTES = 512 << 20
GROUP_SUFFIXES = 16


@dataclass
class Suffix:
    """The part of a variant that differs from the base graph: ``model`` reads ``inputs`` (tensors of
    the base graph); the variant's outputs that the change does not reach are the base's, ``reused``."""

    model: onnx.ModelProto
    inputs: list[str]
    reused: list[str]

    @property
    def weight_bytes(self) -> int:
        """The suffix's constants as its session holds them: every element as a float32."""
        return 4 * sum(math.prod(init.dims) for init in self.model.graph.initializer)


@dataclass
class Base:
    """The graph every variant is cut against, indexed once: its tensors' types (from shape inference,
    for the suffixes' inputs) and the serialized form of each node (keyed by its outputs) and constant."""

    model: onnx.ModelProto
    types: dict[str, onnx.TypeProto]
    nodes: dict[tuple[str, ...], bytes]
    initializers: dict[str, bytes]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> "Base":
        return cls(model, tensor_types(model),
                   {tuple(node.output): node.SerializeToString(deterministic=True) for node in model.graph.node},
                   {init.name: init.SerializeToString() for init in model.graph.initializer})


def suffix_of(base: Base, variant: onnx.ModelProto) -> Suffix:
    """The nodes of ``variant`` that differ from ``base`` (matched by their outputs; reading a constant
    that differs counts) and every node they feed, as a model of its own. A variant with control flow
    (subgraphs read outer tensors) stays whole."""
    if any(has_subgraph(node) for node in variant.graph.node):
        return Suffix(variant, [i.name for i in variant.graph.input], [])
    initializers = {init.name: init for init in variant.graph.initializer}
    rewritten = {name for name, init in initializers.items()
                 if base.initializers.get(name, b"") != init.SerializeToString()}
    constant = set(initializers)  # initializers, and what nodes compute from them alone (weight DQs)
    for node in variant.graph.node:
        if all(not name or name in constant for name in node.input):
            constant.update(node.output)
    kept, produced = set(), set()
    for index, node in enumerate(variant.graph.node):
        changed = base.nodes.get(tuple(node.output)) != node.SerializeToString(deterministic=True)
        if changed or any(name in produced or name in rewritten for name in node.input):
            kept.add(index)
            produced.update(node.output)
    producer = GraphIndex(variant.graph).position
    wanted = [name for index in kept for name in variant.graph.node[index].input if name in producer]
    while wanted:  # a kept node's constant inputs are computed in the suffix, not read from the base
        name = wanted.pop()
        index = producer[name]
        if name in constant and name not in initializers and index not in kept:
            kept.add(index)
            produced.update(variant.graph.node[index].output)
            wanted.extend(n for n in variant.graph.node[index].input if n in producer)
    nodes = [node for index, node in enumerate(variant.graph.node) if index in kept]
    inputs = list(dict.fromkeys(name for node in nodes for name in node.input
                                if name and name not in produced and name not in initializers))
    if any(name not in base.types for name in inputs):
        return Suffix(variant, [i.name for i in variant.graph.input], [])
    outputs = [out for out in variant.graph.output if out.name in produced]
    reused = [out.name for out in variant.graph.output if out.name not in produced]
    read = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes, f"{variant.graph.name}_suffix",
        [onnx.ValueInfoProto(name=name, type=base.types[name]) for name in inputs],
        outputs, [initializers[name] for name in initializers if name in read],
    )
    model = helper.make_model(graph, opset_imports=variant.opset_import, ir_version=variant.ir_version)
    return Suffix(model, inputs, reused)


def suffix_groups(keys: Iterable[str], make: Callable[[str], Suffix], sizes: Mapping[str, int], batch: int,
                  exposed_bytes: int = EXPOSED_BYTES, weight_bytes: int = WEIGHT_BYTES,
                  most: int = GROUP_SUFFIXES) -> Iterator[dict[str, Suffix]]:
    """``make(key)`` for each key, in order, packed into groups of at most ``most`` whose exposed base
    tensors (``sizes``: bytes per image; ``batch`` images per run) and weights stay within the budgets
    together; a suffix over a budget alone gets a group of its own. Made one group at a time, so only one
    group's graphs are in memory."""
    group: dict[str, Suffix] = {}
    exposed = weights = 0
    for key in keys:
        suffix = make(key)
        size = sum(sizes.get(name, 0) for name in suffix.inputs + suffix.reused) * batch
        if group and (exposed + size > exposed_bytes or weights + suffix.weight_bytes > weight_bytes
                      or len(group) >= most):
            yield group
            group, exposed, weights = {}, 0, 0
        group[key] = suffix
        exposed += size
        weights += suffix.weight_bytes
    if group:
        yield group


class SuffixRunner:
    """The outputs of a group of variants of ``base`` from one base run per batch and each variant's
    suffix; ``name`` names the base model in messages."""

    def __init__(self, base: Base, name: Path, suffixes: Mapping[str, Suffix]) -> None:
        self.suffixes = dict(suffixes)
        self.exposed = list(dict.fromkeys(t for s in self.suffixes.values() for t in s.inputs + s.reused))
        # Many sessions take turns on the cores here: idle workers sleep rather than spin against the next.
        options = {"arena": False, "spinning": False, "qdq_as_written": True}
        self.base = load(name, "fp32", "ort-cpu", expose=self.exposed, model=base.model, **options)
        self.sessions = {key: load(name, "fp32", "ort-cpu", model=s.model, **options)
                         for key, s in self.suffixes.items() if s.model.graph.node}

    def run(self, batch: np.ndarray) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Every variant's outputs for ``batch``, keyed as the suffixes are, one variant at a time.

        A model that takes any batch size runs its base once, and each variant's outputs are handed out as
        they are computed: only the base's exposed tensors and one variant's outputs are held. A fixed
        batch size runs the base chunk by chunk, so that only one chunk's exposed tensors are held (what
        :data:`EXPOSED_BYTES` bounds: holding every chunk's took PP-PicoDet's ranking past 3 GB), and
        gathers every variant's outputs of the batch before handing them out."""
        size = self.base.fixed_batch
        if size is None:
            values = self.base.run_feeds({self.base.input_name: batch}, self.exposed)
            for key in self.suffixes:
                yield key, self._variant(key, values)
            return
        parts: dict[str, list[dict[str, np.ndarray]]] = {key: [] for key in self.suffixes}
        for chunk, real in pieces(batch, size):
            values = self.base.run_feeds({self.base.input_name: chunk}, self.exposed)
            for key in self.suffixes:
                parts[key].append(unpadded(self._variant(key, values), size, real))
        for key, chunks in parts.items():
            yield key, {name: np.concatenate([p[name] for p in chunks]) for name in chunks[0]}

    def _variant(self, key: str, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One variant's outputs from the base's exposed ``values``."""
        suffix, session = self.suffixes[key], self.sessions.get(key)  # no session: the variant changes nothing
        out = session.run_feeds({name: values[name] for name in suffix.inputs}) if session else {}
        out.update({name: values[name] for name in suffix.reused})
        return out
