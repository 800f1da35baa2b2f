"""EntropyCalibration2 against a plain, loop-per-candidate reference written from the algorithm's description."""

import numpy as np
import pytest

from calibkit.calib.entropy import entropy2_amax, entropy2_threshold_bin, entropy_divergences
from calibkit.stats.histogram import TensorStats


def reference_divergences(hist, start=128, levels=128):
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    out = []
    for i in range(start, len(hist) + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        q = np.zeros(i)
        for g in range(levels):
            members = [j for j in range(i) if (j * levels) // i == g]
            nonzero = [j for j in members if hist[j] > 0]
            if nonzero:
                share = hist[members].sum() / len(nonzero)
                for j in nonzero:
                    q[j] = share
        p /= total
        if q.sum() == 0:
            out.append(np.inf)
            continue
        q /= q.sum()
        mask = p > 0
        if np.any(q[mask] == 0):
            out.append(np.inf)
            continue
        out.append(float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    return np.array(out)


HISTOGRAMS = {
    "gaussian": lambda rng: np.histogram(np.abs(rng.standard_normal(50_000)), bins=512)[0],
    "heavy_tail": lambda rng: np.histogram(np.abs(rng.standard_t(2, 50_000)), bins=512)[0],
    "sparse": lambda rng: rng.integers(0, 3, 384) * rng.integers(0, 50, 384),
    "relu_like": lambda rng: np.concatenate([[20_000], np.histogram(rng.exponential(size=30_000), bins=300)[0]]),
}


@pytest.mark.parametrize("kind", sorted(HISTOGRAMS))
def test_vectorised_divergences_match_reference(kind):
    hist = HISTOGRAMS[kind](np.random.default_rng(3)).astype(np.float64)
    got = entropy_divergences(hist, start=32, levels=32)
    want = reference_divergences(hist, start=32, levels=32)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-7, atol=1e-10)


def test_chosen_bin_is_the_last_minimum_of_the_reference():
    hist = HISTOGRAMS["heavy_tail"](np.random.default_rng(5)).astype(np.float64)
    hist_fixed = hist.copy()
    hist_fixed[0] = hist_fixed[1]
    want = reference_divergences(hist_fixed, start=64, levels=64)
    best = len(want) - 1 - int(np.argmin(want[::-1]))
    assert entropy2_threshold_bin(hist, start=64, levels=64) == 64 + best


def test_entropy_clips_heavy_tails_but_not_bounded_data():
    rng = np.random.default_rng(0)
    heavy = TensorStats("heavy")
    heavy.update(rng.standard_t(2, 200_000).astype(np.float32))
    assert entropy2_amax(heavy) < 0.5 * heavy.absmax
    uniform = TensorStats("uniform")
    uniform.update(rng.uniform(-1, 1, 200_000).astype(np.float32))
    assert entropy2_amax(uniform) > 0.9 * uniform.absmax


def test_spiky_histograms_make_entropy2_clip_the_tail_and_say_so():
    # What a document page does to PP-PicoDet's first layer: most pixels are the page background, so
    # a few activation values hold most of the histogram, and the text is a long sparse tail. KL
    # divergence rewards keeping the spikes in separate bins over covering the tail: entropy2 clips it.
    import warnings as _warnings

    from calibkit.calib.registry import compute_ranges, get_calibrator, warn_clipping

    rng = np.random.default_rng(0)
    background = rng.choice([0.04, 1.5, 3.07], size=900_000, p=[0.3, 0.3, 0.4])
    text = rng.exponential(6.0, size=100_000)
    stats = TensorStats("first_layer")
    stats.update(np.concatenate([background, text]).astype(np.float32))
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        entropy = compute_ranges({"first_layer": stats}, get_calibrator("entropy2"))["first_layer"]
        percentile = compute_ranges({"first_layer": stats}, get_calibrator("percentile"))["first_layer"]
        warn_clipping("entropy2", {"first_layer": entropy}, ["first_layer"])
        warn_clipping("percentile", {"first_layer": percentile}, ["first_layer"])
    assert entropy.clipped > 0.03 and percentile.clipped < 0.001
    values = np.abs(np.concatenate([background, text]))
    assert entropy.clipped == pytest.approx(float(np.mean(values > entropy.amax * (1 + 1 / 127))), abs=0.01)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("entropy2: 1 quantized tensor(s) clip more than 1%") for m in messages), messages
    assert not any(m.startswith("percentile") for m in messages)
