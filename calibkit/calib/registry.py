"""A registry of calibrators, each a plain function ``(TensorStats, **params) -> amax``.

Add one without touching calibkit::

    from calibkit.calib import register_calibrator

    @register_calibrator("p99", trt_algorithm="EntropyCalibration2")
    def p99(stats, **_):
        ...

or expose the function under the ``calibkit.calibrators`` entry-point group of your package.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from calibkit.errors import CalibkitError
from calibkit.plugins import load_entry_points
from calibkit.stats.histogram import TensorStats

CalibrateFn = Callable[..., float]
FALLBACK_AMAX = 1.0
# Clipping more than this share of a tensor's calibration values is worth a warning: where a calibrator's
# objective and the data disagree (entropy2 on the histogram spikes of a uniform page background).
CLIPPED_WARNING = 0.01
ENTRY_POINT_GROUP = "calibkit.calibrators"


@dataclass(frozen=True)
class CalibratorInfo:
    """A registered calibrator: its function, the TensorRT cache header it writes, its positional param."""

    name: str
    fn: CalibrateFn
    trt_algorithm: str
    arg_name: str | None = None
    arg_type: type = float
    defaults: Mapping[str, object] = field(default_factory=dict)
    arg_range: tuple[float, float] | None = None
    cost: float = 1.0


@dataclass(frozen=True)
class Calibrator:
    """A calibrator bound to its parameters, e.g. ``percentile:99.99``."""

    info: CalibratorInfo
    params: Mapping[str, object]

    @property
    def label(self) -> str:
        """Stable short name for files and tables: ``percentile-99.99``."""
        if self.info.arg_name is None:
            return self.info.name
        return f"{self.info.name}-{self.params[self.info.arg_name]}"

    def amax(self, stats: TensorStats) -> float:
        return float(self.info.fn(stats, **self.params))


_REGISTRY: dict[str, CalibratorInfo] = {}


def register_calibrator(
    name: str,
    *,
    trt_algorithm: str = "EntropyCalibration2",
    arg_name: str | None = None,
    arg_type: type = float,
    defaults: Mapping[str, object] | None = None,
    arg_range: tuple[float, float] | None = None,
    cost: float = 1.0,
) -> Callable[[CalibrateFn], CalibrateFn]:
    """Decorator: register ``fn(stats, **params) -> amax`` as calibrator ``name``.

    ``arg_name`` names the parameter set by ``name:value`` on the command line. ``trt_algorithm``
    is the algorithm written into the TensorRT cache header (a TensorRT 10 calibrator of that kind
    replays the cache). ``arg_range`` (inclusive) is checked when the method is parsed, before any
    image is read. ``cost`` is the work of one tensor's range in histogram scans (a percentile is one):
    the sufficiency check budgets by it, so its choice of calibrators never depends on the machine's load.
    """

    def decorate(fn: CalibrateFn) -> CalibrateFn:
        _REGISTRY[name] = CalibratorInfo(name, fn, trt_algorithm, arg_name, arg_type, dict(defaults or {}), arg_range,
                                         cost)
        return fn

    return decorate


def _load_plugins() -> None:
    from calibkit.calib import entropy, minmax, mse, percentile  # noqa: F401  (register the built-ins)

    load_entry_points(ENTRY_POINT_GROUP, _add_plugin)


def _add_plugin(name: str, fn: CalibrateFn) -> None:
    if name not in _REGISTRY:
        register_calibrator(name)(fn)


def available_calibrators() -> list[str]:
    """Names of every registered calibrator, built-in and plug-in."""
    _load_plugins()
    return sorted(_REGISTRY)


def get_calibrator(spec: str) -> Calibrator:
    """Parse ``name`` or ``name:value`` (``percentile:99.99``, or the label form ``percentile-99.99`` used
    in file names) into a bound :class:`Calibrator`."""
    _load_plugins()
    name, _, value = spec.strip().partition(":")
    label_name, _, label_value = name.rpartition("-")
    if not value and name not in _REGISTRY and label_name in _REGISTRY and _REGISTRY[label_name].arg_name:
        name, value = label_name, label_value
    if name not in _REGISTRY:
        raise CalibkitError(f"unknown calibration method {name!r}; available: {', '.join(available_calibrators())}")
    info = _REGISTRY[name]
    params = dict(info.defaults)
    if value:
        if info.arg_name is None:
            raise CalibkitError(f"method {name!r} takes no parameter, got {spec!r}")
        try:
            params[info.arg_name] = info.arg_type(value)
        except ValueError as exc:
            raise CalibkitError(f"method {spec!r}: {value!r} is not a valid {info.arg_name}") from exc
        low, high = info.arg_range or (-math.inf, math.inf)
        if not low <= params[info.arg_name] <= high:
            raise CalibkitError(f"method {spec!r}: {info.arg_name} must be in [{low:g}, {high:g}]")
    return Calibrator(info, params)


def parse_methods(text: str) -> list[Calibrator]:
    """Parse a comma-separated method list; ``all`` stands for every registered calibrator at its defaults
    (``all,percentile:99.9`` adds one more setting to them)."""
    specs = [part.strip() for part in text.split(",") if part.strip()]
    if not specs:
        raise CalibkitError(f"no calibration method given; available: {', '.join(available_calibrators())}")
    specs = [name for spec in specs for name in (available_calibrators() if spec == "all" else [spec])]
    calibrators = [get_calibrator(spec) for spec in specs]
    return list({c.label: c for c in calibrators}.values())


@dataclass(frozen=True)
class TensorRange:
    """The calibrated symmetric range of one tensor, with the observed extremes for reference and the
    share of calibration values it clips."""

    amax: float
    min: float
    max: float
    fallback: str | None = None
    clipped: float = 0.0

    @property
    def scale(self) -> float:
        """INT8 scale as TensorRT uses it: amax / 127."""
        return self.amax / 127.0


def compute_ranges(tensors: Mapping[str, TensorStats], calibrator: Calibrator) -> dict[str, TensorRange]:
    """Apply ``calibrator`` to every tensor, with documented fallbacks instead of NaN, inf or zero.

    * a tensor never reached (no finite value seen): amax = 1.0
    * a tensor whose values are all zero: amax = 1.0 (any scale represents 0 exactly)
    * a constant tensor (one distinct |value|) or a calibrator result that is not a positive finite
      number: amax = the observed absolute maximum
    One warning lists how many tensors fell back. Each range records the share of calibration values it
    clips by more than one INT8 step (see :func:`warn_clipping`). Tensors are calibrated on a thread per core (NumPy
    releases the GIL in its loops), so a calibrator must be a pure function of its statistics.
    """
    ranges: dict[str, TensorRange] = {}
    fell_back: list[str] = []
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda stats: _amax_with_fallback(stats, calibrator), tensors.values()))
    for (name, stats), (amax, reason) in zip(tensors.items(), results):
        if reason:
            fell_back.append(f"{name} ({reason})")
        lo, hi = (stats.min, stats.max) if stats.count else (0.0, 0.0)
        ranges[name] = TensorRange(amax, lo, hi, reason, stats.fraction_above(amax * (1 + 1 / 127)))
    if fell_back:
        warnings.warn(
            f"{calibrator.label}: {len(fell_back)} tensor(s) used a fallback range: {', '.join(fell_back[:5])}"
            + (" ..." if len(fell_back) > 5 else ""),
            stacklevel=2,
        )
    return ranges


def with_full_range(ranges: Mapping[str, TensorRange], names: Iterable[str]) -> dict[str, TensorRange]:
    """``ranges`` with every tensor of ``names`` at its observed absolute maximum, whatever the calibrator.
    For the model's image inputs: preprocessing bounds them, so the full range costs at most 1/127 of it
    per INT8 step, while a clipped one saturates whole regions of an image (white paper, sky: entropy2
    clips 74 % of a document page's pixels)."""
    full = dict(ranges)
    for name in names:
        r = full.get(name)
        if r is not None and max(abs(r.min), abs(r.max)) > 0:
            full[name] = TensorRange(max(abs(r.min), abs(r.max)), r.min, r.max, r.fallback, 0.0)
    return full


def warn_clipping(label: str, ranges: Mapping[str, TensorRange], names: Iterable[str]) -> None:
    """One warning naming the tensors among ``names`` whose range clips more than
    :data:`CLIPPED_WARNING` of their calibration values by more than one INT8 step."""
    clipping = sorted(((ranges[n].clipped, n) for n in names if n in ranges and ranges[n].clipped > CLIPPED_WARNING),
                      reverse=True)
    if clipping:
        warnings.warn(
            f"{label}: {len(clipping)} quantized tensor(s) clip more than {CLIPPED_WARNING:.0%} of their calibration "
            "values: " + ", ".join(f"{name} ({share:.1%})" for share, name in clipping[:3])
            + (" ..." if len(clipping) > 3 else ""),
            stacklevel=2,
        )


def _amax_with_fallback(stats: TensorStats, calibrator: Calibrator) -> tuple[float, str | None]:
    if stats.count == 0:
        return FALLBACK_AMAX, "never reached"
    absmax = stats.absmax
    if absmax == 0.0:
        return FALLBACK_AMAX, "all zero"
    if stats.min == stats.max or (-stats.min == stats.max and np.count_nonzero(stats.signed) <= 2):
        return absmax, "constant"
    amax = calibrator.amax(stats)
    if not math.isfinite(amax) or amax <= 0.0:
        return absmax, "calibrator gave no positive range"
    return min(amax, absmax), None
