import numpy as np
import pytest

from calibkit.stats.histogram import TensorStats


def test_streaming_histogram_equals_one_shot_histogram_after_growth():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(20_000).astype(np.float32) * scale for scale in (0.5, 1.0, 4.0, 2.0)]
    stats = TensorStats("t", bins=1024)
    for batch in batches:
        stats.update(batch)
    everything = np.abs(np.concatenate(batches)).astype(np.float64)
    assert stats.count == everything.size == stats.hist.sum()
    assert stats.absmax == pytest.approx(everything.max())
    assert stats.upper >= stats.absmax
    reference, _ = np.histogram(everything, bins=1024, range=(0, stats.upper))
    # Only values sitting on a bin edge may land one bin over (float32 binning): a tiny fraction.
    assert np.abs(reference - stats.hist).sum() <= 1e-3 * everything.size


def test_min_max_and_signed_values_are_tracked():
    stats = TensorStats("t", bins=64)
    stats.update(np.array([-3.0, 1.0], np.float32))
    stats.update(np.array([[2.0, 0.5]], np.float32))
    assert (stats.min, stats.max, stats.absmax, stats.count) == (-3.0, 2.0, 3.0, 4)


def test_zeros_before_any_range_are_kept_in_bin_zero():
    stats = TensorStats("t", bins=16)
    stats.update(np.zeros(10, np.float32))
    assert stats.upper == 0.0 and stats.absmax == 0.0
    stats.update(np.array([1.0, 2.0], np.float32))
    assert stats.hist[0] == 10 and stats.hist.sum() == 12


def test_nonfinite_values_are_counted_not_binned():
    stats = TensorStats("t", bins=16)
    stats.update(np.array([np.nan, 1.0, np.inf, -2.0], np.float32))
    assert stats.nonfinite == 2 and stats.count == 2 and stats.absmax == 2.0


def test_memory_does_not_grow_with_batches():
    stats = TensorStats("t", bins=256)
    for k in range(50):
        stats.update(np.full(1000, float(k + 1), np.float32))
    assert stats.hist.shape == (256,) and stats.hist.sum() == 50_000


def test_resampled_keeps_the_total_and_spans_absmax():
    stats = TensorStats("t", bins=512)
    stats.update(np.random.default_rng(1).exponential(size=10_000).astype(np.float32))
    counts, edges = stats.resampled(100)
    assert counts.sum() == pytest.approx(10_000)
    assert edges[-1] == pytest.approx(stats.absmax) and len(counts) == 100


def test_bins_must_be_power_of_two():
    with pytest.raises(ValueError):
        TensorStats("t", bins=1000)


def test_merge_of_parts_equals_stats_of_the_whole():
    rng = np.random.default_rng(7)
    parts = [rng.standard_normal(5000).astype(np.float32) * s for s in (0.3, 5.0, 1.0)]
    whole = TensorStats("t", bins=256)
    for part in parts:
        whole.update(part)
    pieces = []
    for part in parts:
        piece = TensorStats("t", bins=256)
        piece.update(part)
        pieces.append(piece)
    merged = pieces[0].merge(pieces[1]).merge(pieces[2])
    assert merged.upper == whole.upper and merged.count == whole.count
    assert (merged.min, merged.max) == (whole.min, whole.max)
    np.testing.assert_array_equal(merged.hist, whole.hist)


def test_merge_with_empty_and_all_zero_parts():
    data = TensorStats("t", bins=64)
    data.update(np.array([1.0, -3.0], np.float32))
    zeros = TensorStats("t", bins=64)
    zeros.update(np.zeros(5, np.float32))
    merged = zeros.merge(data).merge(TensorStats("t", bins=64))
    assert merged.count == 7 and merged.hist.sum() == 7 and merged.hist[0] == 5 + 0
    assert merged.upper == 4.0
    other_way = data.merge(zeros)
    assert other_way.count == 7 and other_way.hist.sum() == 7 and other_way.hist[0] == 5


def test_upper_is_the_power_of_two_above_absmax():
    stats = TensorStats("t", bins=64)
    stats.update(np.array([3.0], np.float32))
    assert stats.upper == 4.0
    stats.update(np.array([4.0], np.float32))
    assert stats.upper == 8.0


def test_values_just_below_upper_stay_in_the_last_bin():
    stats = TensorStats("t", bins=8)
    stats.update(np.array([np.nextafter(np.float32(4.0), np.float32(0)), 1.0], np.float32))
    assert stats.upper == 4.0 and stats.hist.shape == (8,) and stats.hist[-1] == 1 and stats.hist.sum() == 2


def _signed_reference(values: np.ndarray, stats: TensorStats) -> np.ndarray:
    """The signed histogram ``update`` would build for ``values`` on ``stats``' grid, in the same float32 steps."""
    scaled = values.astype(np.float32) * np.float32(stats.bins / stats.upper) + np.float32(stats.bins)
    return np.bincount(scaled.astype(np.intp), minlength=2 * stats.bins)[: 2 * stats.bins]


@pytest.mark.parametrize("low, high", [(0.0, 6.0), (0.0, np.inf), (-1.0, 2.0), (-np.inf, 0.5)])
def test_clamped_is_the_histogram_of_the_clipped_values(low, high):
    x = (np.random.default_rng(2).standard_normal(40_000) * 4).astype(np.float32)
    stats = TensorStats("x", bins=512)
    stats.update(x[:15_000])
    stats.update(x[15_000:])
    y = np.clip(x, np.float32(low), np.float32(high))
    clamped = stats.clamped("y", low, high)
    np.testing.assert_array_equal(clamped.signed, _signed_reference(y, stats))
    assert (clamped.min, clamped.max, clamped.count) == (float(y.min()), float(y.max()), y.size)
    assert clamped.zeros == (int((x < 0).sum()) if low == 0.0 else 0)


def test_clamped_statistics_merge_like_their_sources():
    rng = np.random.default_rng(4)
    parts = [(rng.standard_normal(3000) * s).astype(np.float32) for s in (1.0, 9.0)]
    pieces = []
    for part in parts:
        piece = TensorStats("x", bins=128)
        piece.update(part)
        pieces.append(piece)
    merged_then_clamped = pieces[0].merge(pieces[1]).clamped("y", 0.0, 6.0)
    clamped_then_merged = pieces[0].clamped("y", 0.0, 6.0).merge(pieces[1].clamped("y", 0.0, 6.0))
    np.testing.assert_array_equal(merged_then_clamped.signed, clamped_then_merged.signed)
    assert merged_then_clamped.zeros == clamped_then_merged.zeros == sum(int((p < 0).sum()) for p in parts)


def test_clamp_of_an_all_zero_tensor():
    zeros = TensorStats("x", bins=16)
    zeros.update(np.zeros(6, np.float32))
    assert zeros.clamped("relu", 0.0).hist[0] == 6
    shifted = zeros.clamped("clip", 1.0, 2.0)
    assert (shifted.min, shifted.max, shifted.zeros, shifted.absmax) == (1.0, 1.0, 0, 1.0)
    assert shifted.hist.sum() == 6 and shifted.upper == 2.0


def test_resampling_keeps_clamped_zeros_in_the_first_bin():
    # A coarse grid (upper 64) under a ReLU6: half the values are exact zeros, and they must not
    # leak into the second of the 2048 bins over [0, 6] the way a uniform spread over [0, w) would.
    x = (np.random.default_rng(6).standard_normal(100_000) * 2).astype(np.float32)
    x[0] = 40.0
    stats = TensorStats("x", bins=1024)
    stats.update(x)
    relu6 = stats.clamped("y", 0.0, 6.0)
    counts, edges = relu6.resampled(2048)
    assert counts[0] >= relu6.zeros == int((x < 0).sum())
    density = counts[5:50].mean()
    assert counts[1] < 3 * density


def test_c_kernel_and_numpy_path_count_identically(monkeypatch):
    import calibkit.stats.histogram as histogram

    if histogram._binning is None:
        pytest.skip("the C binning kernel was not built (no compiler); only the NumPy path is in use")
    rng = np.random.default_rng(9)
    batches = [rng.standard_normal(300_000).astype(np.float32) * s for s in (0.2, 3.0, 1.0)]
    edges = np.float32(4.0) * np.arange(-64, 65, dtype=np.float32) / 64  # values on bin edges
    batches += [edges, np.array([0.0, -0.0, np.nextafter(np.float32(-4), np.float32(0))], np.float32)]
    batches += [np.full(100_003, 1.5, np.float32)]  # one bin hit 100 003 times
    spoiled = rng.uniform(-9.0, 7.0, 10_001).astype(np.float32)  # an odd length: the kernel's scalar tail
    spoiled[[3, 5000, 10_000]] = [np.nan, np.inf, -np.inf]
    batches += [spoiled, np.array([np.nan] * 9 + [2.5], np.float32)]
    results = []
    for kernel in (histogram._binning, None):
        monkeypatch.setattr(histogram, "_binning", kernel)
        stats = TensorStats("t", bins=1024)
        for batch in batches:
            stats.update(batch)
        results.append(stats)
    np.testing.assert_array_equal(results[0].signed, results[1].signed)
    c, numpy = results
    assert (c.min, c.max, c.count, c.nonfinite) == (numpy.min, numpy.max, numpy.count, numpy.nonfinite)
    finite = np.concatenate([b[np.isfinite(b)] for b in batches])
    assert c.nonfinite == 12 and c.signed.sum() == c.count == finite.size
    assert (c.min, c.max) == (finite.min(), finite.max())
