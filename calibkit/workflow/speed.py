"""What the comparison times: every model side by side in interleaved rounds on one backend, and where
each INT8 model's time goes (the backend's own profile)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Sequence

from calibkit.backends.base import backend_info
from calibkit.compare.results import Comparison
from calibkit.data.preprocess import Preprocess
from calibkit.graph.onnx_model import image_input, model_outline
from calibkit.progress import progress
from calibkit.workflow.calibration import input_shape


def bench_models(models: Sequence[tuple[str, str, Path]], input_shape: Sequence[int],
                 batch_sizes: Sequence[int] = (1, 8, 32), backend: str = "ort-cpu") -> list[dict]:
    """Speed rows for ``(name, precision, path)`` models on one backend, timed side by side in rounds
    (:mod:`calibkit.bench.speed`), with speedups over ``fp32`` and their spread. ONNX Runtime sessions
    share one arena, so each run reuses memory as a deployed session does while holding every model at
    once stays near one model's peak."""
    from calibkit.backends import load
    from calibkit.bench.speed import measure_interleaved, with_ratios

    sessions = [(name, precision, load(path, precision, backend, shared_arena=True)) for name, precision, path in models]
    with progress(len(batch_sizes), "benchmarking (interleaved rounds)", unit="batch size") as bar:
        results = []
        for batch in batch_sizes:
            results.extend(measure_interleaved(sessions, input_shape, [batch]))
            bar.update(1)
    return with_ratios(results)


def usable_batch_sizes(model: Path, requested: Sequence[int]) -> list[int]:
    """``requested``, or the model's own batch size (with a warning) when its batch axis is fixed."""
    fixed = image_input(model_outline(model), model).batch
    if fixed is None or list(requested) == [fixed] or not requested:
        return list(requested)
    warnings.warn(f"{model}: the model's batch size is fixed at {fixed}; timing batch {fixed} only", stacklevel=2)
    return [fixed]


def add_speed(comparison: Comparison, models: Sequence[tuple[str, str, Path]], model: Path, preprocess: Preprocess,
              batch_sizes: Sequence[int], backend: str) -> list[dict]:
    """Time every model side by side, and add the backend's profile of where the time goes."""
    started = time.perf_counter()
    speed = bench_models(models, input_shape(preprocess), usable_batch_sizes(model, batch_sizes), backend)
    comparison.timings["bench_s"] = time.perf_counter() - started
    started = time.perf_counter()
    profiling = backend_info(backend).profiling
    if profiling == "ops":
        comparison.profiles = op_profiles(models, input_shape(preprocess))
    elif profiling == "placement":
        comparison.placement = provider_placement(models, input_shape(preprocess), backend)
    elif profiling == "layers":
        from calibkit.bench.profile import engine_layer_times

        comparison.layer_times = engine_layer_times(models, input_shape(preprocess), backend)
    comparison.timings["profile_s"] = time.perf_counter() - started
    return speed


def op_profiles(models: Sequence[tuple[str, str, Path]], shape: Sequence[int]) -> dict[str, dict]:
    """Where each INT8 model's CPU time goes (:mod:`calibkit.bench.profile`), by candidate name."""
    from calibkit.bench.profile import profile_ops, summarize

    return {name: summarize(profile_ops(path, shape)) for name, precision, path in models if precision == "int8"}


def provider_placement(models: Sequence[tuple[str, str, Path]], shape: Sequence[int], backend: str) -> dict[str, dict]:
    """Per model, the nodes ONNX Runtime left on the CPU on a GPU ``backend`` (:func:`cpu_fallbacks`)."""
    from calibkit.backends.onnxruntime import CUDA_OPTIONS
    from calibkit.bench.profile import cpu_fallbacks

    providers = [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    return {name: cpu_fallbacks(path, shape, providers) for name, _, path in models}
