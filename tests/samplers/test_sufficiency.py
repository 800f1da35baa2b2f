import numpy as np

from calibkit.calib.registry import parse_methods
from calibkit.samplers.sufficiency import sufficiency
from calibkit.stats.histogram import TensorStats


def make_shards(count, scale_of, seed=0):
    rng = np.random.default_rng(seed)
    shards = []
    for index in range(count):
        shard = {}
        for name in ("a", "b"):
            stats = TensorStats(name, bins=1024)
            stats.update(rng.standard_t(4, 2000).astype(np.float32) * scale_of(index))
            shard[name] = stats
        shards.append(shard)
    return shards


def test_ranges_settle_as_the_subset_grows_and_results_are_seeded():
    shards = make_shards(20, lambda i: 1.0)
    calibrators = parse_methods("percentile:99.9,minmax")
    result = sufficiency(shards, [50] * 20, calibrators, sizes=(50, 250, 1000), bootstrap=4, seed=1)
    assert result == sufficiency(shards, [50] * 20, calibrators, sizes=(50, 250, 1000), bootstrap=4, seed=1)
    for rows in result["methods"].values():
        assert [r["images"] for r in rows] == [50, 250, 1000]
        assert rows[0]["mean_change_pct"] > rows[-1]["mean_change_pct"]
        assert all(r["mean_change_pct"] >= 0 and r["spread_pct"] >= 0 for r in rows)


def test_an_unrepresentative_shard_shows_up_as_movement():
    calm = make_shards(10, lambda i: 1.0, seed=2)
    wild = make_shards(10, lambda i: 8.0 if i == 9 else 1.0, seed=2)
    calibrators = parse_methods("minmax")
    small_calm = sufficiency(calm, [50] * 10, calibrators, sizes=(100,), bootstrap=8)["methods"]["minmax"][0]
    small_wild = sufficiency(wild, [50] * 10, calibrators, sizes=(100,), bootstrap=8)["methods"]["minmax"][0]
    assert small_wild["mean_change_pct"] > small_calm["mean_change_pct"]


def test_a_cost_limit_keeps_the_cheap_calibrators_and_names_the_rest():
    shards = make_shards(6, lambda i: 1.0)
    calibrators = parse_methods("mse,percentile:99.9,minmax")
    unlimited = sufficiency(shards, [50] * 6, calibrators, sizes=(50, 300), bootstrap=2)
    assert set(unlimited["methods"]) == {"minmax", "mse", "percentile-99.9"} and unlimited["left_out"] == {}
    # 2 sizes x 2 draws: percentile costs 4 scans per tensor, minmax 0, mse 440
    limited = sufficiency(shards, [50] * 6, calibrators, sizes=(50, 300), bootstrap=2, max_cost=100)
    assert set(limited["methods"]) == {"minmax", "percentile-99.9"} and list(limited["left_out"]) == ["mse"]
    assert "440 histogram scans" in limited["left_out"]["mse"]
    none_fit = sufficiency(shards, [50] * 6, calibrators, sizes=(50, 300), bootstrap=2, max_cost=1)
    assert list(none_fit["methods"]) == ["minmax"], "a calibrator that costs no scan always fits"
