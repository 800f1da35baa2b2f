import numpy as np

from calibkit.calib.minmax import minmax_amax
from calibkit.stats.histogram import TensorStats


def test_minmax_is_the_exact_absolute_maximum():
    data = np.random.default_rng(2).standard_normal((3, 1000)).astype(np.float32) * 3
    stats = TensorStats("t")
    for row in data:
        stats.update(row)
    assert minmax_amax(stats) == float(np.abs(data).max())
