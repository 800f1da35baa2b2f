from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from calibkit.data.images import ImageItem
from calibkit.errors import CalibkitError
from calibkit.samplers import available_samplers, register_sampler, sample
from calibkit.samplers.coverage import nearest_chosen_distance
from calibkit.samplers.kmeans import kmeans_pick
from calibkit.samplers.registry import _REGISTRY


def pool(n=100, classes=5):
    return [ImageItem(Path(f"/pool/{i:03d}.jpg"), i % classes) for i in range(n)]


def test_builtins_registered():
    assert {"all", "random", "stratified", "kmeans"} <= set(available_samplers())


@pytest.mark.parametrize("method", ["random", "stratified"])
def test_same_seed_same_subset_other_seed_other_subset(method):
    items = pool()
    first, again, other = (sample(items, 20, method, seed) for seed in (1, 1, 2))
    assert first == again and first != other
    assert len({i.path for i in first}) == 20
    assert first == sorted(first, key=lambda i: i.path), "returned in pool order"


def test_stratified_is_balanced_with_remainder_spread():
    counts = Counter(item.label for item in sample(pool(100, 5), 23, "stratified", 0))
    assert sorted(counts.values()) == [4, 4, 5, 5, 5]


def test_stratified_without_labels_falls_back_to_random():
    items = [ImageItem(Path(f"/p/{i}.jpg")) for i in range(30)]
    with pytest.warns(UserWarning, match="falling back to random"):
        assert sample(items, 5, "stratified", 3) == sample(items, 5, "random", 3)


def test_more_samples_than_pool_uses_all_with_a_warning():
    items = pool(10)
    with pytest.warns(UserWarning, match="exceeds the pool of 10"):
        assert sample(items, 50, "random") == items
    assert sample(items, 0, "random") == items
    assert sample(items, 3, "all") == items


def test_unknown_sampler_and_negative_count():
    with pytest.raises(CalibkitError, match="unknown sampler 'smart'; available: .*kmeans"):
        sample(pool(), 5, "smart")
    with pytest.raises(CalibkitError, match="must be positive"):
        sample(pool(), -1, "random")


def test_kmeans_picks_distinct_and_covers_known_clusters_better_than_random():
    rng = np.random.default_rng(0)
    centres = rng.uniform(-50, 50, size=(10, 8))
    sizes = [300, 100, 50, 20, 10, 8, 5, 3, 2, 2]
    points = np.concatenate([c + rng.standard_normal((s, 8)) for c, s in zip(centres, sizes)])
    cluster_of = np.repeat(np.arange(10), sizes)
    chosen = kmeans_pick(points, 10, seed=0)
    assert len(set(chosen.tolist())) == 10
    randoms = [rng.choice(len(points), 10, replace=False) for _ in range(20)]
    random_clusters = np.mean([len(set(cluster_of[r])) for r in randoms])
    assert len(set(cluster_of[chosen])) >= random_clusters + 2
    random_cover = np.mean([nearest_chosen_distance(points, r) for r in randoms])
    assert nearest_chosen_distance(points, chosen) < 0.5 * random_cover


def test_kmeans_sampler_on_real_files_is_deterministic(tmp_path):
    from calibkit.data.images import discover_images
    from tests.conftest import write_images

    write_images(tmp_path, 30, seed=11)
    items = discover_images(tmp_path)
    first = sample(items, 6, "kmeans", seed=4)
    assert first == sample(items, 6, "kmeans", seed=4) and len(set(first)) == 6


def test_user_sampler_plugs_in():
    @register_sampler("first_n")
    def first_n(items, n, seed):
        return list(items[:n])

    try:
        assert sample(pool(), 3, "first_n") == pool()[:3]
    finally:
        _REGISTRY.pop("first_n")
