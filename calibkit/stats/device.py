"""Histograms and moments on the GPU: the statistics pass with activations left in device memory.

ONNX Runtime's CUDA provider writes every exposed activation into device memory (IO binding,
:meth:`calibkit.backends.onnxruntime.OrtSession.run_device`), and CuPy folds it there: one small copy of
each tensor's extremes per batch (the histogram may need to widen first), the binning kernel below,
and the finished histograms copied to the host once, at the end of the pass.

The kernel computes each bin exactly as the CPU path does (:mod:`calibkit.stats._binning`): the
float32 product ``value * scale`` rounded, then ``+ offset`` rounded (``__fmul_rn``/``__fadd_rn`` keep
the compiler from fusing them into one multiply-add), truncated and clamped. So the same activations
give the same counts on either device and GPU and CPU statistics merge exactly; what differs between
them is only the activations themselves, which the CUDA provider computes with other convolution
algorithms (TF32 off).

CuPy is imported only here and only on use: the ``gpu`` extra installs it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_KERNEL_SOURCE = r"""
extern "C" __global__ void bin_signed(const float* values, long long n, float scale, float offset,
                                      unsigned long long* hist, long long last) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float shifted = __fadd_rn(__fmul_rn(values[i], scale), offset);
        long long index = (long long)shifted;
        index = index < 0 ? 0 : (index > last ? last : index);
        atomicAdd(&hist[index], 1ULL);
    }
}
"""
_kernel = None


def is_device_array(values: Any) -> bool:
    """Whether ``values`` is a CuPy array (checked without importing CuPy)."""
    return type(values).__module__.split(".")[0] == "cupy"


def cupy_module():
    """CuPy, or one error line saying how to install it."""
    try:
        import cupy
    except ImportError as exc:
        from calibkit.errors import CalibkitError

        raise CalibkitError("GPU statistics need CuPy: pip install 'calibkit[gpu]' (cupy-cuda12x or cupy-cuda13x "
                            "to match the CUDA driver)") from exc
    return cupy


def extremes(flat: Any) -> tuple[float, float]:
    """Min and max of a flat array, with one device-to-host copy for a CuPy array."""
    if is_device_array(flat):
        both = cupy_module().stack([flat.min(), flat.max()]).get()
        return float(both[0]), float(both[1])
    return float(flat.min()), float(flat.max())


def bin_signed(flat: Any, scale: np.float32, offset: np.float32, hist: Any) -> None:
    """Add one count per value of the float32 CuPy array ``flat`` to the int64 CuPy array ``hist``."""
    global _kernel
    cupy = cupy_module()
    if _kernel is None:
        _kernel = cupy.RawKernel(_KERNEL_SOURCE, "bin_signed")
    threads = 256
    blocks = int(min(max(1, -(-flat.size // threads)), 65535))
    _kernel((blocks,), (threads,), (flat, np.int64(flat.size), np.float32(scale), np.float32(offset), hist,
                                    np.int64(hist.size - 1)))


def to_host(values: Any) -> np.ndarray:
    """A NumPy copy of a CuPy array; a NumPy array as it is."""
    return values.get() if is_device_array(values) else np.asarray(values)


def synchronize() -> None:
    """Wait for CuPy's queued kernels, so device buffers they read can be handed back."""
    cupy_module().cuda.get_current_stream().synchronize()
