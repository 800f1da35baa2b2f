"""One streaming pass of a session over images, scored by the task against the labels (if any)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from calibkit.backends.base import Session
from calibkit.data.images import ImageItem
from calibkit.data.loader import LoadReport, iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.progress import progress
from calibkit.tasks.base import Task


@dataclass
class Evaluation:
    """The task's metrics of one model on its own (label metrics are ``None`` without labels)."""

    metrics: dict
    images: int
    seconds: float
    skipped: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def evaluate(session: Session, items: Sequence[ImageItem], preprocess: Preprocess, task: Task,
             batch_size: int = 16, skip_bad: bool = False, desc: str = "inference") -> Evaluation:
    """Run ``session`` over ``items`` and score its predictions with the task (against labels)."""
    report = LoadReport()
    scorer = task.scorer()
    images = 0
    start = time.perf_counter()
    with progress(len(items), desc) as bar:
        for batch in iter_batches(items, preprocess, batch_size, skip_bad=skip_bad, report=report):
            predictions = task.decode(session.run(batch.array), batch)
            scorer.add(predictions, predictions, batch)
            images += len(batch.items)
            bar.update(len(batch.items))
    if not images:
        raise CalibkitError("every image failed to load; nothing to evaluate (see the warning above)")
    own = {m.key for m in task.metrics if not m.versus_fp32}
    metrics = {k: v for k, v in scorer.result().items() if k in own}
    return Evaluation(metrics, images, time.perf_counter() - start, len(report.skipped))
