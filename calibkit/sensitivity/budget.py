"""The fewest layers to keep in float to meet an accuracy budget: the most sensitive nodes of the
ranking (:mod:`calibkit.sensitivity.ranking`) kept in float one more at a time, until the task's loss
(top-1 drop or agreement loss, 1 - F1, CER, ...) is within the budget on all images.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from calibkit.artifacts.qdq import export_qdq
from calibkit.artifacts.qdq_edit import with_nodes_in_float
from calibkit.calib.registry import TensorRange
from calibkit.calib.weights import RefinedWeights
from calibkit.data.image_cache import ImageCache
from calibkit.data.loader import Batch
from calibkit.graph.normalize import normalized_model
from calibkit.progress import progress
from calibkit.sensitivity.ranking import quantized_in
from calibkit.tasks.base import Task


def task_loss(task: Task, reference: Sequence[list], candidate: Iterable[tuple[Batch, Mapping[str, np.ndarray]]],
              metric: str) -> tuple[float, str, dict]:
    """The task's budget loss of the ``candidate`` pass (:meth:`ImageCache.run`) against the decoded
    ``reference`` predictions: ``(loss, metric name, all metrics)``."""
    scorer = task.scorer()
    for ref_pred, (batch, out) in zip(reference, candidate, strict=True):
        scorer.add(ref_pred, task.decode(out, batch), batch)
    result = scorer.result()
    return (*task.budget_loss(result, metric), result)


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
