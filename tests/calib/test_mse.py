import numpy as np
import pytest

from calibkit.calib.mse import mse_amax
from calibkit.stats.histogram import TensorStats


def fake_quant_mse(data, amax):
    step = amax / 127
    return float(np.mean((np.clip(np.round(data / step), -127, 127) * step - data) ** 2))


def test_mse_choice_is_near_the_brute_force_optimum():
    data = np.random.default_rng(4).laplace(size=100_000).astype(np.float32)
    stats = TensorStats("t")
    stats.update(data)
    chosen = mse_amax(stats)
    grid = np.linspace(0.1 * stats.absmax, stats.absmax, 400)
    best = min(fake_quant_mse(data, a) for a in grid)
    assert chosen < stats.absmax
    assert fake_quant_mse(data, chosen) <= best * 1.05


def test_mse_keeps_full_range_for_uniform_data():
    data = np.random.default_rng(5).uniform(-2, 2, 100_000).astype(np.float32)
    stats = TensorStats("t")
    stats.update(data)
    assert mse_amax(stats) == pytest.approx(stats.absmax, rel=0.03)
