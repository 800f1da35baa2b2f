"""Running min/max and a growing |x| histogram that never keeps samples.

The histogram has a fixed number of bins over ``[0, upper)``, ``upper`` a power of two. When a batch
exceeds ``upper``, the range doubles (as often as needed) and neighbouring bin pairs are summed: an
exact re-binning, so no count moves to a wrong bin, and memory stays ``bins`` integers per tensor
whatever the image count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BINS = 8192
_CHUNK = 1 << 16


@dataclass
class TensorStats:
    """Statistics of one tensor over every value seen so far."""

    name: str
    bins: int = DEFAULT_BINS
    count: int = 0
    nonfinite: int = 0
    min: float = math.inf
    max: float = -math.inf
    upper: float = 0.0
    hist: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    _zeros_pending: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.bins < 2 or self.bins & (self.bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {self.bins}")
        if self.hist is None:
            self.hist = np.zeros(self.bins, dtype=np.int64)

    @property
    def absmax(self) -> float:
        """Largest |x| seen; 0.0 before any value."""
        return max(-self.min, self.max, 0.0) if self.count else 0.0

    @property
    def edges(self) -> np.ndarray:
        """The ``bins + 1`` bin edges of :attr:`hist` on the |x| axis."""
        return np.linspace(0.0, self.upper, self.bins + 1)

    def update(self, values: np.ndarray) -> None:
        """Fold a batch of values (any shape) into the statistics.

        Works chunk by chunk so min, max, |x| and the bin indices are computed while the chunk is in
        cache; non-finite values are counted in :attr:`nonfinite` and left out.
        """
        flat = np.asarray(values, dtype=np.float32).reshape(-1)
        buf = np.empty(min(_CHUNK, flat.size), dtype=np.float32)
        idx = np.empty(buf.size, dtype=np.intp)
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start : start + _CHUNK]
            lo, hi = float(chunk.min()), float(chunk.max())
            if not (math.isfinite(lo) and math.isfinite(hi)):
                finite = chunk[np.isfinite(chunk)]
                self.nonfinite += chunk.size - finite.size
                if finite.size == 0:
                    continue
                chunk, lo, hi = finite, float(finite.min()), float(finite.max())
            self.count += chunk.size
            self.min, self.max = min(self.min, lo), max(self.max, hi)
            amax = max(-lo, hi)
            if amax == 0.0 and self.upper == 0.0:
                self._zeros_pending += chunk.size
                continue
            self._grow_to(amax)
            n = chunk.size
            np.multiply(chunk, np.float32(self.bins / self.upper), out=buf[:n])
            np.abs(buf[:n], out=buf[:n])
            idx[:n] = buf[:n]
            counts = np.bincount(idx[:n], minlength=self.bins)
            if counts.size > self.bins:
                # |x| < upper, but float32 rounding of |x| * bins / upper can reach ``bins`` itself.
                counts[self.bins - 1] += counts[self.bins :].sum()
            self.hist += counts[: self.bins]

    def _grow_to(self, amax: float) -> None:
        """Make ``upper`` the smallest power of two above ``amax``, merging bin pairs as it doubles.

        Powers of two put every tensor's histograms on one dyadic grid, so histograms of different
        image subsets merge exactly (see :meth:`merge`).
        """
        if self.upper == 0.0:
            self.upper = math.ldexp(1.0, math.frexp(amax)[1])
            self.hist[0] += self._zeros_pending
            self._zeros_pending = 0
            return
        while amax >= self.upper:
            self._double()

    def _double(self) -> None:
        half = self.hist.reshape(-1, 2).sum(axis=1)
        self.hist[: half.size] = half
        self.hist[half.size :] = 0
        self.upper *= 2.0

    def merge(self, other: "TensorStats") -> "TensorStats":
        """New statistics of both inputs together (same tensor, same bin count): exact on the dyadic grid."""
        if other.bins != self.bins:
            raise ValueError("cannot merge histograms with different bin counts")
        merged = TensorStats(self.name, self.bins, self.count + other.count, self.nonfinite + other.nonfinite,
                             min(self.min, other.min), max(self.max, other.max), self.upper, self.hist.copy())
        merged._zeros_pending = self._zeros_pending
        if other.upper == 0.0:
            if merged.upper == 0.0:
                merged._zeros_pending += other._zeros_pending
            else:
                merged.hist[0] += other._zeros_pending
            return merged
        aligned = TensorStats(other.name, other.bins, upper=other.upper, hist=other.hist.copy())
        if merged.upper == 0.0:
            merged.upper = other.upper
            merged.hist[0] += merged._zeros_pending
            merged._zeros_pending = 0
        while aligned.upper < merged.upper:
            aligned._double()
        while merged.upper < aligned.upper:
            merged._double()
        merged.hist += aligned.hist
        return merged

    def resampled(self, bins: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """The histogram re-binned to ``bins`` equal bins over ``[0, absmax]`` (TensorRT's layout).

        Counts are spread by linear interpolation of the cumulative distribution, so totals are kept.
        Returns ``(counts, edges)`` as float64.
        """
        amax = self.absmax
        edges = np.linspace(0.0, amax, bins + 1)
        total = float(self.hist.sum())
        cumulative = np.concatenate([[0.0], np.cumsum(self.hist, dtype=np.float64)])
        at_edges = np.interp(edges, self.edges, cumulative)
        at_edges[-1] = total
        return np.diff(at_edges), edges

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flat arrays for ``np.savez`` (see :meth:`from_arrays`)."""
        scalars = np.array([self.count, self.nonfinite, self._zeros_pending], dtype=np.int64)
        bounds = np.array([self.min, self.max, self.upper], dtype=np.float64)
        return {f"{prefix}/counts": scalars, f"{prefix}/bounds": bounds, f"{prefix}/hist": self.hist}

    @classmethod
    def from_arrays(cls, name: str, arrays: dict[str, np.ndarray], prefix: str) -> "TensorStats":
        count, nonfinite, zeros = (int(v) for v in arrays[f"{prefix}/counts"])
        lo, hi, upper = (float(v) for v in arrays[f"{prefix}/bounds"])
        hist = np.array(arrays[f"{prefix}/hist"], dtype=np.int64)
        stats = cls(name, hist.size, count, nonfinite, lo, hi, upper, hist)
        stats._zeros_pending = zeros
        return stats
