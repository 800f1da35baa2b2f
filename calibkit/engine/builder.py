"""Engines built by NVIDIA's TensorRT-RTX compiler, ahead of time for a chosen GPU architecture.

TensorRT-RTX (``pip install 'calibkit[trt-rtx]'``, module ``tensorrt_rtx_bindings``) parses the same ONNX
as TensorRT, strongly typed only (precisions come from the model: Q/DQ pairs for INT8, FP16 casts for
FP16), and builds on a machine without a GPU for the compute capability it is told. Builds run in a child
process (``python -m calibkit.engine.builder JOBS RESULTS``): the 220 MB library and the builder's memory
never land in calibkit's own process, and a crash of the builder is a failed build, not a lost run.
What comes back is structure (layers, precisions, sizes), never speed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

MODULE = "tensorrt_rtx_bindings"
INSTALL_HINT = "pip install 'calibkit[trt-rtx]' (TensorRT-RTX, wheels for Python 3.11 and 3.12)"
# Compute capabilities TensorRT-RTX 1.7 builds for, by the names calibkit takes (--trt-target) and the
# GPUs that have them.
TARGETS = {
    "sm75": ("7.5", "Turing: RTX 20xx, T4"),
    "sm80": ("8.0", "Ampere data centre: A100, A30"),
    "sm86": ("8.6", "Ampere: RTX 30xx, A10, A40, RTX A-series"),
    "sm89": ("8.9", "Ada: RTX 40xx, L4, L40S, RTX 6000 Ada"),
    "sm120": ("12.0", "Blackwell: RTX 50xx, RTX PRO 6000 Blackwell"),
    "sm121": ("12.1", "Blackwell: DGX Spark (GB10)"),
}
DEFAULT_TARGET = "sm89"
# The builder's severities at which a message is an error (kINTERNAL_ERROR, kERROR).
ERROR_SEVERITIES = (0, 1)


def available() -> bool:
    """True when TensorRT-RTX's Python bindings can be imported here."""
    return importlib.util.find_spec(MODULE) is not None


def version() -> str | None:
    """TensorRT-RTX's version without importing the 220 MB library (from the installed package metadata)."""
    from importlib import metadata

    for dist in ("tensorrt-rtx-cu13-bindings", "tensorrt-rtx-cu12-bindings", "tensorrt-rtx"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def target_for(capability: str) -> str | None:
    """The target name (``sm89``) of a compute capability (``8.9``), where TensorRT-RTX builds for it."""
    return next((name for name, (cc, _) in TARGETS.items() if cc == capability), None)


@dataclass(frozen=True)
class BuildJob:
    """One model to build: where it is, its input shape, and where to keep the engine (or not)."""

    model: str
    shape: tuple[int, ...]
    target: str
    engine_path: str | None = None


@dataclass
class BuildResult:
    """What the builder said of one model: whether it built, its errors verbatim, the layer log."""

    built: bool
    errors: list[str] = field(default_factory=list)
    layers_log: str = ""
    engine_bytes: int = 0
    seconds: float = 0.0
    peak_rss_gb: float = 0.0


def _build(trt, job: BuildJob) -> BuildResult:
    """Parse and build ``job`` with TensorRT-RTX in this process, keeping every VERBOSE message."""
    messages: list[tuple[int, str]] = []

    class Keep(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, message) -> None:
            messages.append((int(severity), message))

    logger = Keep()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    began = time.perf_counter()
    if not parser.parse(_with_input_shape(job), job.model):
        errors = [f"{e.node_name() or 'model'}: {e.desc()}" for e in (parser.get_error(i) for i in range(parser.num_errors))]
        return BuildResult(False, errors or ["the ONNX parser refused the model"], seconds=time.perf_counter() - began)
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, job.target.upper()), 0)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = [want if dim < 0 else dim for dim, want in zip(tensor.shape, job.shape)]
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - began
    errors = [text for severity, text in messages if severity in ERROR_SEVERITIES]
    if plan is None:
        return BuildResult(False, errors or ["the builder returned no engine"], seconds=seconds)
    if job.engine_path:
        _write_atomic(Path(job.engine_path), plan)
    layers = next((text for _, text in messages if text.startswith("Layers:")), "")
    memory = "\n".join(text for _, text in messages if text.startswith("Total ") and "Memory" in text)
    return BuildResult(True, errors, f"{layers}\n\n{memory}", int(plan.nbytes), seconds)


def _with_input_shape(job: BuildJob) -> bytes:
    """The model's bytes with its input's free dimensions set to the job's shape: exporters name free
    dimensions alike (Paddle2ONNX names height and width both ``?``), which TensorRT reads as equal."""
    import onnx

    model = onnx.load(job.model)
    constants = {init.name for init in model.graph.initializer}
    image = next(inp for inp in model.graph.input if inp.name not in constants)
    dims = image.type.tensor_type.shape.dim
    for dim, size in zip(dims, job.shape):
        if not dim.HasField("dim_value") or dim.dim_value <= 0:
            dim.dim_value = int(size)
    return model.SerializeToString()


def _write_atomic(path: Path, plan) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(memoryview(plan))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def run_job(job: BuildJob) -> BuildResult:
    """Build ``job`` in this process (the child's side of :func:`calibkit.engine.check.build`)."""
    import importlib

    from calibkit.memory import peak_rss_gb

    try:
        result = _build(importlib.import_module(MODULE), job)
    except Exception as exc:  # the builder's own exceptions carry its message; keep it verbatim
        result = BuildResult(False, [f"{type(exc).__name__}: {exc}"])
    result.peak_rss_gb = peak_rss_gb()
    return result


def main(argv: Sequence[str]) -> int:
    """``python -m calibkit.engine.builder JOB.json RESULT.json``: build one job, write what came back."""
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result = run_job(BuildJob(job["model"], tuple(job["shape"]), job["target"], job.get("engine_path")))
    Path(argv[1]).write_text(json.dumps(asdict(result)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
