import numpy as np
import pytest

from calibkit.calib.percentile import percentile_amax
from calibkit.errors import CalibkitError
from calibkit.stats.histogram import TensorStats


@pytest.mark.parametrize("pct", [99.0, 99.9, 99.99, 99.999])
def test_percentile_matches_numpy_within_one_bin(pct):
    data = np.random.default_rng(1).standard_normal(400_000).astype(np.float32)
    stats = TensorStats("t")
    for chunk in np.array_split(data, 7):
        stats.update(chunk)
    expected = np.percentile(np.abs(data), pct)
    assert percentile_amax(stats, pct) == pytest.approx(expected, abs=stats.upper / stats.bins)


def test_percentile_out_of_range_is_refused():
    stats = TensorStats("t")
    stats.update(np.ones(4, np.float32))
    with pytest.raises(CalibkitError, match="percentile must be in"):
        percentile_amax(stats, 10.0)
