"""The backend interface: a session runs a batch and can return named intermediate tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from calibkit.errors import CalibkitError


class Session(Protocol):
    """A loaded model ready to run batches."""

    backend: str
    input_name: str
    output_names: list[str]

    def run(self, batch: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one batch; return the requested tensors (default: the model's outputs) by name."""


Loader = Callable[..., Session]
_BACKENDS: dict[str, tuple[Loader, Callable[[], bool]]] = {}


def register_backend(name: str, loader: Loader, is_available: Callable[[], bool]) -> None:
    """Make a backend selectable by name; ``is_available`` says whether it can run here."""
    _BACKENDS[name] = (loader, is_available)


def available_backends() -> list[str]:
    """Names of the registered backends that can run on this machine."""
    _register_builtins()
    return [name for name, (_, ok) in _BACKENDS.items() if ok()]


def require(backend: str, allowed: Sequence[str] | None = None) -> str:
    """``backend`` if it is known (and among ``allowed``) and can run here, else one error line: checked
    before any image is read."""
    _register_builtins()
    names = list(allowed) if allowed is not None else sorted(_BACKENDS)
    if backend not in names or backend not in _BACKENDS:
        raise CalibkitError(f"unknown backend {backend!r} here; choose one of {', '.join(names)}")
    if not _BACKENDS[backend][1]():
        load(Path("-"), backend=backend)  # the loader's own message says what to install
    return backend


def load(model_path: Path, precision: str = "fp32", backend: str = "ort-cpu", **options) -> Session:
    """Load ``model_path`` on ``backend``; ``precision`` tells engine builders what the model holds."""
    _register_builtins()
    if backend not in _BACKENDS:
        raise CalibkitError(f"unknown backend {backend!r}; choose one of {sorted(_BACKENDS)}")
    return _BACKENDS[backend][0](Path(model_path), precision=precision, **options)


def _register_builtins() -> None:
    if _BACKENDS:
        return
    from calibkit.backends import onnxruntime as ort_backend
    from calibkit.backends import tensorrt as trt_backend

    register_backend("ort-cpu", ort_backend.load_cpu, lambda: True)
    register_backend("ort-cuda", ort_backend.load_cuda, ort_backend.cuda_available)
    register_backend("tensorrt", trt_backend.load, trt_backend.available)
