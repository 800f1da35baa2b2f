"""Every registered sampler keeps the plug-in contract on real photos, and the check catches one that does not."""

import pytest

from calibkit.data.images import discover_images
from calibkit.samplers.contract import check_sampler_contract
from calibkit.samplers.registry import _REGISTRY, available_samplers, get_sampler, register_sampler


@pytest.fixture(scope="module")
def photos(shared_images):
    return discover_images(shared_images)[:60]


@pytest.mark.parametrize("name", [n for n in available_samplers() if not getattr(get_sampler(n), "whole_pool", False)])
def test_every_registered_sampler_keeps_the_contract(name, photos):
    check_sampler_contract(name, photos, 12, seed=3)


def test_the_check_refuses_a_sampler_that_repeats_an_image(monkeypatch, photos):
    monkeypatch.setattr("calibkit.samplers.registry._REGISTRY", dict(_REGISTRY))
    register_sampler("repeats")(lambda items, n, seed: [items[0]] * n)
    with pytest.raises(AssertionError, match="distinct"):
        check_sampler_contract("repeats", photos, 5)


def test_a_whole_pool_sampler_is_asked_for_every_item_whatever_samples_says(photos, monkeypatch):
    from calibkit.samplers.registry import sample

    monkeypatch.setattr("calibkit.samplers.registry._REGISTRY", dict(_REGISTRY))
    asked = []
    register_sampler("everything", whole_pool=True)(lambda items, n, seed: asked.append(n) or list(items))
    assert sample(photos, 5, "everything") == list(photos) and asked == [len(photos)]
    assert sample(photos, 5, "all") == list(photos)
