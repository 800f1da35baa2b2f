"""Cheap image embeddings for diversity sampling and coverage: standardised colour thumbnails."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from PIL import Image

from calibkit.data.images import ImageItem
from calibkit.data.preprocess import decode_image

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
    global _last
    key = tuple(item.path for item in items)
    if _last is not None and _last[0] == key:
        return _last[1]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = np.stack(list(pool.map(_thumbnail, items)))
    rows -= rows.mean(axis=0)
    rows /= rows.std(axis=0) + 1e-6
    _last = (key, rows)
    return rows


def squared_distances(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every row to every row of ``others`` (rows x others)."""
    return (rows**2).sum(1)[:, None] - 2 * rows @ others.T + (others**2).sum(1)[None, :]
