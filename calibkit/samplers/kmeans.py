"""Diversity sampling: cluster the pool's embeddings into ``n`` groups, take the image nearest each centre."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from calibkit.data.images import ImageItem
from calibkit.samplers.embedding import squared_distances, thumbnail_embeddings
from calibkit.samplers.registry import register_sampler


def kmeans_pick(embeddings: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` distinct rows, each the nearest unused row to one k-means centre."""
    from sklearn.cluster import MiniBatchKMeans

    model = MiniBatchKMeans(n_clusters=n, random_state=seed, n_init=3, batch_size=max(1024, 3 * n))
    model.fit(embeddings)
    distances = squared_distances(embeddings, model.cluster_centers_)
    chosen: list[int] = []
    taken = np.zeros(len(embeddings), dtype=bool)
    for centre in np.argsort(distances.min(axis=0)):
        for candidate in np.argsort(distances[:, centre]):
            if not taken[candidate]:
                taken[candidate] = True
                chosen.append(int(candidate))
                break
    return np.sort(np.array(chosen))


@register_sampler("kmeans")
def kmeans_sample(items: Sequence[ImageItem], n: int, seed: int) -> list[ImageItem]:
    """MiniBatchKMeans with ``k = n`` on 16x16 thumbnails (see :mod:`calibkit.samplers.embedding`)."""
    return [items[i] for i in kmeans_pick(thumbnail_embeddings(items), n, seed)]

