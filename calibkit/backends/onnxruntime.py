"""ONNX Runtime sessions (CPU, and CUDA when onnxruntime-gpu is installed)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from calibkit.backends.base import BackendInfo
from calibkit.errors import CalibkitError
from calibkit.graph.onnx_model import load_model, with_outputs


# Model files above this size get memory-bounded sessions without the blocked-layout weight copy.
LAYOUT_COPY_BYTES = 64 << 20


class OrtSession:
    """An ``onnxruntime.InferenceSession`` that can also return intermediate tensors by name.

    ``model`` is ``model_path`` already loaded (or a graph edited in memory, which ``model_path`` then
    only names in messages), so it is not read twice.
    ``arena=False`` returns activation memory after every run instead of keeping each session's peak:
    for passes that hold several sessions at once (comparison), not for latency measurement. Such a
    session of a model file over :data:`LAYOUT_COPY_BYTES` also skips ONNX Runtime's blocked-layout
    (NCHWc) rewrite, which keeps a reordered second copy of every convolution weight beside the first:
    on the 469 MB stress detector the session held 0.47 GB instead of 1.06 GB and ran 1.2x slower.
    ``shared_arena=True`` draws activation memory from one CPU arena that every such session of the
    process shares (:func:`shared_cpu_arena`): for latency measurement of several models side by side.
    Each run reuses memory as a deployed session does (without an arena, EfficientNet-Lite0 at batch 32
    measured 25-35 % slower in FP32 and FP16 and about 10 % in INT8, which inflated INT8's speedup), while
    the memory held stays near the largest model's peak instead of the sum over models.
    ``spinning=False`` lets ONNX Runtime's idle worker threads sleep instead of spinning: for passes where
    calibkit's own threads (image decoding) share the cores; a comparison pass on two cores ran 35 %
    faster so. Latency measurement keeps the default.
    ``qdq_as_written=True`` runs a Q/DQ model as its graph says: every QuantizeLinear/DequantizeLinear pair
    in float, constant weights dequantized once at load. ONNX Runtime's own INT8 rewrites (QLinearConv and
    the like, which re-round intermediate results in ways TensorRT does not) are off, and convolutions keep
    ONNX Runtime's blocked float kernels: for accuracy passes over TensorRT-target models, where it ran 1.4x
    faster on EfficientNet-Lite0. Speed measurement of the ONNX Runtime target keeps the rewrites.
    """

    def __init__(
        self,
        model_path: Path,
        providers: list,
        expose: Sequence[str] = (),
        threads: int = 0,
        backend: str = "ort-cpu",
        model: onnx.ModelProto | Path | None = None,
        arena: bool = True,
        spinning: bool = True,
        qdq_as_written: bool = False,
        shared_arena: bool = False,
    ) -> None:
        self.backend = backend
        self.model_path = Path(model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = arena
        if not arena and self.model_path.is_file() and self.model_path.stat().st_size > LAYOUT_COPY_BYTES:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        if shared_arena:
            shared_cpu_arena()
            options.add_session_config_entry("session.use_env_allocators", "1")
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if qdq_as_written:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        model_outputs: list[str] | None = None
        if expose:
            original = model if model is not None else load_model(self.model_path)
            model_outputs = [out.name for out in original.graph.output]
            source: bytes | str = with_outputs(original, list(expose)).SerializeToString()
        elif isinstance(model, Path):
            source = str(model)  # a file of its own (a graph segment), weights perhaps in a file beside it
        elif model is not None:
            source = model.SerializeToString()
        else:
            source = str(self.model_path)
        try:
            self._session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:
            raise CalibkitError(f"{model_path}: ONNX Runtime cannot load the model ({str(exc).splitlines()[0]})") from exc
        self.input_name = self._session.get_inputs()[0].name
        shape = self._session.get_inputs()[0].shape
        batch_dim = shape[0] if shape else None
        self.fixed_batch: int | None = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.output_names = [out.name for out in self._session.get_outputs()]
        self.model_outputs = model_outputs or self.output_names
        self._input_type = np.float16 if self._session.get_inputs()[0].type == "tensor(float16)" else np.float32

    @property
    def on_gpu(self) -> bool:
        return self._session.get_providers()[0] == "CUDAExecutionProvider"

    def run_device(self, batch: np.ndarray, outputs: Sequence[str]) -> dict:
        """Run ``batch`` and return ``outputs`` as CuPy arrays left in GPU memory (IO binding; the CUDA
        provider only). Each array keeps ONNX Runtime's buffer alive; synchronise CuPy's stream before
        dropping the last reference (:func:`calibkit.stats.device.synchronize`)."""
        binding = self._session.io_binding()
        binding.bind_cpu_input(self.input_name, batch.astype(self._input_type, copy=False))
        for name in outputs:
            binding.bind_output(name, "cuda", 0)
        self._session.run_with_iobinding(binding)
        return {name: _as_cupy(value) for name, value in zip(outputs, binding.get_outputs())}

    def timer(self, batch: np.ndarray):
        """A call that runs ``batch`` once, for latency measurement. On the GPU the input stays in device
        memory and the outputs are bound there too: the call returns once the GPU has finished (ONNX
        Runtime synchronises the bound outputs), without host copies."""
        if not self.on_gpu:
            return lambda: self.run(batch)
        import onnxruntime as ort

        binding = self._session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(batch.astype(self._input_type, copy=False), "cuda", 0)
        binding.bind_ortvalue_input(self.input_name, value)
        for name in self.model_outputs:
            binding.bind_output(name, "cuda", 0)
        return lambda: self._session.run_with_iobinding(binding)

    def run(self, batch: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run ``batch``; a model with a fixed batch size gets it in chunks (:func:`pieces`), and the
        padding is cut from outputs whose first axis is the batch."""
        names = list(outputs) if outputs is not None else self.model_outputs
        size = self.fixed_batch
        if size is None or len(batch) == size:
            return self._run(batch, names)
        parts = [unpadded(self._run(chunk, names), size, real) for chunk, real in pieces(batch, size)]
        return {name: np.concatenate([p[name] for p in parts]) for name in names}

    def run_feeds(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One run on named inputs as they are (no chunking): for graphs cut out of a model."""
        names = list(outputs) if outputs is not None else self.model_outputs
        return self._infer(dict(feeds), names, "", "")

    def _run(self, batch: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        return self._infer({self.input_name: batch.astype(self._input_type, copy=False)}, names,
                           f" on a batch of shape {tuple(batch.shape)}",
                           "; check --size and the preprocessing against the model input")

    def _infer(self, feeds: dict[str, np.ndarray], names: list[str], where: str, fix: str) -> dict[str, np.ndarray]:
        """One ONNX Runtime run; a failure becomes one line naming the model, ``where`` it failed and the ``fix``."""
        try:
            values = self._session.run(names, feeds)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:200]
            raise CalibkitError(f"{self.model_path}: inference failed{where} ({reason}){fix}") from exc
        return dict(zip(names, values))


def pieces(batch: np.ndarray, size: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """``batch`` as a model takes it: whole where its batch size is free, else chunks of ``size`` images,
    the last one padded by repeating its last image; each with its count of real images."""
    if size is None:
        yield batch, len(batch)
        return
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        real = len(chunk)
        if real < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, axis=0)])
        yield chunk, real


def unpadded(values: Mapping[str, np.ndarray], size: int | None, real: int) -> dict[str, np.ndarray]:
    """``values`` of a padded chunk without the padding, cut from the tensors whose first axis is the batch."""
    return {k: v[:real] if size and v.ndim and v.shape[0] == size else v for k, v in values.items()}


_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _as_cupy(value):
    """A CuPy view of an ONNX Runtime value in GPU memory (no copy); it holds ``value`` alive."""
    import cupy

    dtype = np.dtype(_DTYPES[value.data_type()])
    shape = tuple(value.shape())
    size = int(np.prod(shape)) * dtype.itemsize
    memory = cupy.cuda.UnownedMemory(value.data_ptr(), size, value)
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(memory, 0))


@lru_cache(maxsize=None)
def shared_cpu_arena() -> None:
    """Register, once per process, the CPU arena that sessions made with ``shared_arena=True`` share. It
    grows by what each allocation asks (not in doublings) and keeps its largest size until the process
    ends."""
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    same_as_requested = 1
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, same_as_requested, -1, -1))


def load_cpu(model_path: Path, precision: str = "fp32", **options) -> OrtSession:
    """ONNX Runtime on the CPU: runs FP32, FP16-cast and Q/DQ INT8 models (real INT8 kernels)."""
    return OrtSession(model_path, ["CPUExecutionProvider"], backend="ort-cpu", **options)


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _check_cuda() -> None:
    if not cuda_available():
        raise CalibkitError("backend ort-cuda needs onnxruntime-gpu: pip install 'calibkit[gpu]' on a CUDA machine")


# TF32 off: convolutions and products in full float32, so GPU statistics and accuracy match the CPU's.
CUDA_OPTIONS = {"device_id": 0, "use_tf32": 0}


def load_cuda(model_path: Path, precision: str = "fp32", **options) -> OrtSession:
    """ONNX Runtime's CUDA provider; needs ``pip install calibkit[gpu]`` (onnxruntime-gpu). The CUDA and
    cuDNN libraries of NVIDIA's pip packages are loaded first where ONNX Runtime can do that."""
    _check_cuda()
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    return OrtSession(model_path, [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"],
                      backend="ort-cuda", **options)



# Every OrtSession option: both ONNX Runtime backends take them all.
SESSION_OPTIONS = frozenset({"expose", "threads", "model", "arena", "spinning", "qdq_as_written", "shared_arena"})
# On the CPU single images measured fastest in the statistics pass (one image's activations stay in cache
# while they are binned); on the GPU a batch of 8 keeps the device busy.
CPU = BackendInfo("ort-cpu", "ONNX Runtime CPU", "cpu", load_cpu, stats_batch=1, ray=True, profiling="ops",
                  options=SESSION_OPTIONS)
CUDA = BackendInfo("ort-cuda", "ONNX Runtime CUDA", "gpu", load_cuda, check=_check_cuda, stats_batch=8,
                   profiling="placement", options=SESSION_OPTIONS)
