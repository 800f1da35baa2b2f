"""Cheap image embeddings for diversity sampling and coverage: standardised colour thumbnails."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from PIL import Image

from calibkit.data.images import ImageItem
from calibkit.data.preprocess import decode_image
from calibkit.errors import CalibkitError
from calibkit.progress import progress

THUMBNAIL = 16


def _thumbnail(item: ImageItem) -> np.ndarray:
    image = decode_image(item.path)
    image.draft("RGB", (THUMBNAIL * 4, THUMBNAIL * 4))
    side = min(image.size)
    left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
    small = image.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX, box=(left, top, left + side, top + side))
    return np.asarray(small, dtype=np.float32).reshape(-1)


_last: tuple[tuple, np.ndarray] | None = None


def thumbnail_embeddings(items: Sequence[ImageItem], workers: int = 4) -> np.ndarray:
    """One row per item: the centre square shrunk to 16x16 RGB, each column standardised.

    The last pool's embeddings are kept, so sampling and its coverage report decode the pool once.
    """
    return readable_embeddings(items, workers)[1]


def readable_embeddings(items: Sequence[ImageItem], workers: int = 4,
                        skip_bad: bool = False) -> tuple[list[ImageItem], np.ndarray]:
    """The readable items and their embeddings (see :func:`thumbnail_embeddings`). With ``skip_bad``,
    unreadable images are left out and counted in one warning; without it the first one raises."""
    global _last
    key = tuple(item.path for item in items)
    if _last is not None and _last[0] == key:
        return list(items), _last[1]
    with ThreadPoolExecutor(max_workers=workers) as pool, progress(len(items), "thumbnails for coverage") as bar:
        rows = []
        for row in pool.map(lambda item: _thumbnail_or_none(item, skip_bad), items):
            rows.append(row)
            bar.update(1)
    kept = [item for item, row in zip(items, rows) if row is not None]
    if len(kept) < len(items):
        warnings.warn(f"skipped {len(items) - len(kept)} unreadable image(s) of {len(items)} (--skip-bad)",
                      stacklevel=2)
    if not kept:
        raise CalibkitError("no image of the folder could be read; check the --images folder")
    table = np.stack([row for row in rows if row is not None])
    table -= table.mean(axis=0)
    table /= table.std(axis=0) + 1e-6
    _last = (tuple(item.path for item in kept), table)
    return kept, table


def _thumbnail_or_none(item: ImageItem, skip_bad: bool) -> np.ndarray | None:
    try:
        return _thumbnail(item)
    except CalibkitError:
        if skip_bad:
            return None
        raise


def squared_distances(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every row to every row of ``others`` (rows x others)."""
    return (rows**2).sum(1)[:, None] - 2 * rows @ others.T + (others**2).sum(1)[None, :]
