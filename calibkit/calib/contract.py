"""The contract every calibrator entry keeps, as one function a plug-in author runs on their own entry
(scikit-learn's ``check_estimator`` is the model, as for backends: :mod:`calibkit.backends.contract`).

A calibrator turns one tensor's statistics into a range. Whatever the distribution, that range is a
finite positive number no larger than the largest |x| seen, to the histogram's bin (a range beyond it
only wastes levels), the
same for the same statistics, and its declared parameter, cost and TensorRT algorithm are usable by the
CLI, the sufficiency check and the cache writer.
"""

from __future__ import annotations

import math

import numpy as np

from calibkit.artifacts.trt_cache import ALGORITHMS
from calibkit.calib.registry import Calibrator, CalibratorInfo, get_calibrator
from calibkit.stats.histogram import TensorStats


def contract_distributions(seed: int = 0) -> dict[str, np.ndarray]:
    """Shapes of activations calibrators meet: Gaussian, post-ReLU with a long tail, one outlier, few
    distinct values, and a constant."""
    rng = np.random.default_rng(seed)
    gaussian = rng.standard_normal(20000).astype(np.float32)
    relu_tail = np.maximum(rng.standard_t(3, 20000), 0).astype(np.float32)
    outlier = np.concatenate([rng.uniform(-1, 1, 20000), [500.0]]).astype(np.float32)
    return {"gaussian": gaussian, "relu with a long tail": relu_tail, "one outlier": outlier,
            "three values": np.repeat(np.float32([-2, 0, 3]), 300), "constant": np.full(500, 0.75, np.float32)}


def check_calibrator_contract(info: CalibratorInfo, seed: int = 0) -> None:
    """Assert the contract for the registered entry ``info`` on :func:`contract_distributions`."""
    assert get_calibrator(info.name).info is info, f"{info.name} is not the registered entry"
    assert info.trt_algorithm in ALGORITHMS, f"{info.name}: TensorRT algorithm {info.trt_algorithm!r} not in {ALGORITHMS}"
    assert info.cost >= 0 and math.isfinite(info.cost), f"{info.name}: cost must be a finite number >= 0"
    if info.arg_name is not None:
        assert info.arg_name in info.defaults, f"{info.name}: parameter {info.arg_name!r} needs a default"
        low, high = info.arg_range or (-math.inf, math.inf)
        assert low <= info.defaults[info.arg_name] <= high, f"{info.name}: the default is outside its range"
        parsed = get_calibrator(f"{info.name}:{info.defaults[info.arg_name]}")
        assert get_calibrator(parsed.label).params == parsed.params, f"{info.name}: its label does not parse back"
    calibrator = Calibrator(info, dict(info.defaults))
    for shape, values in contract_distributions(seed).items():
        stats = TensorStats(f"contract {shape}")
        for chunk in np.array_split(values, 4):
            stats.update(chunk)
        amax = calibrator.amax(stats)
        assert isinstance(amax, float) and math.isfinite(amax) and amax > 0, f"{info.name} on {shape}: {amax!r}"
        largest = stats.absmax + stats.upper / stats.bins  # calibrators read histograms: one bin's resolution
        assert amax <= largest, f"{info.name} on {shape}: {amax} beyond the largest |x| {stats.absmax} and its bin"
        assert calibrator.amax(stats) == amax, f"{info.name} on {shape}: another range for the same statistics"
