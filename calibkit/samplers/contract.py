"""The contract every sampler entry keeps, as one function a plug-in author runs on their own entry
(as :mod:`calibkit.calib.contract` for calibrators): ``fn(items, n, seed)`` returns ``n`` distinct items
of the pool, the same ones for the same seed, and ``sample`` hands them back in pool order."""

from __future__ import annotations

from typing import Sequence

from calibkit.data.images import ImageItem
from calibkit.samplers.registry import available_samplers, get_sampler, sample


def check_sampler_contract(name: str, items: Sequence[ImageItem], n: int, seed: int = 0) -> None:
    """Assert the contract for sampler ``name`` on ``items`` (real images: samplers may read them),
    drawing ``n`` of them (fewer than the pool)."""
    assert name in available_samplers(), f"{name} is not registered"
    assert 0 < n < len(items), "draw fewer items than the pool holds"
    fn = get_sampler(name)
    chosen = fn(list(items), n, seed)
    paths = [item.path for item in chosen]
    assert len(paths) == n == len(set(paths)), f"{name}: {len(paths)} items, {len(set(paths))} distinct, {n} asked"
    assert set(paths) <= {item.path for item in items}, f"{name}: returned items that are not in the pool"
    again = [item.path for item in fn(list(items), n, seed)]
    assert sorted(again, key=str) == sorted(paths, key=str), f"{name}: another draw for the same seed"
    via_front_door = [item.path for item in sample(items, n, name, seed)]
    order = {item.path: i for i, item in enumerate(items)}
    assert via_front_door == sorted(set(paths), key=order.__getitem__), f"{name}: not handed back in pool order"
