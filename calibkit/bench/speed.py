"""Latency percentiles and throughput of a session at several batch sizes, after warm-up."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from calibkit.backends.base import Session


@dataclass(frozen=True)
class SpeedResult:
    """One (candidate, backend, batch size) measurement; latencies in milliseconds per batch."""

    candidate: str
    precision: str
    backend: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)


def measure(
    session: Session,
    input_shape: Sequence[int],
    candidate: str,
    precision: str,
    batch_sizes: Sequence[int] = (1, 8, 32),
    warmup: int = 3,
    min_runs: int = 10,
    min_seconds: float = 1.0,
    seed: int = 0,
) -> list[SpeedResult]:
    """Time ``session.run`` on random inputs of ``input_shape`` (without the batch axis).

    Each batch size runs ``warmup`` untimed calls, then at least ``min_runs`` timed calls and at least
    ``min_seconds`` of them.
    """
    rng = np.random.default_rng(seed)
    results = []
    for batch in batch_sizes:
        data = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        for _ in range(warmup):
            session.run(data)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - started < min_seconds:
            tick = time.perf_counter()
            session.run(data)
            times.append(time.perf_counter() - tick)
        ms = np.array(times) * 1000
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        results.append(
            SpeedResult(candidate, precision, session.backend, batch, float(p50), float(p90), float(p99),
                        float(batch * len(ms) / (ms.sum() / 1000)), len(ms))
        )
    return results


def with_ratios(results: Sequence[SpeedResult], baseline: str = "fp32") -> list[dict]:
    """Rows with ``speedup`` = baseline p50 / p50 for the same backend and batch size."""
    base = {(r.backend, r.batch): r.p50_ms for r in results if r.precision == baseline}
    rows = []
    for r in results:
        ref = base.get((r.backend, r.batch))
        rows.append({**r.to_dict(), "speedup": ref / r.p50_ms if ref else None})
    return rows
