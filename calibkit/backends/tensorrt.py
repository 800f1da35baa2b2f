"""TensorRT engines from ONNX (TensorRT 10 and 11), with device buffers from cuda-python.

Imported lazily: nothing here touches ``tensorrt`` or ``cuda`` until a session is loaded, so the rest
of calibkit works without them. Paths:

* TensorRT 11 (and 10 with ``strongly_typed``): a strongly typed network parsed from the Q/DQ INT8
  or FP16-cast ONNX model; precisions come from the model itself.
* TensorRT 10 implicit quantization: the FP32 ONNX with ``BuilderFlag.INT8`` and a calibrator that
  replays a calibkit cache file (no calibration batches are run), or ``BuilderFlag.FP16``.

Engines are cached on disk, keyed by model hash, build settings, GPU name and TensorRT version.
This module has not been run here (no TensorRT on these machines); its tests skip without it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from calibkit.backends.base import BackendInfo
from calibkit.errors import CalibkitError
from calibkit.fileio import cache_dir
from calibkit.graph.onnx_model import file_sha256

INSTALL_HINT = "TensorRT backend needs NVIDIA TensorRT and cuda-python: pip install 'calibkit[tensorrt]' on a CUDA machine"
# Functions on TensorRT 10's code paths only (implicit quantization, the strongly-typed flag); every other
# TensorRT call must exist in 10 and 11 alike (tests/backends/test_tensorrt_api.py checks both).
TRT10_ONLY = ("replay_calibrator", "_trt10_network_flags", "_trt10_implicit_precision")
_CACHE_HEADER_ALGOS = {
    "EntropyCalibration2": "IInt8EntropyCalibrator2",
    "MinMaxCalibration": "IInt8MinMaxCalibrator",
    "LegacyCalibration": "IInt8LegacyCalibrator",
    "EntropyCalibration": "IInt8EntropyCalibrator",
}


def available() -> bool:
    """True when both ``tensorrt`` and ``cuda.bindings`` can be imported."""
    return importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("cuda") is not None


def _import():
    if not available():
        raise CalibkitError(INSTALL_HINT)
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    return trt, cudart


def _check(result):
    """Unwrap a cuda-python ``(err, *values)`` tuple, raising on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise CalibkitError(f"CUDA call failed with error {int(err)}")
    return values[0] if len(values) == 1 else values


def replay_calibrator(trt, cache_path: Path):
    """(TensorRT 10 only.) A calibrator whose only job is to hand TensorRT an existing cache file."""
    text = Path(cache_path).read_bytes()
    algorithm = text.split(b"\n", 1)[0].decode().rsplit("-", 1)[-1]
    base = getattr(trt, _CACHE_HEADER_ALGOS.get(algorithm, "IInt8EntropyCalibrator2"))

    class ReplayCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # never called when the cache is accepted
            return None

        def read_calibration_cache(self):
            return text

        def write_calibration_cache(self, cache) -> None:
            return None

    return ReplayCalibrator()


def _trt10_network_flags(trt) -> int:
    """TensorRT 10: ask for a strongly typed network (TensorRT 11 networks are always strongly typed)."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _trt10_implicit_precision(trt, config, precision: str, calibration_cache: Path | None) -> None:
    """TensorRT 10 implicit quantization: builder flags, and for INT8 a calibrator replaying the cache."""
    if precision == "int8":
        if calibration_cache is None:
            raise CalibkitError("implicit INT8 on TensorRT 10 needs a calibration cache (calibkit calibrate)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = replay_calibrator(trt, calibration_cache)
    if precision in ("int8", "fp16"):
        config.set_flag(trt.BuilderFlag.FP16)


def _engine_key(model_path: Path, precision: str, settings: dict, gpu: str, version: str) -> str:
    blob = json.dumps([file_sha256(model_path), precision, settings, gpu, version], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def build_engine(
    model_path: Path,
    precision: str = "fp32",
    calibration_cache: Path | None = None,
    max_batch: int = 32,
    workspace_mb: int = 2048,
    strongly_typed: bool | None = None,
) -> bytes:
    """Serialized engine for ``model_path``, built once and then read from the engine cache."""
    trt, cudart = _import()
    major = int(trt.__version__.split(".")[0])
    strongly_typed = major >= 11 if strongly_typed is None else strongly_typed
    if major >= 11 and not strongly_typed:
        raise CalibkitError("TensorRT 11 has no implicit quantization: pass the Q/DQ or FP16 ONNX model instead")
    props = _check(cudart.cudaGetDeviceProperties(0))
    gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    settings = {"max_batch": max_batch, "workspace_mb": workspace_mb, "strongly_typed": strongly_typed,
                "cache": file_sha256(calibration_cache) if calibration_cache else None}
    path = cache_dir() / "engines" / f"{_engine_key(model_path, precision, settings, gpu, trt.__version__)}.plan"
    if path.is_file():
        return path.read_bytes()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_trt10_network_flags(trt) if strongly_typed and major < 11 else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CalibkitError(f"{model_path}: TensorRT cannot parse the model ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = list(tensor.shape)
        shapes = [[n if d < 0 else d for d in dims] for n in (1, max(1, max_batch // 4), max_batch)]
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    if not strongly_typed:
        _trt10_implicit_precision(trt, config, precision, calibration_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CalibkitError(f"{model_path}: TensorRT engine build failed (see TensorRT log above)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(bytes(plan))
    tmp.replace(path)
    return bytes(plan)


class TrtSession:
    """Runs a serialized TensorRT (or TensorRT-RTX: same runtime API) engine on host NumPy batches, with
    device buffers from cuda-python; optional per-layer timing through IProfiler. ``make_context`` opens
    the execution context where a runtime needs more than the engine (TensorRT-RTX's runtime cache)."""

    def __init__(self, plan: bytes, trt, cudart, profile_layers: bool = False, backend: str = "tensorrt",
                 make_context=None) -> None:
        self._trt, self._cudart = trt, cudart
        self.backend = backend
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise CalibkitError(f"{backend}: the engine could not be loaded on this GPU (see the runtime's log above)")
        self.context = make_context(self.engine) if make_context else self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n not in inputs]
        self.layer_times_ms: dict[str, float] = defaultdict(float)
        if profile_layers:
            self.context.profiler = self._make_profiler()
        self._buffers: dict[str, tuple[int, int]] = {}

    def _make_profiler(self):
        times = self.layer_times_ms

        class LayerProfiler(self._trt.IProfiler):
            def __init__(self) -> None:
                super().__init__()

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                times[layer_name] += ms

        return LayerProfiler()

    def _device_buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _check(self._cudart.cudaFree(pointer))
            pointer = _check(self._cudart.cudaMalloc(nbytes))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def timer(self, batch: np.ndarray):
        """A call that runs ``batch`` once with input and outputs left in device memory and returns the GPU
        time between two CUDA events around the enqueue, in ms (:func:`calibkit.bench.speed._timed_call`)."""
        cudart = self._cudart
        self.run(batch)  # sizes and binds every device buffer for this batch shape
        start, stop = _check(cudart.cudaEventCreate()), _check(cudart.cudaEventCreate())

        def call() -> float:
            _check(cudart.cudaEventRecord(start, self.stream))
            if not self.context.execute_async_v3(int(self.stream)):
                raise CalibkitError(f"{self.backend} execution failed")
            _check(cudart.cudaEventRecord(stop, self.stream))
            _check(cudart.cudaEventSynchronize(stop))
            return float(_check(cudart.cudaEventElapsedTime(start, stop)))

        return call

    def run(self, batch: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        trt, cudart = self._trt, self._cudart
        dtype = trt.nptype(self.engine.get_tensor_dtype(self.input_name))
        host_in = np.ascontiguousarray(batch.astype(dtype, copy=False))
        self.context.set_input_shape(self.input_name, host_in.shape)
        device_in = self._device_buffer(self.input_name, host_in.nbytes)
        kind = cudart.cudaMemcpyKind
        _check(cudart.cudaMemcpyAsync(device_in, host_in.ctypes.data, host_in.nbytes, kind.cudaMemcpyHostToDevice, self.stream))
        self.context.set_tensor_address(self.input_name, device_in)
        results = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            results[name] = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, self._device_buffer(name, results[name].nbytes))
        if not self.context.execute_async_v3(int(self.stream)):
            raise CalibkitError("TensorRT execution failed")
        for name, host in results.items():
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes,
                                          kind.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        wanted = list(outputs) if outputs is not None else self.output_names
        return {name: results[name].astype(np.float32) for name in wanted}

    def __del__(self) -> None:
        for pointer, _ in getattr(self, "_buffers", {}).values():
            self._cudart.cudaFree(pointer)


def _check_installed() -> None:
    if not available():
        raise CalibkitError(INSTALL_HINT)


def load(model_path: Path, precision: str = "fp32", profile_layers: bool = False, **build) -> TrtSession:
    """Build (or reuse) an engine for ``model_path`` and return a session on GPU 0."""
    trt, cudart = _import()
    return TrtSession(build_engine(Path(model_path), precision, **build), trt, cudart, profile_layers)


INFO = BackendInfo("tensorrt", "TensorRT", "gpu", load, check=_check_installed, exposes_tensors=False, profiling="layers",
                   builds_engines=True, options=frozenset({"profile_layers", "calibration_cache", "max_batch",
                                                          "workspace_mb", "strongly_typed"}))
