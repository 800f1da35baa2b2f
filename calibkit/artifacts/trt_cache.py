"""TensorRT calibration cache text files: ``TRT-<version>-<Algorithm>`` then ``tensor: <hex scale>``.

The hex is the big-endian IEEE-754 bit pattern of the float32 scale (amax / 127), the format
TensorRT's calibrators write and read back through ``read_calibration_cache``, and that ONNX
Runtime's TensorRT provider accepts with ``trt_int8_use_native_calibration_table``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from calibkit.errors import CalibkitError
from calibkit.fileio import write_text_atomic

DEFAULT_TRT_VERSION = 100800
ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")


@dataclass(frozen=True)
class CalibrationCache:
    """Parsed contents of a cache file: scales by tensor name, in file order."""

    version: int
    algorithm: str
    scales: dict[str, float]


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text.rjust(8, "0")))[0]


def format_cache(
    scales: Mapping[str, float], algorithm: str = "EntropyCalibration2", version: int = DEFAULT_TRT_VERSION
) -> str:
    """Cache text for ``scales`` (tensor -> amax / 127) in the given order."""
    if algorithm not in ALGORITHMS:
        raise CalibkitError(f"unknown TensorRT calibration algorithm {algorithm!r}; use one of {ALGORITHMS}")
    lines = [f"TRT-{version}-{algorithm}"]
    lines += [f"{name}: {scale_to_hex(scale)}" for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def parse_cache(text: str, source: str = "cache") -> CalibrationCache:
    """Parse cache text; raises a one-line :class:`CalibkitError` naming ``source`` on bad input."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise CalibkitError(f"{source}: not a TensorRT calibration cache (first line must be TRT-<version>-<algo>)")
    _, version, algorithm = lines[0].split("-", 2)
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        try:
            if not sep:
                raise ValueError(line)
            scales[name.strip()] = hex_to_scale(value.strip())
        except ValueError as exc:
            raise CalibkitError(f"{source}:{number}: expected 'tensor: <8 hex digits>', got {line!r}") from exc
    return CalibrationCache(int(version), algorithm, scales)


def write_cache(path: Path, scales: Mapping[str, float], algorithm: str, version: int = DEFAULT_TRT_VERSION) -> Path:
    """Write a cache file atomically."""
    return write_text_atomic(Path(path), format_cache(scales, algorithm, version))


def read_cache(path: Path) -> CalibrationCache:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibkitError(f"{path}: cannot read calibration cache ({exc})") from exc
    return parse_cache(text, str(path))
