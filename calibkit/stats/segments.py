"""Run a model in consecutive pieces, so that only one piece's exposed tensors are held at a time.

The statistics pass reads every activation of a batch. Exposing them all from one session holds the
whole network's activations at once: several GB for one 1024 px image of a wide detector. Here the graph,
in its topological order, is cut into segments whose exposed tensors fit a byte budget. Each segment is a
model of its own that reads what earlier segments computed (the frontier) and hands its tensors out before
the next runs: a batch still costs one inference in all, and only the frontier and one segment's tensors
are alive. Every exposed tensor is a graph output in both forms, so ONNX Runtime fuses nothing across it
either way; the values agree to float rounding, since a layer at a segment's edge may get another kernel
layout (EfficientNet-Lite0's statistics and moments come out to the bit: ``tests/stats/test_segments.py``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.external_data_helper import convert_model_to_external_data, write_external_data_tensors

from calibkit.backends import load
from calibkit.backends.onnxruntime import pieces, unpadded
from calibkit.graph.index import GraphIndex
from calibkit.graph.onnx_model import has_subgraph, tensor_types


@dataclass
class Segment:
    """Nodes ``start:stop`` of the graph as ``model``: it reads ``inputs`` (the image input or tensors of
    earlier segments) and returns ``exposed`` (the wanted tensors it computes) and ``carried`` (what it
    computes that a later segment or the graph's outputs read)."""

    model: onnx.ModelProto | None
    inputs: list[str]
    exposed: list[str]
    carried: list[str]
    exposed_bytes: int


def cut_points(model: onnx.ModelProto, names: Sequence[str], sizes: Mapping[str, int], budget: int) -> list[int]:
    """Node indices where a new segment starts (0 first), so that each segment's tensors of ``names``
    (``sizes``: bytes per batch) stay within ``budget``; a node over the budget alone gets a segment of
    its own. A graph with control flow (subgraphs read outer tensors) stays one segment."""
    nodes = model.graph.node
    if any(has_subgraph(node) for node in nodes):
        return [0]
    wanted = set(names)
    cuts, held = [0], 0
    for index, node in enumerate(nodes):
        size = sum(sizes.get(out, 0) for out in node.output if out in wanted)
        if held and held + size > budget:
            cuts.append(index)
            held = 0
        held += size
    return cuts


def split(model: onnx.ModelProto, names: Sequence[str], sizes: Mapping[str, int], budget: int,
          order: Sequence[int] | None = None, cuts: Sequence[int] | None = None) -> list[Segment]:
    """``model`` cut into segments that together compute every tensor of ``names``: at :func:`cut_points`,
    or at ``cuts`` of its nodes taken in ``order`` (a topological order of node indices)."""
    cuts = cut_points(model, names, sizes, budget) if cuts is None else list(cuts)
    nodes = list(model.graph.node) if order is None else [model.graph.node[i] for i in order]
    bounds = list(zip(cuts, [*cuts[1:], len(nodes)]))
    initializers = {init.name: init for init in model.graph.initializer}
    types = {**tensor_types(model), **{i.name: i.type for i in model.graph.input}}
    wanted = set(names)
    read_after: list[set[str]] = [{out.name for out in model.graph.output}]  # [k]: read after segment k
    for start, stop in reversed(bounds[1:]):
        read_after.insert(0, read_after[0] | {name for node in nodes[start:stop] for name in node.input})
    segments = []
    graph_inputs = [i.name for i in model.graph.input if i.name in wanted]  # handed out by the first segment
    for (start, stop), later in zip(bounds, read_after):
        part = nodes[start:stop]
        produced = [out for node in part for out in node.output if out]
        exposed = [*(graph_inputs if start == 0 else []), *(out for out in produced if out in wanted)]
        carried = [out for out in produced if out in later]
        made = set(produced)
        inputs = list(dict.fromkeys(name for node in part for name in node.input
                                    if name and name not in made and name not in initializers))
        read = {name for node in part for name in node.input}
        graph = helper.make_graph(part, f"{model.graph.name}_{start}",
                                  [onnx.ValueInfoProto(name=name, type=types[name]) for name in inputs],
                                  [onnx.ValueInfoProto(name=name) for name in dict.fromkeys(exposed + carried)
                                   if name not in inputs],
                                  [initializers[name] for name in initializers if name in read])
        piece = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        segments.append(Segment(piece, inputs, exposed, carried, sum(sizes.get(n, 0) for n in exposed)))
    return segments


def split_like(model: onnx.ModelProto, names: Sequence[str], groups: Sequence[Sequence[str]]) -> list[Segment]:
    """``model`` cut so that its k-th segment computes what it has of ``groups[k]`` (the tensors another
    graph's k-th segment exposes) and the nodes those need; what no group needs runs last. Run in step
    with the other graph, each segment hands out the tensors that graph's segment has just handed out:
    a Q/DQ candidate's float tensors keep the reference's names, so its segments mirror the reference's."""
    nodes = model.graph.node
    if any(has_subgraph(node) for node in nodes):
        return split(model, names, {}, 0)
    index = GraphIndex(model.graph)
    segment_of: dict[int, int] = {}
    wanted = set(names)
    for k, group in enumerate(groups):
        segment_of.update(dict.fromkeys(index.upstream([t for t in group if t in wanted], within=segment_of), k))
    order = sorted(range(len(nodes)), key=lambda i: (segment_of.get(i, len(groups)), i))
    starts = [segment_of.get(i, len(groups)) for i in order]
    cuts = [0] + [position for position in range(1, len(order)) if starts[position] != starts[position - 1]]
    return split(model, names, {}, 0, order=order, cuts=cuts)


# Where :func:`weights_apart` writes a model's weights, beside the segment files that refer to them.
WEIGHTS_FILE = "weights.bin"


def weights_apart(model: onnx.ModelProto) -> tuple[onnx.ModelProto, tempfile.TemporaryDirectory]:
    """A copy of ``model`` whose large initializers refer to ``weights.bin`` in a new temporary folder,
    written from ``model`` tensor by tensor, and that folder: segments split from the copy and saved there
    (:class:`SegmentedSession` ``folder``) load their own share of the weights from that file, and the
    470 MB of a large model are never held twice. ``model`` is left without its weights' values (drop it)."""
    folder = tempfile.TemporaryDirectory(prefix="calibkit-segments-")
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=WEIGHTS_FILE, size_threshold=1024,
                                   convert_attribute=False)
    write_external_data_tensors(model, folder.name)
    light = onnx.ModelProto()
    light.CopyFrom(model)  # a message of its own: the emptied one keeps its weights' memory until it goes
    return light, folder


class SegmentedSession:
    """One ONNX Runtime session per segment (``path`` names the model in messages), run in turn.

    Each segment is saved to a file of ``folder`` (where :func:`weights_apart` may have put the weights it
    refers to; a temporary folder of its own by default) and its session loaded from there.
    ``resident=False`` holds no session between runs: each segment is loaded as it runs, so only one
    segment's weights are in memory at a time, for a pass that runs several large models side by side
    over a few images (the per-layer drift of compare)."""

    def __init__(self, path: Path, segments: list[Segment], backend: str = "ort-cpu", threads: int = 0,
                 resident: bool = True, folder: tempfile.TemporaryDirectory | None = None, **options) -> None:
        self.path, self.backend, self.threads, self.options = Path(path), backend, threads, options
        self._folder = folder or tempfile.TemporaryDirectory(prefix="calibkit-segments-")
        self.sessions = []
        for index, segment in enumerate(segments):  # each segment's graph (a share of the weights) is let go once saved
            saved = Path(self._folder.name) / f"segment-{index}.onnx"
            onnx.save(segment.model, str(saved))
            segment.model = None
            self.sessions.append(self._load(saved) if resident else saved)
        self.segments = segments
        self.input_name = self.segments[0].inputs[0]
        self.fixed_batch = self._session(0).fixed_batch
        last_read: dict[str, int] = {}
        for index, segment in enumerate(self.segments):
            last_read.update(dict.fromkeys(segment.inputs, index))
        # after segment k, the frontier tensors no later segment reads are let go
        self._released = [[name for name, last in last_read.items() if last == index]
                          for index in range(len(self.segments))]

    def _load(self, saved: Path):
        return load(self.path, "fp32", self.backend, model=saved, threads=self.threads, arena=False, **self.options)

    def _session(self, index: int):
        held = self.sessions[index]
        return self._load(held) if isinstance(held, Path) else held

    def run(self, batch: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """Each segment's exposed tensors for ``batch``, segment by segment: a caller that folds and drops
        them before asking for the next holds one segment's tensors at a time. A model with a fixed batch
        size runs it chunk by chunk (the padding cut off), each chunk through every segment."""
        for chunk, real in pieces(batch, self.fixed_batch):
            frontier: dict[str, np.ndarray] = {self.input_name: chunk}
            for index, (segment, released) in enumerate(zip(self.segments, self._released)):
                feeds = {name: frontier[name] for name in segment.inputs}
                session = self._session(index)
                values = {**feeds, **session.run_feeds(feeds, session.output_names)}
                del session
                for name in released:
                    del frontier[name]
                frontier.update({name: values[name] for name in segment.carried})
                exposed = unpadded({name: values[name] for name in segment.exposed}, self.fixed_batch, real)
                del values, feeds  # while the next segment runs, only the caller decides what stays alive
                yield exposed
                del exposed
