"""Latency of several sessions measured side by side: round-robin rounds, medians, and their spread.

On a shared machine the load changes while a benchmark runs, so timing one model after another turns
that drift into false ratios (two identical INT8 models once came out at 21 and 57 ms). Here every
session runs on the same input in each round, in an order that rotates by one each round; a speedup
is the median over rounds of the per-round ratio, reported with its range, and a setting whose rounds
disagree by more than :data:`NOISY_SPREAD` is flagged noisy rather than printed as fact.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from calibkit.backends.base import Session

# A ratio whose highest round exceeds its lowest by more than this factor is called noisy.
NOISY_SPREAD = 1.25

# A ratio is noisy too where the median round ratio and the ratio of the p50 columns beside it differ by
# more than this factor (the load changed between rounds): the two would tell different stories.
P50_DISAGREEMENT = 1.10


@dataclass(frozen=True)
class SpeedResult:
    """One (candidate, backend, batch size) measurement; latencies in milliseconds per batch.
    ``round_ms`` holds the median latency of each round, in round order."""

    candidate: str
    precision: str
    backend: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float
    runs: int
    round_ms: tuple[float, ...] = field(default=())

    def to_dict(self) -> dict:
        return asdict(self)


def measure_interleaved(
    sessions: Sequence[tuple[str, str, Session]],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 8, 32),
    rounds: int = 5,
    runs: int = 3,
    warmup: int = 2,
    seed: int = 0,
) -> list[SpeedResult]:
    """Time ``(name, precision, session)`` triples on one random input per batch size: ``warmup``
    untimed calls each, then ``rounds`` rounds of ``runs`` timed calls per session, the session order
    rotating each round. Each call returns only once its results exist (on a GPU: synchronised)."""
    rng = np.random.default_rng(seed)
    results = []
    for batch in batch_sizes:
        data = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        calls_of = [_timed_call(session, data) for _, _, session in sessions]
        for call in calls_of:
            for _ in range(warmup):
                call()
        times: list[list[list[float]]] = [[] for _ in sessions]
        for round_index in range(rounds):
            order = list(range(len(sessions)))
            shift = round_index % len(order)
            for index in order[shift:] + order[:shift]:
                calls = []
                for _ in range(runs):
                    tick = time.perf_counter()
                    measured = calls_of[index]()
                    elapsed = (time.perf_counter() - tick) * 1000
                    calls.append(measured if isinstance(measured, float) else elapsed)
                times[index].append(calls)
        for (name, precision, session), per_round in zip(sessions, times):
            ms = np.concatenate(per_round)
            p50, p90, p99 = np.percentile(ms, [50, 90, 99])
            results.append(SpeedResult(name, precision, session.backend, batch, float(p50), float(p90), float(p99),
                                       float(batch * len(ms) / (ms.sum() / 1000)), len(ms),
                                       tuple(float(np.median(r)) for r in per_round)))
    return results


def _timed_call(session: Session, data: np.ndarray):
    """What one timed call runs: the session's own timer where it has one (a GPU session keeps the input
    and outputs in device memory and returns once the GPU is done; a timer that returns a float has
    measured the call itself, in ms, with CUDA events), else a plain run."""
    timer = getattr(session, "timer", None)
    return timer(data) if timer is not None else (lambda: session.run(data))


def with_ratios(results: Sequence[SpeedResult], baseline: str = "fp32") -> list[dict]:
    """Rows with ``speedup`` = median over rounds of (baseline round latency / round latency) for the same
    backend and batch size, its lowest and highest round (``speedup_low``, ``speedup_high``) and
    ``noisy`` when they differ by more than :data:`NOISY_SPREAD` or the ratio of the p50s disagrees
    (:data:`P50_DISAGREEMENT`); for the baseline itself, when its own rounds differ. Without rounds, the
    p50 ratio."""
    base = {(r.backend, r.batch): r for r in results if r.precision == baseline}
    rows = []
    for r in results:
        ref = base.get((r.backend, r.batch))
        row = {**r.to_dict(), "speedup": None, "speedup_low": None, "speedup_high": None, "noisy": False}
        if r is ref and r.round_ms:
            row.update(speedup=1.0, noisy=bool(max(r.round_ms) > NOISY_SPREAD * min(r.round_ms)))
        elif ref is not None and ref.round_ms and len(ref.round_ms) == len(r.round_ms):
            ratios = np.array(ref.round_ms) / np.array(r.round_ms)
            low, high, speedup = float(ratios.min()), float(ratios.max()), float(np.median(ratios))
            p50_ratio = ref.p50_ms / r.p50_ms
            disagree = max(speedup, p50_ratio) > P50_DISAGREEMENT * min(speedup, p50_ratio)
            row.update(speedup=speedup, speedup_low=low, speedup_high=high,
                       noisy=bool(high > NOISY_SPREAD * low or disagree))
        elif ref is not None:
            row["speedup"] = ref.p50_ms / r.p50_ms
        rows.append(row)
    return rows
