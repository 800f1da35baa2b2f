import sys

import numpy as np
import pytest

from calibkit.memory import peak_rss_gb, trim_heap


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_peak_is_this_processs_own_not_the_one_that_started_it():
    """Linux carries ru_maxrss over from the parent across exec; the reported peak must not."""
    import subprocess

    held = np.ones(400 << 17)  # 400 MB, touched
    child = ("import resource; from calibkit.memory import peak_rss_gb; "
             "print(peak_rss_gb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20))")
    own, inherited = map(float, subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                                               check=True).stdout.split())
    assert held.sum() > 0 and inherited > 0.35, "the child's ru_maxrss shows the parent's memory"
    assert own < 0.2
    assert peak_rss_gb() > 0.39, "this process's own 400 MB count"
