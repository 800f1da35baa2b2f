"""Samplers choose the calibration subset from an image pool, through a plug-in registry."""

from calibkit.samplers.registry import available_samplers, register_sampler, sample

__all__ = ["available_samplers", "register_sampler", "sample"]
