"""Every model calibkit writes is checked before any command reports it written."""

from __future__ import annotations

from pathlib import Path

import onnx

from calibkit.errors import CalibkitError


def verify_model(written: Path, path: Path) -> None:
    """Raise one line naming ``path`` unless the model file ``written`` (its staged copy) passes
    ``onnx.checker`` with ``full_check`` (types and shapes inferred end to end) and ONNX Runtime's CPU
    provider builds a session for it. Both read the file themselves: no second copy of a large model's
    weights is serialised for them."""
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(written), full_check=True)
    except Exception as exc:
        raise CalibkitError(f"{path}: the written model fails onnx.checker ({str(exc).splitlines()[0][:200]}); "
                            "please report this model") from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(written), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CalibkitError(f"{path}: ONNX Runtime cannot load the written model "
                            f"({str(exc).splitlines()[0][:200]}); please report this model") from exc
