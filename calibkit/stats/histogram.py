"""Running min/max and a growing signed histogram that never keeps samples.

The histogram has ``bins`` bins on each side of zero over ``[-upper, upper)``, ``upper`` a power of
two. When a batch exceeds ``upper``, the range doubles (as often as needed) and neighbouring bin pairs
are summed: an exact re-binning, so no count moves to a wrong bin, and memory stays ``2 * bins``
integers per tensor whatever the image count. Calibrators read the |x| histogram (:attr:`hist`), the
two sides folded together; the signs are kept so that the statistics of a clamp of this tensor
(ReLU, Clip) follow without a second pass (:meth:`clamped`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from calibkit.stats import device

try:
    from calibkit.stats import _binning
except ImportError:  # built without a C compiler: the NumPy path below gives the same counts
    _binning = None

DEFAULT_BINS = 8192
_CHUNK = 1 << 16


def _extremes(flat) -> tuple[float, float]:
    """Min and max of a flat array; NaN in either where a value is not finite."""
    if _binning is not None and isinstance(flat, np.ndarray):
        return _binning.extremes(flat)
    return device.extremes(flat)


@dataclass
class TensorStats:
    """Statistics of one tensor over every value seen so far.

    ``zeros`` counts values known to be exactly zero: those of all-zero batches seen before any other
    value, and the negatives a ReLU clamps to zero. They are part of the first |x| bin, which also
    holds every other value below its width.
    """

    name: str
    bins: int = DEFAULT_BINS
    count: int = 0
    nonfinite: int = 0
    min: float = math.inf
    max: float = -math.inf
    upper: float = 0.0
    signed: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    zeros: int = 0
    _zeros_pending: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.bins < 2 or self.bins & (self.bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {self.bins}")
        if self.signed is None:
            self.signed = np.zeros(2 * self.bins, dtype=np.int64)

    @property
    def absmax(self) -> float:
        """Largest |x| seen; 0.0 before any value."""
        return max(-self.min, self.max, 0.0) if self.count else 0.0

    @property
    def hist(self) -> np.ndarray:
        """The |x| histogram: ``bins`` counts over ``[0, upper)`` (both signs folded together).

        Bin ``k`` of the signed histogram's negative side holds ``x`` in ``[-(k+1)w, -kw)``, so a
        negative value lying exactly on a bin edge is counted one bin below its positive twin.
        """
        folded = self.signed[self.bins :] + self.signed[self.bins - 1 :: -1]
        folded[0] += self._zeros_pending
        return folded

    def fraction_above(self, amax: float) -> float:
        """Share of the values whose |x| exceeds ``amax`` (counted by whole bins above it): what a
        range of ``amax`` clips."""
        if not self.count or amax >= self.absmax:
            return 0.0
        first = int(np.searchsorted(self.edges, amax, side="right"))
        return float(self.hist[first:].sum()) / self.count

    @property
    def edges(self) -> np.ndarray:
        """The ``bins + 1`` bin edges of :attr:`hist` on the |x| axis."""
        return np.linspace(0.0, self.upper, self.bins + 1)

    def update(self, values: np.ndarray) -> None:
        """Fold a batch of values (any shape) into the statistics.

        Min and max take one pass over the batch. Both run in the C kernel (``_binning.c``, without
        the GIL) where it was built, else in NumPy, the binning chunk by chunk so the
        scaled values and their bin indices stay in cache; both count identically. A CuPy array is
        binned on its GPU by a kernel with the same arithmetic (:mod:`calibkit.stats.device`), into a
        histogram kept there until :meth:`on_host`. Non-finite values are counted in
        :attr:`nonfinite` and left out.
        """
        on_device = device.is_device_array(values)
        flat = (values.astype("float32", copy=False) if on_device else np.asarray(values, dtype=np.float32)).reshape(-1)
        if flat.size == 0:
            return
        if on_device and not device.is_device_array(self.signed):
            self.signed = device.cupy_module().asarray(self.signed)
        if _binning is not None and not on_device:
            flat = np.ascontiguousarray(flat)
        lo, hi = _extremes(flat)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = flat[np.isfinite(flat)]
            self.nonfinite += flat.size - finite.size
            if finite.size == 0:
                return
            flat = finite
            lo, hi = _extremes(flat)
        self.count += flat.size
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        amax = max(-lo, hi)
        if amax == 0.0 and self.upper == 0.0:
            self._zeros_pending += flat.size
            self.zeros += flat.size
            return
        self._grow_to(amax)
        scale, offset = np.float32(self.bins / self.upper), np.float32(self.bins)
        if on_device:
            device.bin_signed(flat, scale, offset, self.signed)
            return
        if _binning is not None:
            _binning.bin_signed(flat, scale, offset, self.signed, lo, hi)
            return
        buf = np.empty(min(_CHUNK, flat.size), dtype=np.float32)
        idx = np.empty(buf.size, dtype=np.intp)
        width = self.signed.size
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start : start + _CHUNK]
            n = chunk.size
            # x * bins / upper + bins lies in (0, 2 * bins): the cast truncates, i.e. floors.
            np.multiply(chunk, scale, out=buf[:n])
            np.add(buf[:n], offset, out=buf[:n])
            idx[:n] = buf[:n]
            counts = np.bincount(idx[:n], minlength=width)
            if counts.size > width:
                # x < upper, but float32 rounding of the scaled value can reach 2 * bins itself.
                counts[width - 1] += counts[width:].sum()
            self.signed += counts[:width]

    def on_host(self) -> "TensorStats":
        """These statistics with their histogram in host memory (after GPU updates); every other method
        reads it there."""
        self.signed = device.to_host(self.signed)
        return self

    def _grow_to(self, amax: float) -> None:
        """Make ``upper`` the smallest power of two above ``amax``, merging bin pairs as it doubles.

        Powers of two put every tensor's histograms on one dyadic grid, so histograms of different
        image subsets merge exactly (see :meth:`merge`).
        """
        if self.upper == 0.0:
            self.upper = math.ldexp(1.0, math.frexp(amax)[1])
            self.signed[self.bins] += self._zeros_pending
            self._zeros_pending = 0
            return
        while amax >= self.upper:
            self._double()

    def _double(self) -> None:
        quarter = self.bins // 2
        pairs = self.signed.reshape(-1, 2).sum(axis=1)
        self.signed[:] = 0
        self.signed[quarter : quarter + pairs.size] = pairs
        self.upper *= 2.0

    def _bin_of(self, value: float) -> int:
        """Index in :attr:`signed` of the bin holding ``value`` (clamped to the histogram)."""
        return min(max(int(math.floor(value * self.bins / self.upper)) + self.bins, 0), self.signed.size - 1)

    def merge(self, other: "TensorStats") -> "TensorStats":
        """New statistics of both inputs together (same tensor, same bin count): exact on the dyadic grid."""
        if other.bins != self.bins:
            raise ValueError("cannot merge histograms with different bin counts")
        merged = TensorStats(self.name, self.bins, self.count + other.count, self.nonfinite + other.nonfinite,
                             min(self.min, other.min), max(self.max, other.max), self.upper, self.signed.copy(),
                             self.zeros + other.zeros)
        merged._zeros_pending = self._zeros_pending
        if other.upper == 0.0:
            if merged.upper == 0.0:
                merged._zeros_pending += other._zeros_pending
            else:
                merged.signed[merged.bins] += other._zeros_pending
            return merged
        aligned = TensorStats(other.name, other.bins, upper=other.upper, signed=other.signed.copy())
        if merged.upper == 0.0:
            merged.upper = other.upper
            merged.signed[merged.bins] += merged._zeros_pending
            merged._zeros_pending = 0
        while aligned.upper < merged.upper:
            aligned._double()
        while merged.upper < aligned.upper:
            merged._double()
        merged.signed += aligned.signed
        return merged

    def clamped(self, name: str, low: float = -math.inf, high: float = math.inf) -> "TensorStats":
        """Statistics of ``clip(x, low, high)`` (ReLU: ``low = 0``), computed from these alone.

        Every value below ``low`` becomes ``low``, which lies in the bin of ``low``: so the counts of
        all lower bins move into that bin, and likewise above ``high``. The result is the histogram a
        separate pass would build on this tensor's grid, min and max exact; only its ``upper`` may be
        larger than the clamped values need. Values clamped to a bound of 0 are counted in
        :attr:`zeros`. Non-finite values stay counted as non-finite.
        """
        out = TensorStats(name, self.bins, self.count, self.nonfinite, upper=self.upper, signed=self.signed.copy(),
                          zeros=self.zeros if low <= 0.0 <= high else 0)
        if self.count:
            out.min, out.max = (min(max(v, low), high) for v in (self.min, self.max))
        if self.upper == 0.0:
            constant = min(max(0.0, low), high)
            if constant == 0.0:
                out._zeros_pending = self._zeros_pending
            else:
                out._grow_to(abs(constant))
                out.signed[out._bin_of(constant)] += self._zeros_pending
            return out
        for bound, below in ((low, True), (high, False)):
            if not math.isfinite(bound):
                continue
            k = self._bin_of(bound)
            part = slice(None, k) if below else slice(k + 1, None)
            moved = int(out.signed[part].sum())
            out.signed[k] += moved
            out.signed[part] = 0
            if bound == 0.0:
                out.zeros += moved
        return out

    def resampled(self, bins: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """The |x| histogram re-binned to ``bins`` equal bins over ``[0, absmax]`` (TensorRT's layout).

        Counts are spread by linear interpolation of the cumulative distribution, so totals are kept;
        the exact zeros in :attr:`zeros` stay in the first bin instead of being spread over the width of
        the bin that holds them. Returns ``(counts, edges)`` as float64.
        """
        amax = self.absmax
        edges = np.linspace(0.0, amax, bins + 1)
        hist = self.hist
        hist[0] -= self.zeros
        total = float(hist.sum())
        cumulative = np.concatenate([[0.0], np.cumsum(hist, dtype=np.float64)])
        at_edges = np.interp(edges, self.edges, cumulative)
        at_edges[-1] = total
        counts = np.diff(at_edges)
        counts[0] += self.zeros
        return counts, edges

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flat arrays for ``np.savez`` (see :meth:`from_arrays`)."""
        scalars = np.array([self.count, self.nonfinite, self.zeros, self._zeros_pending], dtype=np.int64)
        bounds = np.array([self.min, self.max, self.upper], dtype=np.float64)
        return {f"{prefix}/counts": scalars, f"{prefix}/bounds": bounds, f"{prefix}/signed": self.signed}

    @classmethod
    def from_arrays(cls, name: str, arrays: dict[str, np.ndarray], prefix: str) -> "TensorStats":
        count, nonfinite, zeros, pending = (int(v) for v in arrays[f"{prefix}/counts"])
        lo, hi, upper = (float(v) for v in arrays[f"{prefix}/bounds"])
        signed = np.array(arrays[f"{prefix}/signed"], dtype=np.int64)
        stats = cls(name, signed.size // 2, count, nonfinite, lo, hi, upper, signed, zeros)
        stats._zeros_pending = pending
        return stats
