"""Ranges as JSON: amax, scale and observed min/max per tensor, with method and provenance.

No timestamps or host names go in, so the same statistics give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from calibkit import __version__
from calibkit.calib.registry import Calibrator, TensorRange
from calibkit.errors import CalibkitError
from calibkit.fileio import write_text_atomic

FORMAT = "calibkit.ranges/1"


def ranges_document(ranges: Mapping[str, TensorRange], calibrator: Calibrator, provenance: Mapping) -> dict:
    return {
        "format": FORMAT,
        "calibkit_version": __version__,
        "method": calibrator.info.name,
        "params": dict(calibrator.params),
        "trt_algorithm": calibrator.info.trt_algorithm,
        "provenance": dict(provenance),
        "tensors": {
            name: {"amax": r.amax, "scale": r.scale, "min": r.min, "max": r.max, "fallback": r.fallback,
                   "clipped": r.clipped}
            for name, r in ranges.items()
        },
    }


def write_ranges(path: Path, ranges: Mapping[str, TensorRange], calibrator: Calibrator, provenance: Mapping) -> Path:
    text = json.dumps(ranges_document(ranges, calibrator, provenance), indent=1) + "\n"
    return write_text_atomic(Path(path), text)


def read_ranges(path: Path) -> tuple[dict[str, TensorRange], dict]:
    """Ranges and the whole document of a JSON written by :func:`write_ranges`."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CalibkitError(f"{path}: cannot read calibkit ranges JSON ({exc})") from exc
    if document.get("format") != FORMAT:
        raise CalibkitError(f"{path}: not a calibkit ranges file (format {document.get('format')!r})")
    tensors = document.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise CalibkitError(f"{path}: holds no tensor ranges; pass a ranges JSON a calibration wrote")
    try:
        ranges = {name: TensorRange(float(t["amax"]), t["min"], t["max"], t.get("fallback"), t.get("clipped", 0.0))
                  for name, t in tensors.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibkitError(f"{path}: a tensor entry lacks amax, min or max ({exc!r}); pass a ranges JSON a "
                            "calibration wrote") from exc
    return ranges, document
