"""Generic: no task metric; the verdict rests on the per-output drift every comparison measures."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from calibkit.data.loader import Batch
from calibkit.tasks.base import Scorer, Task
from calibkit.tasks.registry import register_task


class NoScorer(Scorer):
    def add(self, reference: Sequence[None], candidate: Sequence[None], batch: Batch) -> None:
        return None

    def merge(self, other: "NoScorer") -> None:
        return None

    def result(self) -> dict[str, float | None]:
        return {}


@register_task
class Generic(Task):
    name = "generic"
    description = "any outputs: SQNR, cosine and max error per output only"
    unusable_if = ("output_sqnr<10",)
    budget_metrics = ()

    def decode(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> list[None]:
        return [None] * len(batch.items)

    def scorer(self) -> NoScorer:
        return NoScorer()

