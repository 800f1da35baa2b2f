"""How well a chosen subset represents its pool: embedding coverage and class balance."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from calibkit.data.images import ImageItem
from calibkit.samplers.embedding import squared_distances


def nearest_chosen_distance(embeddings: np.ndarray, chosen: np.ndarray) -> float:
    """Mean distance from every pool row to its nearest chosen row: lower means better coverage."""
    nearest = squared_distances(embeddings, embeddings[chosen]).min(axis=1)
    return float(np.sqrt(np.maximum(nearest, 0)).mean())


def coverage_report(pool: Sequence[ImageItem], chosen: Sequence[ImageItem], embeddings: np.ndarray) -> dict:
    """Coverage distance, classes present, and the spread of per-class counts (when labelled)."""
    index = {item.path: i for i, item in enumerate(pool)}
    rows = np.array([index[item.path] for item in chosen])
    report: dict = {
        "pool": len(pool),
        "chosen": len(chosen),
        "mean_nearest_distance": nearest_chosen_distance(embeddings, rows),
    }
    if all(item.label is not None for item in pool):
        per_class = Counter(item.label for item in chosen)
        classes = {item.label for item in pool}
        report["classes_in_pool"] = len(classes)
        report["classes_covered"] = len(per_class)
        report["max_per_class"] = max(per_class.values())
    return report
