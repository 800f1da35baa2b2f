"""The contract every backend entry keeps, as one function a plug-in author runs on their own entry
(scikit-learn's ``check_estimator`` is the model): the declared capabilities are coherent, ``load`` drops
options the backend does not take, and, where the backend can run here, a session returns the model's
outputs by name, equal to ONNX Runtime's on the CPU within ``tolerance``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibkit.backends.base import BackendInfo, backend_info, load
from calibkit.errors import CalibkitError

DEVICES = ("cpu", "gpu")
PROFILING = (None, "ops", "placement", "layers")


def check_backend_contract(info: BackendInfo, model_path: Path, batch: np.ndarray | None = None,
                           tolerance: float = 1e-3) -> bool:
    """Assert the contract for ``info`` on ``model_path`` (a small FP32 model with one image input);
    True when a session was also run here, False when the backend cannot run on this machine (its check
    then raised a one-line :class:`CalibkitError`, which is part of the contract)."""
    assert info.device in DEVICES, f"{info.name}: device {info.device!r} is not one of {DEVICES}"
    assert info.profiling in PROFILING, f"{info.name}: profiling {info.profiling!r} is not one of {PROFILING}"
    assert info.label and info.name, "a backend has a name and a label for reports"
    assert info.stats_batch is None or (info.exposes_tensors and info.stats_batch >= 1), (
        f"{info.name}: a statistics batch needs intermediate tensors")
    assert not info.ray or info.device == "cpu", f"{info.name}: Ray tasks run on CPU workers"
    assert backend_info(info.name) is info, f"{info.name} is not the registered entry"
    try:
        info.check()
    except CalibkitError as exc:
        assert "\n" not in str(exc) and str(exc), f"{info.name}: its check must say in one line why it cannot run"
        return False
    if batch is None:
        batch = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    session = load(model_path, "fp32", info.name, arena=False, not_an_option_of_any_backend=True)
    outputs = session.run(batch)
    assert list(outputs) == session.output_names, f"{info.name}: outputs come back by name, all of them"
    expected = load(model_path, "fp32", "ort-cpu").run(batch)
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value, rtol=tolerance, atol=tolerance, err_msg=f"{info.name}: {name}")
    if info.exposes_tensors:
        inner = load(model_path, "fp32", info.name, expose=[session.output_names[0]]).run(batch)
        assert session.output_names[0] in inner
    return True
