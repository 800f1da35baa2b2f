import math

import numpy as np
import pytest

from calibkit.compare.layers import LayerDrift


def test_streamed_metrics_equal_whole_array_metrics():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 40)).astype(np.float32)
    cand = ref + 0.1 * rng.standard_normal(ref.shape).astype(np.float32)
    drift = LayerDrift("t")
    for r, c in zip(ref, cand):
        drift.update(r, c)
    r64, c64 = ref.astype(np.float64), cand.astype(np.float64)
    assert drift.sqnr_db == pytest.approx(10 * math.log10((r64**2).sum() / ((c64 - r64) ** 2).sum()), rel=1e-5)
    assert drift.cosine == pytest.approx((r64 * c64).sum() / np.linalg.norm(r64) / np.linalg.norm(c64), rel=1e-6)
    assert drift.max_abs_error == pytest.approx(np.abs(c64 - r64).max(), rel=1e-6)
    assert drift.max_rel_error == pytest.approx(np.abs(c64 - r64).max() / np.abs(r64).max(), rel=1e-6)


def test_identical_tensors_have_infinite_sqnr():
    drift = LayerDrift("t")
    drift.update(np.ones(4, np.float32), np.ones(4, np.float32))
    assert drift.sqnr_db == math.inf and drift.cosine == pytest.approx(1.0)


def test_non_finite_candidate_values_are_counted_and_the_rest_scored():
    ref = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    cand = np.array([1.0, np.nan, 3.5, np.inf], np.float32)
    drift = LayerDrift("t")
    drift.update(ref, cand)
    assert drift.nonfinite == 2
    assert drift.noise == pytest.approx(2.0**2 + 0.5**2 + 4.0**2)
    assert drift.max_abs_error == pytest.approx(4.0)


def test_c_kernel_and_numpy_path_give_the_same_sums(monkeypatch):
    import calibkit.compare.layers as layers

    if layers._drift is None:
        pytest.skip("the C drift kernel was not built (no compiler); only the NumPy path is in use")
    rng = np.random.default_rng(4)
    ref = rng.standard_normal(100_003).astype(np.float32) * 3  # an odd length: the kernel's scalar tail
    cand = ref + rng.standard_normal(ref.size).astype(np.float32) * 0.05
    cand[[7, 50_000, 100_002]] = [np.nan, np.inf, -np.inf]
    c_sums = layers.candidate_sums(ref, cand)
    monkeypatch.setattr(layers, "_drift", None)
    numpy_sums = layers.candidate_sums(ref, cand)
    assert c_sums[3:] == numpy_sums[3:] and c_sums[4] == 3  # largest |difference| and the count: exact
    assert c_sums[:3] == pytest.approx(numpy_sums[:3], rel=1e-5)
    r64, c64 = ref.astype(np.float64), np.where(np.isfinite(cand), cand, 0).astype(np.float64)
    assert c_sums[:3] == pytest.approx((((c64 - r64) ** 2).sum(), (r64 * c64).sum(), (c64**2).sum()), rel=1e-9)
