"""Where and with what a report's numbers were made: versions, machine, command line, date."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

PACKAGES = ("calibkit", "onnxruntime", "onnx", "numpy")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where Linux has it, else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name and driver (nvidia-smi), or None where there is none."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True)
    first = done.stdout.strip().splitlines()[:1] if done.returncode == 0 else []
    return f"{first[0].split(',')[0].strip()} (driver {first[0].split(',')[-1].strip()})" if first else None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), which can be fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def environment(image_paths: Sequence[Path] = ()) -> dict[str, str]:
    """Provenance rows for a report: image folder, package versions, CPU and threads, command, date."""
    rows = {}
    if image_paths:
        rows["image folder"] = os.path.commonpath([str(Path(p).resolve().parent) for p in image_paths])
    for package in PACKAGES:
        try:
            rows[f"{package} version"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            rows[f"{package} version"] = "not installed"
    rows["python"] = platform.python_version()
    rows["CPU"] = f"{cpu_name()}; {usable_cpus()} of {os.cpu_count()} CPUs usable by this process"
    rows["threads"] = "ONNX Runtime intra-op pool at its default (one thread per physical core)"
    gpu = gpu_name()
    if gpu:
        rows["GPU"] = gpu
    rows["command line"] = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    rows["date (UTC)"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return rows
