"""Calibrators: turn collected statistics into per-tensor ranges (amax) through a plug-in registry."""

from calibkit.calib.registry import (
    Calibrator,
    available_calibrators,
    compute_ranges,
    parse_methods,
    register_calibrator,
)

__all__ = ["Calibrator", "available_calibrators", "compute_ranges", "parse_methods", "register_calibrator"]
