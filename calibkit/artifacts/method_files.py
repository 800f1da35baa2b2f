"""Every file of one calibrator in a run folder, and writing them for several calibrators at once.

Quantizing and verifying the Q/DQ models is pure-Python graph work that keeps one core busy per
calibrator; the files of different calibrators do not depend on each other, so they are written in
worker processes (forked, so the normalised graph and the ranges are not sent again) while the caller
does its own work, e.g. the sufficiency check, on the remaining core.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

from calibkit.artifacts.qdq import export_qdq
from calibkit.artifacts.ranges_json import write_ranges
from calibkit.artifacts.trt_cache import write_cache
from calibkit.calib.registry import Calibrator, TensorRange
from calibkit.calib.weights import RefinedWeights

T = TypeVar("T")


def qdq_paths(out: Path, label: str) -> dict[str, Path]:
    """Where a run keeps the Q/DQ models of calibrator ``label``, by target."""
    return {"tensorrt": out / f"{label}.qdq.onnx", "onnxruntime": out / f"{label}.ort.onnx"}


def export_targets(model: Path, out: Path, label: str, ranges: Mapping[str, TensorRange],
                   exclude: Sequence[str] = (), weights: RefinedWeights | None = None) -> dict[str, Path]:
    """Both Q/DQ targets of one calibrator, written into ``out``, with the run's ``weights``."""
    paths = qdq_paths(out, label)
    for target, path in paths.items():
        export_qdq(model, ranges, path, exclude=exclude, target=target, weights=weights)
    return paths


@dataclass(frozen=True)
class MethodFiles:
    """What one calibrator of a run writes: ``<label>.cache``, ``<label>.json`` and both Q/DQ models."""

    model: Path
    out: Path
    calibrator: Calibrator
    ranges: Mapping[str, TensorRange]
    provenance: Mapping
    trt_version: int
    exclude: Sequence[str] = ()
    weights: RefinedWeights | None = None

    def write(self) -> str:
        label = self.calibrator.label
        scales = {name: r.scale for name, r in self.ranges.items()}
        write_cache(self.out / f"{label}.cache", scales, self.calibrator.info.trt_algorithm, self.trt_version)
        write_ranges(self.out / f"{label}.json", self.ranges, self.calibrator, self.provenance)
        export_targets(self.model, self.out, label, self.ranges, self.exclude, self.weights)
        return label


class _Inline(Executor):
    """Runs each job at submission: the fallback where forking is not available."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future


def write_all(jobs: Sequence[MethodFiles], meanwhile: Callable[[], T], done: Callable[[str], None]) -> T:
    """Write every job's files in worker processes, run ``meanwhile()`` here in the meantime, then wait
    for the files (``done(label)`` as each finishes; the first failure is raised). Returns ``meanwhile()``."""
    workers = min(len(jobs), os.cpu_count() or 1)
    forking = sys.platform == "linux" and workers > 0
    pool: Executor = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) if forking
                      else _Inline())
    with pool:
        futures = [pool.submit(job.write) for job in jobs]
        result = meanwhile()
        for future in futures:
            done(future.result())
    return result
