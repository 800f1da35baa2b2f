import sys

import numpy as np
import pytest

from calibkit.memory import trim_heap


def _rss_mb() -> float:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1e3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_system():
    """Blocks below glibc's mmap threshold live on the heap; with the newest still held, their freed pages
    stay in the process until trimmed."""
    blocks = [np.ones(8192) for _ in range(3000)]  # 64 KB each, about 200 MB
    newest = blocks[-1]
    del blocks
    held = _rss_mb()
    trim_heap()
    assert _rss_mb() < held - 100 and newest.sum() == 8192
