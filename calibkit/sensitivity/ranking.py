"""Which layers cost the accuracy: a leave-one-out ranking of the quantizable nodes.

The model is quantized with every quantizable node but one (the quantized graph rewired in memory,
:mod:`calibkit.artifacts.qdq_edit`, and run only from where it differs, :mod:`calibkit.sensitivity.suffix`),
and the node's score is how much that lowers the output drift (the task's smooth distance: mean KL of
softmax for classifiers, relative output noise otherwise) on a subset of images. The budget search
(:mod:`calibkit.sensitivity.budget`) keeps the top of this ranking in float.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from calibkit.artifacts.placement import quantized_nodes
from calibkit.artifacts.qdq import export_qdq, resolve_exclusions
from calibkit.artifacts.qdq_edit import with_node_in_float
from calibkit.calib.registry import TensorRange
from calibkit.calib.weights import RefinedWeights
from calibkit.data.image_cache import ImageCache
from calibkit.data.loader import Batch
from calibkit.graph.normalize import normalized_model
from calibkit.graph.onnx_model import activation_bytes, image_input
from calibkit.progress import progress
from calibkit.sensitivity.suffix import Base, Suffix, SuffixRunner, suffix_groups, suffix_of
from calibkit.tasks.base import Task

SENSITIVE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def summed_drift(task: Task, reference: Sequence[Mapping[str, np.ndarray]],
                 candidate: Iterable[tuple[Batch, Mapping[str, np.ndarray]]]) -> float:
    """The task's drift of the ``candidate`` pass (:meth:`ImageCache.run`) against the ``reference``
    outputs, batch by batch. The pass is run to its end, which frees its session."""
    return task.drift_of(sum(task.drift_sums(ref, out) for ref, (_, out) in zip(reference, candidate, strict=True)))


def quantizable_nodes(model_path: Path, ops: Sequence[str] = SENSITIVE_OPS) -> list[str]:
    """Names of the nodes sensitivity ranks, in the order of the normalised graph that is quantized."""
    return [node.name for node in normalized_model(model_path).model.graph.node if node.op_type in ops]


def quantized_in(float_model: onnx.ModelProto, exclude: Sequence[str] = ()) -> set[str]:
    """Names of the nodes a Q/DQ export of ``float_model`` with ``exclude`` kept in float quantizes."""
    return quantized_nodes(float_model) - set(resolve_exclusions(float_model, exclude))


def layer_sensitivity(model: Path, ranges: Mapping[str, TensorRange], cache: ImageCache, task: Task,
                      nodes: Sequence[str] | None = None, weights: RefinedWeights | None = None,
                      rank: Callable[..., list[dict]] | None = None, exclude: Sequence[str] = ()) -> list[dict]:
    """Leave-one-out ranking, most sensitive first: ``{node, drift, drift_gain}`` per node, with the run's
    ``weights`` in every quantized layer and the nodes matched by ``exclude`` in float throughout (and
    not ranked). ``rank`` computes the rows (default :func:`leave_one_out`; a split over processes,
    :func:`calibkit.distributed.sharded_leave_one_out`, gives the same rows)."""
    if nodes is None:
        kept_float = set(resolve_exclusions(normalized_model(model).model, exclude))
        nodes = [node for node in quantizable_nodes(model) if node not in kept_float]
    rows = (rank or leave_one_out)(model, ranges, cache, task, list(nodes), weights, exclude)
    return sorted(rows, key=lambda r: r["drift_gain"], reverse=True)


def leave_one_out(model: Path, ranges: Mapping[str, TensorRange], cache: ImageCache, task: Task,
                  nodes: Sequence[str], weights: RefinedWeights | None = None,
                  exclude: Sequence[str] = ()) -> list[dict]:
    """For each of ``nodes``, in order, the drift with that node alone in float (besides ``exclude``) and
    its gain over the drift of the model quantized without ``exclude``. Each variant runs from the first
    tensors it changes, on that model's values (:mod:`calibkit.sensitivity.suffix`)."""
    reference = [out for _, out in cache.run(model)]  # per batch, as the drift is summed
    float_model = normalized_model(model).model
    quantized_names = quantized_in(float_model, exclude)
    with tempfile.TemporaryDirectory(prefix="calibkit-sens-") as tmp:
        path = Path(tmp) / "q.onnx"
        quantized = onnx.load(str(export_qdq(model, ranges, path, exclude, weights=weights)))
        base = summed_drift(task, reference, cache.run(path, quantized))
        indexed = Base.of(quantized)
        first = cache.first.array
        sizes = activation_bytes(quantized, (1, *first.shape[1:]))
        fixed = image_input(quantized, model).batch
        per_run = min(fixed, len(first)) if fixed else len(first)  # images per base run

        def suffix(node: str) -> Suffix:
            variant = with_node_in_float(quantized, float_model, node, quantized_names)
            if variant is None:
                written = export_qdq(model, ranges, Path(tmp) / "variant.onnx", [*exclude, node], weights=weights)
                variant = onnx.load(str(written))
            return suffix_of(indexed, variant)

        drifts: dict[str, float] = {}
        with progress(len(nodes), "layer sensitivity", unit="layer") as bar:
            for group in suffix_groups(nodes, suffix, sizes, per_run):
                runner = SuffixRunner(indexed, path, group)
                sums: dict[str, np.ndarray | float] = dict.fromkeys(group, 0.0)
                for ref, batch in zip(reference, cache, strict=True):
                    for node, values in runner.run(batch.array):
                        sums[node] = sums[node] + task.drift_sums(ref, values)
                drifts.update({node: task.drift_of(sums[node]) for node in group})
                bar.update(len(group))
    return [{"node": node, "drift": drifts[node], "drift_gain": base - drifts[node]} for node in nodes]
