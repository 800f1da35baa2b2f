"""One streaming pass of a session over images, keeping only the model outputs (logits)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from calibkit.backends.base import Session
from calibkit.data.images import ImageItem
from calibkit.data.loader import LoadReport, iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.progress import progress


@dataclass
class Predictions:
    """Logits of every image that loaded, their labels (or ``None``) and what the pass cost."""

    logits: np.ndarray
    labels: np.ndarray | None
    items: list[ImageItem]
    seconds: float
    skipped: int

    @property
    def images_per_second(self) -> float:
        return len(self.items) / self.seconds if self.seconds else 0.0


def predict(
    session: Session,
    items: Sequence[ImageItem],
    preprocess: Preprocess,
    batch_size: int = 16,
    skip_bad: bool = False,
    desc: str = "inference",
) -> Predictions:
    """Run ``session`` over ``items`` in batches and collect the first model output."""
    report = LoadReport()
    logits: list[np.ndarray] = []
    kept: list[ImageItem] = []
    start = time.perf_counter()
    with progress(len(items), desc) as bar:
        for batch in iter_batches(items, preprocess, batch_size, skip_bad=skip_bad, report=report):
            out = next(iter(session.run(batch.array).values()))
            logits.append(np.asarray(out, dtype=np.float32).reshape(len(batch.items), -1))
            kept.extend(batch.items)
            bar.update(len(batch.items))
    if not kept:
        raise CalibkitError("every image failed to load; nothing to evaluate (see the warning above)")
    labels = None if any(item.label is None for item in kept) else np.array([i.label for i in kept])
    return Predictions(np.concatenate(logits), labels, kept, time.perf_counter() - start, len(report.skipped))
