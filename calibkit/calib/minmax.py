"""MinMax: amax is the largest |x| seen (TensorRT's MinMaxCalibration)."""

from __future__ import annotations

from calibkit.calib.registry import register_calibrator
from calibkit.stats.histogram import TensorStats


@register_calibrator("minmax", trt_algorithm="MinMaxCalibration", cost=0)
def minmax_amax(stats: TensorStats) -> float:
    """The exact absolute maximum, tracked outside the histogram."""
    return stats.absmax
