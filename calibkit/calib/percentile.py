"""Percentile: amax is the given percentile of |x| (clips the rarest outliers)."""

from __future__ import annotations

import numpy as np

from calibkit.calib.registry import register_calibrator
from calibkit.errors import CalibkitError
from calibkit.stats.histogram import TensorStats


# Below the median a "percentile" range would clip most values: a typo, not a calibration.
PERCENTILE_RANGE = (50.0, 100.0)


@register_calibrator("percentile", arg_name="percentile", defaults={"percentile": 99.99}, arg_range=PERCENTILE_RANGE)
def percentile_amax(stats: TensorStats, percentile: float = 99.99) -> float:
    """|x| value below which ``percentile`` % of the values lie, interpolated inside its bin."""
    low, high = PERCENTILE_RANGE
    if not low <= percentile <= high:
        raise CalibkitError(f"percentile must be in [{low:g}, {high:g}], got {percentile}")
    cumulative = np.concatenate([[0.0], np.cumsum(stats.hist, dtype=np.float64)])
    target = cumulative[-1] * percentile / 100.0
    k = int(np.searchsorted(cumulative, target, side="left"))
    if k == 0:
        return 0.0
    edges = stats.edges
    fraction = (target - cumulative[k - 1]) / (cumulative[k] - cumulative[k - 1])
    return float(edges[k - 1] + fraction * (edges[k] - edges[k - 1]))
