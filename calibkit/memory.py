"""This process's memory: its peak, and handing the C heap's freed memory back to the operating system
between the stages of one command.

ONNX Runtime sessions allocate through ``malloc`` from several threads. Once a stage's sessions are gone,
glibc keeps most of what they freed: after the demo's sensitivity ranking (16 suffix sessions at a time)
the process still held 1.38 GB, and the speed benchmark's arena came on top of it (2.32 GB peak).
``malloc_trim`` returns those free pages (0.16 GB left), so each stage starts from what is really in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def trim_heap() -> None:
    """Return the C heap's free pages to the operating system (glibc's ``malloc_trim``); nothing where
    the C library has none (macOS, musl)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB.

    On Linux, the kernel's high-water mark of this process's own memory (``VmHWM``). ``ru_maxrss`` is
    not that: Linux carries it over from the process that started this one, so calibkit launched from a
    2 GB notebook kernel or test runner reported 2 GB for a command that peaked at 0.86 GB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


# Sessions whose float weights together pass this many bytes are not held at once: the comparison runs its
# models one after the other and its per-layer pass loads each graph segment as it runs it. A Q/DQ model's
# session holds its weights dequantized, an FP16 one its weights cast back to float: each about the FP32 size.
RESIDENT_WEIGHT_BYTES = 1 << 30


def sessions_fit(reference: Path, models: int) -> bool:
    """Whether ``models`` sessions of about the size of the FP32 model at ``reference`` fit
    :data:`RESIDENT_WEIGHT_BYTES` together."""
    return Path(reference).stat().st_size * models <= RESIDENT_WEIGHT_BYTES
