"""Which layers cost the accuracy, and the fewest to keep in float to meet an accuracy budget.

Sensitivity is leave-one-out: the model is quantized with every quantizable node but one (the
quantized graph rewired in memory, :mod:`calibkit.artifacts.qdq_edit`, and run only from where it
differs, :mod:`calibkit.compare.suffix`), and the node's score is how much that lowers the output drift
(the task's smooth distance: mean KL of softmax for classifiers, relative output noise otherwise) on a
subset of images. The budget search then keeps the most sensitive nodes in float, one more at a time,
until the task's loss (top-1 drop or agreement loss, 1 - F1, CER, ...) is within the budget on all
images.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from calibkit.artifacts.placement import quantized_nodes
from calibkit.artifacts.qdq import export_qdq, resolve_exclusions
from calibkit.artifacts.qdq_edit import with_node_in_float, with_nodes_in_float
from calibkit.calib.registry import TensorRange
from calibkit.calib.weights import RefinedWeights
from calibkit.compare.image_cache import ImageCache
from calibkit.compare.suffix import Base, Suffix, SuffixRunner, suffix_groups, suffix_of
from calibkit.data.loader import Batch
from calibkit.normalize import normalized_model
from calibkit.onnx_model import activation_bytes, image_input
from calibkit.progress import progress
from calibkit.tasks.base import Task

SENSITIVE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def task_loss(task: Task, reference: Sequence[list], candidate: Iterable[tuple[Batch, Mapping[str, np.ndarray]]],
              metric: str) -> tuple[float, str, dict]:
    """The task's budget loss of the ``candidate`` pass (:meth:`ImageCache.run`) against the decoded
    ``reference`` predictions: ``(loss, metric name, all metrics)``."""
    scorer = task.scorer()
    for ref_pred, (batch, out) in zip(reference, candidate, strict=True):
        scorer.add(ref_pred, task.decode(out, batch), batch)
    result = scorer.result()
    return (*task.budget_loss(result, metric), result)


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
    tensors it changes, on that model's values (:mod:`calibkit.compare.suffix`)."""
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


@dataclass
class BudgetResult:
    """Outcome of the budget search: nodes kept in float, loss per step, the written models."""

    budget: float
    kept_float: list[str]
    metric: str = ""
    steps: list[dict] = field(default_factory=list)
    met: bool = False
    models: dict[str, str] = field(default_factory=dict)


def fit_accuracy_budget(model: Path, ranges: Mapping[str, TensorRange], cache: ImageCache, task: Task,
                        ranking: Sequence[str], budget: float, out_prefix: Path, max_float: int = 16,
                        metric: str = "auto", weights: RefinedWeights | None = None,
                        measured: Mapping[str, float] | None = None, exclude: Sequence[str] = ()) -> BudgetResult:
    """Keep the first k of ``ranking`` in float for k = 0, 1, ... until the task's loss is within ``budget``
    (when no k up to ``max_float`` meets it, the k whose loss came closest).

    ``metric`` is passed to the task (classification: ``top1``, ``agreement`` or ``auto``). ``measured``
    are the task metrics of the fully quantized model on these same images (the comparison's): step 0
    takes them instead of a pass of its own. The nodes ``exclude`` matches are float at every step.
    Writes ``<out_prefix>.qdq.onnx`` (TensorRT) and ``<out_prefix>.ort.onnx`` for the chosen k, unless k
    is 0.
    """
    task.check_budget_metric(metric)
    result = BudgetResult(budget, [])
    steps = min(max_float, len(ranking)) + 1
    if measured is not None:
        lost, result.metric = task.budget_loss(measured, metric)
        result.steps.append({"float_layers": 0, "loss": lost, "metrics": dict(measured)})
        if lost <= budget:
            result.met = True
            return result
    reference = [task.decode(out, batch) for batch, out in cache.run(model)]
    float_model = normalized_model(model).model
    quantized_names = quantized_in(float_model, exclude)
    with tempfile.TemporaryDirectory(prefix="calibkit-budget-") as tmp:
        path = Path(tmp) / "q.onnx"
        quantized = onnx.load(str(export_qdq(model, ranges, path, exclude, weights=weights)))
        with progress(steps - len(result.steps), "accuracy budget (layers in float)", unit="step") as bar:
            for k in range(len(result.steps), steps):
                excluded = list(ranking[:k])
                edited = with_nodes_in_float(quantized, float_model, excluded, quantized_names)
                if edited is None:
                    edited = onnx.load(str(export_qdq(model, ranges, path, [*exclude, *excluded], weights=weights)))
                lost, result.metric, metrics = task_loss(task, reference, cache.run(path, edited), metric)
                result.steps.append({"float_layers": k, "loss": lost, "metrics": metrics})
                bar.update(1)
                if lost <= budget:
                    result.kept_float, result.met = excluded, True
                    break
            else:  # not met: keep the step that came closest (the fewest layers among equals)
                closest = min(result.steps, key=lambda step: (step["loss"], step["float_layers"]))
                result.kept_float = list(ranking[: closest["float_layers"]])
    if not result.kept_float:
        return result  # fully quantized meets the budget, or comes closest: the plain INT8 models answer
    for target, suffix in (("tensorrt", ".qdq.onnx"), ("onnxruntime", ".ort.onnx")):
        written = export_qdq(model, ranges, Path(f"{out_prefix}{suffix}"), [*exclude, *result.kept_float], target,
                             weights=weights)
        result.models[target] = str(written)
    return result
