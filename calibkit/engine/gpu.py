"""The local NVIDIA GPU as the driver reports it (``nvidia-smi``): name and compute capability."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: str

    def __str__(self) -> str:
        return f"{self.name} (compute capability {self.capability})"


def local_gpu() -> Gpu | None:
    """The first GPU ``nvidia-smi`` lists, or None where there is no NVIDIA driver or GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.split(",") for line in done.stdout.strip().splitlines() if "," in line] if done.returncode == 0 else []
    return Gpu(rows[0][0].strip(), rows[0][1].strip()) if rows else None
