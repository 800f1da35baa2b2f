"""TensorRT-RTX engines run on the local GPU (``--backend tensorrt-rtx``), for GPUs TensorRT-RTX supports.

The engine is built for this GPU's compute capability by :mod:`calibkit.engine.builder` (in a child
process, as the engine check builds), kept in calibkit's engine cache keyed by model hash, target and
TensorRT-RTX version, and run through the same session code as the TensorRT backend
(:class:`calibkit.backends.tensorrt.TrtSession`: same runtime API). TensorRT-RTX compiles its kernels
just in time on first run; their runtime cache is kept beside the engine and reused.

Not verified on a supported GPU: the only GPU lent to calibkit's developers (an H200, compute capability
9.0) is one TensorRT-RTX does not run, and there the backend refuses with one line before any work.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from calibkit.backends.base import BackendInfo
from calibkit.engine import builder
from calibkit.engine.gpu import local_gpu
from calibkit.errors import CalibkitError
from calibkit.fileio import cache_dir
from calibkit.graph.onnx_model import file_sha256


def supported_gpu() -> str:
    """This GPU's target name (``sm89``), or one error line naming the GPU, its compute capability and the
    compute capabilities TensorRT-RTX runs on."""
    gpu = local_gpu()
    supported = ", ".join(f"{cc} ({name})" for name, (cc, _) in builder.TARGETS.items())
    if gpu is None:
        raise CalibkitError("backend tensorrt-rtx runs engines on an NVIDIA GPU and nvidia-smi finds none here; "
                            f"TensorRT-RTX runs on compute capability {supported}. Build engines for those GPUs "
                            "with calibkit build-engine --trt-target, or use --backend ort-cpu")
    target = builder.target_for(gpu.capability)
    if target is None:
        raise CalibkitError(f"backend tensorrt-rtx cannot run on this GPU: {gpu.name} has compute capability "
                            f"{gpu.capability}, and TensorRT-RTX {builder.version() or ''} runs on {supported} only; "
                            "use --backend ort-cuda here (pip install 'calibkit[gpu]'), and calibkit build-engine "
                            "--trt-target to build engines for those GPUs")
    return target


def _check() -> None:
    if not builder.available():
        raise CalibkitError(f"backend tensorrt-rtx needs TensorRT-RTX: {builder.INSTALL_HINT}")
    supported_gpu()
    if importlib.util.find_spec("cuda") is None:
        raise CalibkitError("backend tensorrt-rtx moves tensors with cuda-python: pip install cuda-python")


def engine_for(model_path: Path, target: str) -> Path:
    """The cached engine of ``model_path`` for ``target``, built on first use."""
    from calibkit.engine.check import EngineModel, build
    from calibkit.engine.commands import build_shape

    folder = cache_dir() / "engines" / f"trtrtx-{builder.version()}"
    label = file_sha256(Path(model_path))[:24]
    engine = folder / f"{label}.{target}.trtrtx.engine"
    if not engine.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        check = build(EngineModel(label, "model", Path(model_path), label), build_shape(model_path), target, folder)
        if not check.built:
            raise CalibkitError(f"{model_path}: TensorRT-RTX cannot build it for {target}: {check.errors[0]}")
    return engine


def _runtime_cache_context(trt, cache_file: Path):
    """An execution-context factory that loads TensorRT-RTX's JIT runtime cache from ``cache_file`` and
    writes it back when the process ends, so kernels compiled on first run are not compiled again."""
    import atexit

    def make(engine):
        config = engine.create_runtime_config()
        cache = config.create_runtime_cache()
        if cache_file.is_file():
            cache.deserialize(cache_file.read_bytes())
        config.set_runtime_cache(cache)
        atexit.register(lambda: cache_file.write_bytes(bytes(cache.serialize())))
        return engine.create_execution_context(config)

    return make


def load(model_path: Path, precision: str = "fp32", profile_layers: bool = False):
    """A session running ``model_path``'s TensorRT-RTX engine for this GPU."""
    from calibkit.backends.tensorrt import TrtSession

    _check()
    target = supported_gpu()
    engine = engine_for(Path(model_path), target)
    trt = importlib.import_module(builder.MODULE)
    from cuda.bindings import runtime as cudart

    return TrtSession(engine.read_bytes(), trt, cudart, profile_layers, backend="tensorrt-rtx",
                      make_context=_runtime_cache_context(trt, engine.with_suffix(".runtime-cache")))


INFO = BackendInfo("tensorrt-rtx", "TensorRT-RTX", "gpu", load, check=_check, exposes_tensors=False,
                   profiling="layers", builds_engines=True, options=frozenset({"profile_layers"}))
