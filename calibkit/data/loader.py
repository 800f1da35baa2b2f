"""Batched, order-preserving image loading on a thread pool so decoding keeps up with inference."""

from __future__ import annotations

import os
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from calibkit.data.images import ImageItem
from calibkit.data.preprocess import SKIP_ADVICE, Preprocess, decode_image
from calibkit.errors import CalibkitError


@dataclass
class Batch:
    """Preprocessed images stacked on a new first axis, with the items they came from and each
    decoded image's (width, height) before preprocessing."""

    array: np.ndarray
    items: list[ImageItem]
    sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray | None:
        if any(item.label is None for item in self.items):
            return None
        return np.array([item.label for item in self.items], dtype=np.int64)


@dataclass
class LoadReport:
    """What a loading pass skipped (filled in as batches are consumed)."""

    skipped: list[tuple[ImageItem, str]] = field(default_factory=list)


def _load_one(item: ImageItem, preprocess: Preprocess) -> tuple[np.ndarray, tuple[int, int]]:
    image = decode_image(item.path)
    return preprocess(image), image.size


def iter_batches(
    items: Sequence[ImageItem],
    preprocess: Preprocess,
    batch_size: int = 16,
    workers: int | None = None,
    skip_bad: bool = False,
    report: LoadReport | None = None,
) -> Iterator[Batch]:
    """Yield batches in the order of ``items``; decoding runs ``2 * batch_size`` images ahead.

    Without ``skip_bad`` the first unreadable image raises a :class:`CalibkitError` naming it; with it,
    bad images are left out, recorded in ``report`` and counted in one warning at the end.
    """
    if batch_size < 1:
        raise CalibkitError(f"batch size must be >= 1, got {batch_size}")
    report = report if report is not None else LoadReport()
    workers = workers or min(8, (os.cpu_count() or 2) + 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="calibkit-decode") as pool:
        pending: deque[tuple[ImageItem, Future]] = deque()
        source = iter(items)

        def top_up() -> None:
            while len(pending) < 3 * batch_size:
                item = next(source, None)
                if item is None:
                    return
                pending.append((item, pool.submit(_load_one, item, preprocess)))

        top_up()
        arrays: list[np.ndarray] = []
        batch_items: list[ImageItem] = []
        sizes: list[tuple[int, int]] = []
        while pending:
            item, future = pending.popleft()
            top_up()
            try:
                array, size = future.result()
                arrays.append(array)
                sizes.append(size)
                batch_items.append(item)
            except CalibkitError as exc:
                if not skip_bad:
                    for _, later in pending:
                        later.cancel()
                    raise
                report.skipped.append((item, str(exc)))
            if len(arrays) == batch_size:
                yield Batch(np.stack(arrays), batch_items, sizes)
                arrays, batch_items, sizes = [], [], []
        if arrays:
            yield Batch(np.stack(arrays), batch_items, sizes)
    if report.skipped:
        warnings.warn(
            f"skipped {len(report.skipped)} unreadable image(s) (--skip-bad), first: "
            f"{report.skipped[0][1].removesuffix(SKIP_ADVICE)}",
            stacklevel=2,
        )
