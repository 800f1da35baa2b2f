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
