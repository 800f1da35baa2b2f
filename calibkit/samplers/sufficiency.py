"""Were enough calibration images used? How far each calibrator's ranges move as the subset grows.

Statistics are collected per shard of images in the one calibration pass. For each subset size, shards
are drawn with replacement (a seeded bootstrap), merged exactly, calibrated, and compared with the
ranges of the whole set: the mean over tensors of |amax_subset / amax_all - 1|, in percent (a mean,
since bounded activations such as ReLU6 outputs never move and would pin a median at zero). A curve
that flattens near zero well before the full size says the set was large enough.

With a cost limit, calibrators are taken cheapest first while their cost fits it: each registry entry
declares its work per tensor in histogram scans (a percentile is one), times the number of draws. The
others are listed as left out. The choice depends on the calibrators and the shard count alone, never on
the machine's load, so a run's summary is the same bytes on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from calibkit.calib.registry import Calibrator, TensorRange, compute_ranges
from calibkit.progress import progress
from calibkit.stats.histogram import TensorStats
from calibkit.stats.collect import merge_shards

DEFAULT_SIZES = (50, 100, 250, 500, 1000)


def _quiet_amax(tensors: dict[str, TensorStats], calibrator: Calibrator) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([r.amax for r in compute_ranges(tensors, calibrator).values()])


@dataclass(frozen=True)
class Reference:
    """A calibrator's ranges on the whole set (the merge of every shard): what each subset is compared with."""

    amax: np.ndarray

    @classmethod
    def of(cls, ranges: Mapping[str, TensorRange]) -> "Reference":
        return cls(np.array([r.amax for r in ranges.values()]))


def sufficiency(shards: Sequence[dict[str, TensorStats]], shard_images: Sequence[int],
                calibrators: Sequence[Calibrator], sizes: Sequence[int] = DEFAULT_SIZES,
                bootstrap: int = 5, seed: int = 0, max_cost: float | None = None,
                references: Mapping[str, Reference] | None = None) -> dict:
    """Per calibrator, rows ``{images, mean_change_pct, spread_pct, p90_change_pct}`` by subset size.

    ``shard_images`` gives the image count of each shard; sizes larger than the whole set are dropped
    and the whole set's size is always included. ``references`` (by calibrator label) are the whole
    set's ranges where the caller has already computed them; the others are computed here. ``max_cost``
    bounds the histogram scans per tensor the check spends over every calibrator and draw.
    """
    rng = np.random.default_rng(seed)
    total = int(sum(shard_images))
    per_shard = max(1, round(total / len(shards)))
    counts = sorted({min(len(shards), max(1, round(s / per_shard))) for s in sizes if s <= total} | {len(shards)})
    result: dict = {"shard_images": per_shard, "bootstrap": bootstrap, "seed": seed, "methods": {}, "left_out": {}}
    known = dict(references or {})
    missing = [c for c in calibrators if c.label not in known]
    if missing:
        full = merge_shards(shards)
        for calibrator in missing:
            known[calibrator.label] = Reference(_quiet_amax(full, calibrator))
    reference = {c.label: known[c.label].amax for c in calibrators}
    cost = {c.label: c.info.cost * len(counts) * bootstrap for c in calibrators}
    spent = 0.0
    chosen = []
    for calibrator in sorted(calibrators, key=lambda c: (cost[c.label], c.label)):
        if max_cost is not None and spent + cost[calibrator.label] > max_cost:
            result["left_out"][calibrator.label] = (f"{cost[calibrator.label]:g} histogram scans per tensor, over "
                                                    f"the check's {max_cost - spent:g} left")
            continue
        spent += cost[calibrator.label]
        chosen.append(calibrator)
    calibrators = [c for c in calibrators if c in chosen]
    draws = {k: [rng.integers(0, len(shards), size=k) for _ in range(bootstrap)] for k in counts}
    merged = {(k, b): merge_shards([shards[i] for i in pick]) for k, picks in draws.items()
              for b, pick in enumerate(picks)}
    bar = progress(len(calibrators) * len(counts) * bootstrap, "sufficiency (bootstrap)", unit="draw")
    for calibrator in calibrators:
        rows = []
        for k in counts:
            means, p90s = [], []
            for b in range(bootstrap):
                change = np.abs(_quiet_amax(merged[(k, b)], calibrator) / reference[calibrator.label] - 1) * 100
                means.append(float(np.mean(change)))
                p90s.append(float(np.percentile(change, 90)))
                bar.update(1)
            rows.append({"images": int(sum(shard_images[:k])) if k == len(shards) else k * per_shard,
                         "mean_change_pct": float(np.mean(means)), "spread_pct": float(np.std(means)),
                         "p90_change_pct": float(np.mean(p90s))})
        result["methods"][calibrator.label] = rows
    bar.close()
    return result
