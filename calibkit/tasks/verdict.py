"""Verdicts in words: a candidate is unusable when it meets one of its task's default rules (or the
user's ``--unusable-if``), and fails a gate when it meets one of ``--fail-on``. Rules read
``METRIC<VALUE`` (also ``<=``, ``>``, ``>=``), with the task's metric keys or ``output_sqnr``
(the lowest SQNR over the model's outputs, dB); dashes and underscores are interchangeable.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from calibkit.errors import CalibkitError
from calibkit.records import Record

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_RULE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*(<=|>=|<|>)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*$")
# Metric names of earlier calibkit versions and their spelling here.
ALIASES = {"top1_agreement": "agreement", "mean_kl": "kl", "sqnr": "output_sqnr"}
COMMON_METRICS = ("output_sqnr",)
# Added to every task's own rules: outputs whose quantization noise is about as strong as the signal
# (SQNR under 1 dB) are no longer the model's, whatever the task metric happens to say.
COMMON_UNUSABLE = ("output_sqnr<1",)


@dataclass(frozen=True)
class Rule:
    """``metric op value``: met (the candidate is flagged) when ``op(metric, value)`` holds."""

    metric: str
    op: str
    value: float

    def met(self, metrics: Mapping[str, float | None]) -> bool | None:
        """True or False; None when the metric was not measured (no labels, ...)."""
        value = metrics.get(self.metric)
        if value is None:
            return None
        if isinstance(value, float) and math.isnan(value):
            return True
        return _OPS[self.op](value, self.value)

    def describe(self, metrics: Mapping[str, float | None]) -> str:
        value = metrics.get(self.metric)
        name = self.metric.replace('_', '-')
        if value is None:
            return f"{self} not checked: {name} was not measured (it may need labels)"
        return f"{name} {value:.4g} {self.op} {self.value:g}"

    def __str__(self) -> str:
        return f"{self.metric.replace('_', '-')}{self.op}{self.value:g}"


def parse_rule(text: str, allowed: Sequence[str]) -> Rule:
    """Parse ``recall<0.95``; the metric must be one of ``allowed`` (checked before any inference)."""
    found = _RULE.match(text)
    if not found:
        raise CalibkitError(f"rule {text!r} not understood; write METRIC<VALUE, e.g. recall<0.95 or top1-drop>1")
    metric = found.group(1).replace("-", "_")
    metric = ALIASES.get(metric, metric)
    if metric not in allowed:
        names = ", ".join(m.replace("_", "-") for m in allowed)
        raise CalibkitError(f"rule {text!r}: no metric {found.group(1)!r} for this task; use one of {names}")
    return Rule(metric, found.group(2), float(found.group(3)))


def degraded_rules(task) -> list[Rule]:
    """The task's ``degraded_if`` rules: a candidate meeting one works, but visibly worse than FP32."""
    allowed = [*task.metric_keys(), *COMMON_METRICS]
    return [parse_rule(r, allowed) for r in task.degraded_if]


@dataclass
class Verdict(Record):
    """A candidate judged by its task's rules (:func:`calibkit.tasks.verdict.judge`): ``usable``,
    ``degraded``, ``fails gate`` or ``unusable``, with every reason in words."""

    status: str
    reasons: list[str] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)
    failed_gates: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Whether the candidate's numbers may be shown as good (not unusable, not degraded)."""
        return self.status not in ("unusable", "degraded")


def judge(metrics: Mapping[str, float | None], unusable_if: Sequence[Rule], fail_on: Sequence[Rule],
          degraded_if: Sequence[Rule] = ()) -> Verdict:
    """The :class:`Verdict`: ``unusable``, ``fails gate``, ``degraded`` (it works, but one of the task's
    ``degraded_if`` rules holds: never shown as good) or ``usable``; a gate whose metric was not measured
    fails (a gate nobody can check is not passed)."""
    unusable = [rule.describe(metrics) for rule in unusable_if if rule.met(metrics)]
    failed = [rule.describe(metrics) for rule in fail_on if rule.met(metrics) in (True, None)]
    degraded = [rule.describe(metrics) for rule in degraded_if if rule.met(metrics)]
    if metrics.get("nonfinite_outputs"):
        unusable.insert(0, f"{int(metrics['nonfinite_outputs'])} output values are NaN or infinite")
    status = "unusable" if unusable else "fails gate" if failed else "degraded" if degraded else "usable"
    return Verdict(status, unusable + failed + degraded, unusable, failed, degraded)


def verdict_line(name: str, verdict: Verdict) -> str:
    """The sentence a person reads, e.g. ``int8 entropy2: UNUSABLE (recall 0 < 0.5)``."""
    if verdict.status == "usable":
        return f"{name}: usable"
    return f"{name}: {verdict.status.upper()} ({'; '.join(verdict.reasons)})"


def rules_for(task, fail_on: Sequence[str] = (), unusable_if: Sequence[str] | None = None) -> tuple[list[Rule], list[Rule]]:
    """The task's unusable rules (or ``unusable_if``) and the ``fail_on`` gates, parsed and checked
    against the task's metrics before any inference runs."""
    allowed = [*task.metric_keys(), *COMMON_METRICS]
    if unusable_if is None:
        own = [parse_rule(r, allowed) for r in task.unusable_if]
        common = [parse_rule(r, allowed) for r in COMMON_UNUSABLE]
        unusable = own + [r for r in common if r.metric not in {o.metric for o in own}]
    else:
        unusable = [parse_rule(r, allowed) for r in unusable_if]
    return unusable, [parse_rule(r, allowed) for r in fail_on]


def recommendation(task, candidates: Sequence, speed_rows: Sequence[Mapping] = ()) -> str:
    """The verdict's last sentence: the most accurate usable INT8 candidate in the task's own terms (else
    the most accurate usable one, else FP32), with its speed where a measurement of it is not noisy."""
    usable = [c for c in candidates if c.verdict.status == "usable"]
    if not usable:
        degraded = [c.name for c in candidates if c.verdict.status == "degraded"]
        some = f"; {', '.join(degraded)} work but lose visibly (reasons above)" if degraded else " (reasons above)"
        return f"Recommendation: keep FP32; no candidate is usable as it is{some}."
    int8 = [c for c in usable if c.precision == "int8"]
    best = min(int8 or usable, key=lambda c: _loss(task, c.metrics)[0])
    loss, metric = _loss(task, best.metrics)
    accuracy = (f"output SQNR {-loss:.1f} dB" if metric == "output SQNR"
                else f"{metric} {'loss' if loss >= 0 else 'gain'} {abs(loss):.2f} points against FP32")
    kind = "INT8 candidate" if int8 else "candidate; no INT8 candidate is usable"
    return f"Recommendation: {best.name}, the most accurate usable {kind} ({accuracy}){_speed(best, speed_rows)}."


def _loss(task, metrics: Mapping[str, float | None]) -> tuple[float, str]:
    """Points lost on the task's main metric; for tasks without one, the negated output SQNR."""
    try:
        return task.budget_loss(metrics)
    except (CalibkitError, KeyError, TypeError):
        return -float(metrics.get("output_sqnr") or 0.0), "output SQNR"


def _speed(candidate, speed_rows: Sequence[Mapping]) -> str:
    rows = [r for r in speed_rows if r["candidate"] == candidate.name and r.get("speedup")]
    steady = [r for r in rows if not r.get("noisy")]
    if steady:
        row = max(steady, key=lambda r: r["batch"])
        return f"; {row['speedup']:.2f}x FP32 at batch {row['batch']} on {row['backend']}"
    return "; its speed was noisy on this machine, so none is claimed" if rows else ""
