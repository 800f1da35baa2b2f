"""The plain samplers: ``all``, seeded ``random`` and class-balanced ``stratified``."""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Sequence

import numpy as np

from calibkit.data.images import ImageItem
from calibkit.samplers.registry import register_sampler


@register_sampler("all", whole_pool=True)
def all_images(items: Sequence[ImageItem], n: int, seed: int) -> list[ImageItem]:
    """Every item, in pool order: ``--sampler all`` calibrates on the whole folder whatever ``--samples``."""
    return list(items)


@register_sampler("random")
def random_sample(items: Sequence[ImageItem], n: int, seed: int) -> list[ImageItem]:
    """``n`` distinct items drawn uniformly with NumPy's PCG64 seeded by ``seed``."""
    picks = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in np.sort(picks)]


@register_sampler("stratified")
def stratified_sample(items: Sequence[ImageItem], n: int, seed: int) -> list[ImageItem]:
    """Equal share per class (class sizes permitting), remainder to randomly ordered classes.

    Without labels it falls back to ``random`` with a warning.
    """
    if any(item.label is None for item in items):
        warnings.warn("stratified sampling needs labels; falling back to random", stacklevel=2)
        return random_sample(items, n, seed)
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_class[item.label].append(index)
    queues = {label: list(rng.permutation(indices)) for label, indices in sorted(by_class.items())}
    labels = list(rng.permutation(sorted(queues)))
    chosen: list[int] = []
    while len(chosen) < n:
        for label in labels:
            if queues[label] and len(chosen) < n:
                chosen.append(int(queues[label].pop()))
        labels = [label for label in labels if queues[label]]
    return [items[i] for i in sorted(chosen)]
