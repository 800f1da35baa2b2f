"""The contract every task plug-in keeps, checked on a real model's outputs (as
:mod:`calibkit.backends.contract` and :mod:`calibkit.calib.contract` check theirs).

A task's scorers keep running sums: Ray tasks and shards score parts of the images and merge them, so
merging the scorers of two halves must give what one scorer of every image gives. Its drift sums add
over batches and give zero for identical outputs; its results name every metric it declares; its
budget metric ``auto`` (when it has a budget) is accepted. The candidate here is the model's own
outputs with seeded noise: a broken model is not needed to exercise the arithmetic.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from calibkit.backends import load
from calibkit.data.images import ImageItem
from calibkit.data.loader import iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.tasks.base import Task
from calibkit.tasks.registry import available_tasks


def check_task_contract(task: Task, model: Path, items: Sequence[ImageItem], preprocess: Preprocess,
                        batch_size: int = 2, noise: float = 0.05, seed: int = 0) -> None:
    """Assert the contract for ``task`` (set up for ``model``) on ``items``: at least two batches of
    ``batch_size`` real images; the candidate adds ``noise`` times each output's spread."""
    assert task.name in available_tasks(), f"{task.name!r} is not registered"
    keys = task.metric_keys()
    assert len(keys) == len(set(keys)), f"{task.name}: metric keys must be unique: {keys}"
    if task.budget_metrics:
        task.check_budget_metric("auto")
    session = load(model, "fp32", "ort-cpu")
    rng = np.random.default_rng(seed)
    batches = list(iter_batches(items, preprocess, batch_size))
    assert len(batches) >= 2, "give at least two batches of images"
    whole, halves = task.scorer(), [task.scorer(), task.scorer()]
    total = 0.0
    for index, batch in enumerate(batches):
        reference = session.run(batch.array)
        candidate = {name: value + noise * (float(np.std(value)) or 1.0) * rng.standard_normal(value.shape)
                     .astype(value.dtype) for name, value in reference.items()}
        ref_pred, cand_pred = task.decode(reference, batch), task.decode(candidate, batch)
        assert len(ref_pred) == len(batch.items), f"{task.name}: decode gave {len(ref_pred)} predictions"
        whole.add(ref_pred, cand_pred, batch)
        halves[index >= len(batches) // 2].add(ref_pred, cand_pred, batch)
        same = task.drift_of(task.drift_sums(reference, reference))
        assert same == 0, f"{task.name}: drift {same} between identical outputs"
        sums = np.asarray(task.drift_sums(reference, candidate))
        assert np.all(np.isfinite(sums)), f"{task.name}: non-finite drift sums"
        total = total + sums
    assert math.isfinite(task.drift_of(total)) and task.drift_of(total) >= 0, f"{task.name}: drift over batches"
    halves[0].merge(halves[1])
    one, merged = whole.result(), halves[0].result()
    assert set(keys) <= set(one), f"{task.name}: results lack {sorted(set(keys) - set(one))}"
    assert one.keys() == merged.keys(), f"{task.name}: merged results name other metrics"
    for key, value in one.items():
        other = merged[key]
        assert (value is None) == (other is None), f"{task.name}: {key} is {value} in one pass, {other} merged"
        if value is not None and not (math.isnan(value) and math.isnan(other)):
            assert math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-12), f"{task.name}: {key} {value} != {other}"
