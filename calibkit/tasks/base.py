"""The task contract: how a model's outputs become predictions, and how candidate predictions are scored
against the FP32 reference's (and against labels where there are any).

A task plug-in is a :class:`Task` subclass registered with :func:`calibkit.tasks.register_task`. The
comparator calls, per batch of images, ``decode`` once for the reference and once per candidate, then
``Scorer.add`` for each candidate; at the end ``Scorer.result`` gives the metrics the report shows
first. Nothing in compare or report knows which task it is running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from calibkit.data.loader import Batch
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError


@dataclass(frozen=True)
class OutputInfo:
    """One model output as the graph declares it (``None`` for a dynamic axis)."""

    name: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class Metric:
    """A number a task reports per candidate.

    ``versus_fp32`` metrics compare a candidate with the reference (the reference row shows none of
    them); the others describe one model and are shown for the reference too. ``labels`` marks the
    metrics that need ground truth (``None`` without it).
    """

    key: str
    label: str
    higher_is_better: bool
    fmt: str = "{:.2f}"
    versus_fp32: bool = True
    labels: bool = False

    def format(self, value: float | None) -> str:
        return "–" if value is None else self.fmt.format(value)


@dataclass(frozen=True)
class Option:
    """A ``--task-opt key=value`` setting of a task, parsed and validated up front."""

    type: type
    default: Any
    help: str


@dataclass
class TaskContext:
    """What a task may look at when it is set up: the model's outputs, input size and preprocessing, the
    user's ``--task-opt`` options, the number of label classes and the model's ``metadata_props`` (an
    exporter's class names, say)."""

    outputs: list[OutputInfo]
    input_size: tuple[int, int]
    preprocess: Preprocess
    options: Mapping[str, str] = field(default_factory=dict)
    num_labels: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


class Scorer:
    """Accumulates one candidate's predictions against the reference's, batch by batch."""

    def add(self, reference: Sequence[Any], candidate: Sequence[Any], batch: Batch) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float | None]:
        """Metric key -> value (``None`` where it does not apply, e.g. no labels)."""
        raise NotImplementedError

    def merge(self, other: "Scorer") -> None:
        """Add what ``other`` (a scorer of the same task, fed later images) accumulated, as if this scorer
        had seen those images too: what a comparison split over processes needs (``--ray``)."""
        raise CalibkitError(f"{type(self).__name__} cannot merge the scores of another process; compare without --ray")

    def details(self) -> dict[str, Any]:
        """Extra JSON-ready detail (per-class tables, ...); empty by default."""
        return {}

    def examples(self, preprocess: Preprocess, limit: int, colour: str = "#d62728") -> list[dict]:
        """Up to ``limit`` inline figures ``{caption, png_base64}`` where the candidate disagrees most,
        the candidate drawn in ``colour`` (its colour in the report) and FP32 in
        :data:`calibkit.colours.REFERENCE`."""
        return []


class Task:
    """Base class of task plug-ins; subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()
    # Default "unusable" rules, in the --fail-on syntax: a candidate that meets one is called unusable.
    unusable_if: ClassVar[tuple[str, ...]] = ()
    # Rules under which a candidate still works but is visibly worse than FP32: called "degraded", not usable.
    degraded_if: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[Mapping[str, Option]] = {}
    # Values of a model's ``task`` metadata entry (as Ultralytics writes it) that mean this task.
    exporter_tasks: ClassVar[tuple[str, ...]] = ()
    # What --budget-metric may name for this task; empty: the task has no accuracy budget.
    budget_metrics: ClassVar[tuple[str, ...]] = ("auto",)

    def __init__(self, context: TaskContext) -> None:
        self.context = context
        unknown = sorted(set(context.options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise CalibkitError(f"task {self.name}: unknown --task-opt {', '.join(unknown)}; options: {known}")
        self.settings: dict[str, Any] = {}
        for key, option in self.options.items():
            raw = context.options.get(key)
            try:
                self.settings[key] = option.default if raw is None else option.type(raw)
            except ValueError:
                raise CalibkitError(f"task {self.name}: --task-opt {key}={raw!r} is not a {option.type.__name__}") from None

    def select_output(self, rank: int, layout: str) -> OutputInfo:
        """The output named by ``--task-opt output=NAME``, else the first with ``rank`` axes; an error
        naming the model's outputs when neither exists (never a silently flattened other output)."""
        outputs = self.context.outputs
        wanted = self.settings.get("output") or ""
        found = [o for o in outputs if o.name == wanted] if wanted else [o for o in outputs if len(o.shape) == rank]
        if not found or len(found[0].shape) != rank:
            shapes = ", ".join(f"{o.name} {['?' if d is None else d for d in o.shape]}" for o in outputs)
            which = f"output {wanted!r} as" if wanted else "an output"
            raise CalibkitError(f"task {self.name} needs {which} {layout}; the model has {shapes}")
        return found[0]

    @classmethod
    def detect(cls, outputs: Sequence[OutputInfo], input_size: tuple[int, int]) -> bool:
        """True when ``outputs`` can only mean this task (used when ``--task`` is not given)."""
        return False

    def decode(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[Any]:
        """Per-image predictions from one batch of raw outputs."""
        raise NotImplementedError

    def scorer(self) -> Scorer:
        raise NotImplementedError

    def label_classes(self) -> int | None:
        """How many classes an image's label may name (labels ``0 .. n-1``); ``None``: the task reads no
        class labels, so any are ignored."""
        return None

    def check_budget_metric(self, metric: str) -> None:
        """Refuse, before any inference, an accuracy budget this task cannot measure."""
        if not self.budget_metrics:
            raise CalibkitError(f"task {self.name} has no accuracy budget; drop --accuracy-budget")
        if metric not in self.budget_metrics:
            raise CalibkitError(f"unknown budget metric {metric!r} for task {self.name}; "
                                f"use {', '.join(self.budget_metrics)}")

    def budget_loss(self, result: Mapping[str, float | None], metric: str = "auto") -> tuple[float, str]:
        """Points lost by a candidate on the task's main metric, for the accuracy budget: (loss, name)."""
        raise CalibkitError(f"task {self.name} has no accuracy budget; drop --accuracy-budget")

    def drift_sums(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> np.ndarray:
        """The sums a smooth distance between two models' outputs is made of, on one batch, for ranking
        layer sensitivity: added over batches and handed to :meth:`drift_of`, they give the distance over
        all of them without holding any outputs. Here, per output, its noise energy and its energy."""
        sums = []
        for name, ref in reference.items():
            ref64 = np.asarray(ref, np.float64)
            sums += [np.sum((np.asarray(candidate[name], np.float64) - ref64) ** 2), np.sum(ref64 ** 2)]
        return np.array(sums)

    def drift_of(self, sums: np.ndarray) -> float:
        """The distance from :meth:`drift_sums` added over batches (0 for identical outputs): here the
        summed relative noise energy of every output."""
        return float(np.sum(sums[0::2] / np.maximum(sums[1::2], 1e-30)))

    def metric_keys(self) -> list[str]:
        return [m.key for m in self.metrics]
