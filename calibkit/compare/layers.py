"""Per-layer drift between a reference and a candidate model, accumulated streaming over batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class LayerDrift:
    """Running sums for one tensor; read the metrics from the properties."""

    name: str
    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    cand_energy: float = 0.0
    max_abs_error: float = 0.0
    ref_absmax: float = 0.0
    count: int = 0

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Fold one batch in; products run in float32 BLAS per batch and add up in float64."""
        ref = np.asarray(reference, dtype=np.float32).reshape(-1)
        cand = np.asarray(candidate, dtype=np.float32).reshape(-1)
        diff = cand - ref
        self.signal += float(np.dot(ref, ref))
        self.noise += float(np.dot(diff, diff))
        self.dot += float(np.dot(ref, cand))
        self.cand_energy += float(np.dot(cand, cand))
        self.max_abs_error = max(self.max_abs_error, float(np.abs(diff).max(initial=0.0)))
        self.ref_absmax = max(self.ref_absmax, float(np.abs(ref).max(initial=0.0)))
        self.count += ref.size

    @property
    def sqnr_db(self) -> float:
        """Signal-to-quantization-noise ratio; inf when the tensors are identical."""
        if self.noise == 0:
            return math.inf
        if self.signal == 0:
            return -math.inf
        return 10 * math.log10(self.signal / self.noise)

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.signal * self.cand_energy)
        return self.dot / denom if denom else 1.0

    @property
    def max_rel_error(self) -> float:
        """Largest absolute error relative to the tensor's reference range."""
        return self.max_abs_error / self.ref_absmax if self.ref_absmax else 0.0

    def to_dict(self) -> dict:
        return {
            "tensor": self.name,
            "sqnr_db": self.sqnr_db,
            "cosine": self.cosine,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
        }
