"""A registry of samplers, each ``fn(items, n, seed) -> chosen items``, plus the ``sample`` front door.

Register your own with ``@register_sampler("name")`` or under the ``calibkit.samplers`` entry-point
group. Every sampler returns the chosen items in pool order so outputs do not depend on pick order.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

from calibkit.data.images import ImageItem
from calibkit.errors import CalibkitError
from calibkit.plugins import load_entry_points

SamplerFn = Callable[[Sequence[ImageItem], int, int], list[ImageItem]]
ENTRY_POINT_GROUP = "calibkit.samplers"
_REGISTRY: dict[str, SamplerFn] = {}


def register_sampler(name: str, whole_pool: bool = False) -> Callable[[SamplerFn], SamplerFn]:
    """Decorator: make ``fn(items, n, seed)`` selectable as ``--sampler name``. A ``whole_pool`` sampler
    declares that it returns every item whatever ``n`` (``sample`` then asks it for all of them)."""

    def decorate(fn: SamplerFn) -> SamplerFn:
        fn.whole_pool = whole_pool  # type: ignore[attr-defined]
        _REGISTRY[name] = fn
        return fn

    return decorate


def _load_plugins() -> None:
    from calibkit.samplers import kmeans, simple  # noqa: F401  (register the built-ins)

    load_entry_points(ENTRY_POINT_GROUP, _REGISTRY.setdefault)


def available_samplers() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_sampler(name: str) -> SamplerFn:
    """The registered ``fn(items, n, seed)`` of sampler ``name``."""
    _load_plugins()
    if name not in _REGISTRY:
        raise CalibkitError(f"unknown sampler {name!r}; available: {', '.join(available_samplers())}")
    return _REGISTRY[name]


def sample(items: Sequence[ImageItem], n: int | None, method: str = "random", seed: int = 0) -> list[ImageItem]:
    """Choose ``n`` items with sampler ``method``.

    ``n`` of ``None`` or ``0`` means the whole pool. When ``n`` exceeds the pool, the whole pool is used
    and a warning says so (a smaller set cannot be "more representative" than all of it).
    """
    fn = get_sampler(method)
    if n is not None and n < 0:
        raise CalibkitError(f"--samples must be positive, got {n}")
    if getattr(fn, "whole_pool", False):
        return list(fn(items, len(items), seed))
    if not n:
        return list(items)
    if n >= len(items):
        if n > len(items):
            warnings.warn(f"--samples {n} exceeds the pool of {len(items)} images; using all of them", stacklevel=2)
        return list(items)
    chosen = fn(items, n, seed)
    if len(chosen) != n or len({item.path for item in chosen}) != n:
        raise CalibkitError(f"sampler {method!r} returned {len(chosen)} images instead of {n} distinct ones")
    order = {item.path: index for index, item in enumerate(items)}
    return sorted(chosen, key=lambda item: order[item.path])
