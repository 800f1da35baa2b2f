"""The backend interface and registry: each entry says what its sessions can do, so core code asks the
entry (device, statistics batch, Ray, profiling, options it takes) and never compares backend names.

A plug-in registers a :class:`BackendInfo` with :func:`register_backend` or through the
``calibkit.backends`` entry-point group (the entry point loads a :class:`BackendInfo`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from calibkit.errors import CalibkitError
from calibkit.plugins import load_entry_points


class Session(Protocol):
    """A loaded model ready to run batches."""

    backend: str
    input_name: str
    output_names: list[str]

    def run(self, batch: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one batch; return the requested tensors (default: the model's outputs) by name."""


Loader = Callable[..., Session]


def _runs_anywhere() -> None:
    return None


@dataclass(frozen=True)
class BackendInfo:
    """A backend and what it can do.

    ``check`` raises a one-line :class:`CalibkitError` when the backend cannot run here (package missing,
    no suitable GPU), naming the fix; ``options`` are the session options its loader takes (others are
    dropped by :func:`load`, so callers may pass every backend the same ones); ``stats_batch`` is the
    statistics pass's images per inference, None where the backend cannot run that pass (it needs
    intermediate tensors); ``profiling`` names what the comparison records beside speed: ``ops`` (where
    CPU time goes per op type), ``placement`` (nodes left on the CPU), ``layers`` (per-layer engine time).
    """

    name: str
    label: str
    device: str
    loader: Loader
    check: Callable[[], None] = _runs_anywhere
    exposes_tensors: bool = True
    stats_batch: int | None = None
    ray: bool = False
    profiling: str | None = None
    builds_engines: bool = False
    options: frozenset[str] = frozenset()

    @property
    def on_gpu(self) -> bool:
        return self.device == "gpu"

    def available(self) -> bool:
        try:
            self.check()
        except CalibkitError:
            return False
        return True


_BACKENDS: dict[str, BackendInfo] = {}


def register_backend(info: BackendInfo) -> None:
    """Make a backend selectable by its name."""
    _BACKENDS[info.name] = info


def backend_info(name: str) -> BackendInfo:
    """The registered entry of ``name``, or one error line listing the known backends."""
    _register_builtins()
    if name not in _BACKENDS:
        raise CalibkitError(f"unknown backend {name!r}; choose one of {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]


def registered_backends() -> list[str]:
    """Names of every registered backend, whether or not it can run on this machine."""
    _register_builtins()
    return sorted(_BACKENDS)


def available_backends() -> list[str]:
    """Names of the registered backends that can run on this machine."""
    _register_builtins()
    return [name for name, info in _BACKENDS.items() if info.available()]


def require(backend: str, needs: Callable[[BackendInfo], bool] | None = None, what: str = "this command") -> str:
    """``backend`` if it is known, can do what ``needs`` asks of it and can run here, else one error line:
    checked before any image is read."""
    info = backend_info(backend)
    if needs is not None and not needs(info):
        fit = ", ".join(name for name, other in sorted(_BACKENDS.items()) if needs(other))
        raise CalibkitError(f"backend {backend} cannot run {what}; choose one of {fit}")
    info.check()
    return backend


def load(model_path: Path, precision: str = "fp32", backend: str = "ort-cpu", **options) -> Session:
    """Load ``model_path`` on ``backend``; ``precision`` tells engine builders what the model holds.
    Options the backend does not take (ONNX Runtime's arena settings on an engine) are dropped."""
    info = backend_info(backend)
    taken = {key: value for key, value in options.items() if key in info.options}
    return info.loader(Path(model_path), precision=precision, **taken)


def _register_builtins() -> None:
    if _BACKENDS:
        return
    from calibkit.backends import onnxruntime as ort_backend
    from calibkit.backends import tensorrt as trt_backend
    from calibkit.backends import tensorrt_rtx as rtx_backend

    for info in (ort_backend.CPU, ort_backend.CUDA, trt_backend.INFO, rtx_backend.INFO):
        register_backend(info)
    load_entry_points("calibkit.backends", lambda name, info: register_backend(info))
