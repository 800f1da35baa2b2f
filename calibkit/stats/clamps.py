"""Statistics of ReLU and Clip outputs, taken from their inputs' histograms instead of a second pass.

``clip(x, low, high)`` moves every value below ``low`` to ``low`` and above ``high`` to ``high``, so
its histogram is its input's with the outer bins folded in (:meth:`TensorStats.clamped`). In
ReLU/ReLU6 networks nearly half of all activation values are such outputs: deriving them halves the
histogram work and the tensors ONNX Runtime has to copy out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import onnx

from calibkit.graph.onnx_model import clamp_bounds, constant_values
from calibkit.stats.histogram import TensorStats


@dataclass(frozen=True)
class Clamp:
    """``output = clip(source, low, high)`` for one Relu/Clip node of the graph."""

    output: str
    source: str
    low: float
    high: float


def derivable_clamps(model: onnx.ModelProto, names: Sequence[str]) -> list[Clamp]:
    """Relu/Clip nodes with constant bounds whose input and output are both among ``names``, in graph order.

    A clamp of a clamp is derivable too, since derived statistics keep their signs.
    """
    wanted = set(names)
    constants = constant_values(model)
    clamps = []
    for node in model.graph.node:
        bounds = clamp_bounds(node, constants)
        if bounds is None or not node.input or node.input[0] not in wanted or node.output[0] not in wanted:
            continue
        clamps.append(Clamp(node.output[0], node.input[0], *bounds))
    return clamps


def with_clamps(
    measured: Mapping[str, TensorStats], clamps: Sequence[Clamp], order: Sequence[str]
) -> dict[str, TensorStats]:
    """``measured`` plus the statistics of every clamp output, keyed in ``order``."""
    stats = dict(measured)
    for clamp in clamps:
        stats[clamp.output] = stats[clamp.source].clamped(clamp.output, clamp.low, clamp.high)
    return {name: stats[name] for name in order}
