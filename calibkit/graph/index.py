"""Who produces and who reads each tensor of an ONNX graph: the one index every graph walk asks.

An index is a snapshot of the graph as it was when built (protobuf messages cannot be watched for
changes, so nothing here guesses whether a graph moved on): a pass that rewrites nodes while it walks
keeps reading the graph it started from, and the next pass builds a new index.
"""

from __future__ import annotations

from collections import deque
from typing import Container, Iterable

import onnx


class GraphIndex:
    """Producer and consumer maps of one ``onnx.GraphProto``'s nodes, in node order. Empty names (an
    optional input or output left out) are never indexed."""

    def __init__(self, graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto] | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = list(graph.node if nodes is None else nodes)
        #: Tensor name -> index (in :attr:`nodes`) of the node that produces it.
        self.position: dict[str, int] = {out: index for index, node in enumerate(self.nodes)
                                         for out in node.output if out}
        #: Tensor name -> the node that produces it (graph inputs and initializers have none).
        self.producer: dict[str, onnx.NodeProto] = {name: self.nodes[i] for name, i in self.position.items()}
        #: Tensor name -> the nodes reading it, in node order (a node reading it twice is listed twice).
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = frozenset(out.name for out in graph.output)

    @property
    def produced(self) -> frozenset[str]:
        """Every tensor some node produces."""
        return frozenset(self.position)

    def producer_op(self, tensor: str) -> str | None:
        """The op type producing ``tensor``; ``None`` for graph inputs, initializers and unknown names."""
        node = self.producer.get(tensor)
        return node.op_type if node is not None else None

    def only_reader(self, tensor: str) -> onnx.NodeProto | None:
        """The single node reading ``tensor`` when nothing else (no other node, no graph output) does."""
        readers = self.consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in self.graph_outputs else None

    def upstream(self, tensors: Iterable[str], within: Container[int] = ()) -> list[int]:
        """Indices of the nodes ``tensors`` depend on (their producers and, transitively, those nodes'
        inputs' producers), in the order first reached; indices in ``within`` stop the walk."""
        seen: set[int] = set()
        found: list[int] = []
        stack = [self.position[t] for t in tensors if t in self.position]
        while stack:
            index = stack.pop()
            if index in seen or index in within:
                continue
            seen.add(index)
            found.append(index)
            stack.extend(self.position[name] for name in self.nodes[index].input if name in self.position)
        return found

    def topological(self) -> list[onnx.NodeProto]:
        """:attr:`nodes` in Kahn's order, stable with respect to their given order."""
        waiting = [sum(1 for name in node.input if name in self.position) for node in self.nodes]
        users: dict[int, list[int]] = {}
        for index, node in enumerate(self.nodes):
            for name in node.input:
                if name in self.position:
                    users.setdefault(self.position[name], []).append(index)
        ready = deque(i for i, count in enumerate(waiting) if count == 0)
        order = []
        while ready:
            index = ready.popleft()
            order.append(self.nodes[index])
            for user in users.get(index, ()):
                waiting[user] -= 1
                if waiting[user] == 0:
                    ready.append(user)
        return order
