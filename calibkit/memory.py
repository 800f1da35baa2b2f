"""Handing the C heap's freed memory back to the operating system between the stages of one command.

ONNX Runtime sessions allocate through ``malloc`` from several threads. Once a stage's sessions are gone,
glibc keeps most of what they freed: after the demo's sensitivity ranking (16 suffix sessions at a time)
the process still held 1.38 GB, and the speed benchmark's arena came on top of it (2.32 GB peak).
``malloc_trim`` returns those free pages (0.16 GB left), so each stage starts from what is really in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache


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
