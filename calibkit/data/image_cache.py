"""Preprocessed images held for the repeated passes of the sensitivity ranking and the budget search.

Each pass runs another variant of the model on the same images, so they are decoded once and kept. Memory
stays bounded whatever the image count: batches are kept in RAM up to :data:`IN_MEMORY_BYTES`, later ones
are written to a temporary folder and read back one batch at a time, and a pass yields each batch's
outputs as it goes instead of holding every image's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx

from calibkit.backends import load
from calibkit.data.images import ImageItem
from calibkit.data.loader import Batch

# Preprocessed bytes kept in RAM; the rest goes to disk. 1000 photos at 224x224 are 600 MB preprocessed,
# which on top of the budget search's sessions took a comparison past 2 GB; reading a spilled batch back
# from the page cache costs milliseconds against the seconds its inference takes.
IN_MEMORY_BYTES = 256 << 20


@dataclass
class _Spilled:
    """A batch written to disk: its array's file, with the items and sizes kept in memory."""

    path: Path
    items: list[ImageItem]
    sizes: list[tuple[int, int]]

    def load(self) -> Batch:
        return Batch(np.load(self.path), self.items, self.sizes)


class ImageCache:
    """The batches of a pass, in order; iterate it for each pass.

    Give the ``batches``, or ``decode``, which yields them on first use: a budget that the comparison
    already shows met then decodes nothing. Batches past ``in_memory_bytes`` are spilled to disk.
    """

    def __init__(self, batches: list[Batch] | None = None, decode: Callable[[], Iterable[Batch]] | None = None,
                 in_memory_bytes: int = IN_MEMORY_BYTES) -> None:
        if (batches is None) == (decode is None):
            raise ValueError("ImageCache takes either batches or decode")
        self._entries: list[Batch | _Spilled] | None = list(batches) if batches is not None else None
        self._decode, self._limit = decode, in_memory_bytes
        self._folder: tempfile.TemporaryDirectory | None = None

    def _filled(self) -> list[Batch | _Spilled]:
        if self._entries is None:
            entries, held = [], 0
            for batch in self._decode():
                if held + batch.array.nbytes <= self._limit:
                    held += batch.array.nbytes
                    entries.append(batch)
                else:
                    entries.append(self._spill(batch, len(entries)))
            self._entries, self._decode = entries, None
        return self._entries

    def _spill(self, batch: Batch, index: int) -> _Spilled:
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="calibkit-images-")
        path = Path(self._folder.name) / f"{index}.npy"
        np.save(path, batch.array)
        return _Spilled(path, batch.items, batch.sizes)

    @property
    def spilled(self) -> int:
        """How many batches live on disk (after the first pass)."""
        return sum(isinstance(entry, _Spilled) for entry in self._filled())

    def __iter__(self) -> Iterator[Batch]:
        for entry in self._filled():
            yield entry.load() if isinstance(entry, _Spilled) else entry

    @property
    def first(self) -> Batch:
        return next(iter(self))

    def run(self, model: Path, graph: onnx.ModelProto | None = None) -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
        """Each batch with the model's outputs on it (``graph``: the model held in memory, named ``model``),
        one batch at a time. The outputs are copies a caller may keep (the ranking's reference, the budget's
        decoded predictions): an ONNX Runtime output array holds on to its session's memory arena, and
        keeping them kept 0.17 GB of EfficientNet's FP32 session under every sensitivity group."""
        session = load(model, "fp32", "ort-cpu", model=graph, qdq_as_written=True)
        for batch in self:
            yield batch, {name: value.copy() for name, value in session.run(batch.array).items()}

    def __getstate__(self) -> dict:
        # A copy sent to another process carries its batches in full: the sensitivity subset, not the budget's.
        return {"_entries": list(self), "_decode": None, "_limit": self._limit, "_folder": None}


class OutputCache:
    """Model outputs of a pass, batch by batch, for a later pass to read back in order: in RAM up to
    ``in_memory_bytes``, the rest on disk (a segmentation model's outputs are images of their own)."""

    def __init__(self, in_memory_bytes: int = IN_MEMORY_BYTES) -> None:
        self._entries: list[dict[str, np.ndarray] | Path] = []
        self._names: list[str] = []  # the outputs' names, for the batches read back from disk
        self._held, self._limit = 0, in_memory_bytes
        self._folder: tempfile.TemporaryDirectory | None = None

    def append(self, outputs: dict[str, np.ndarray]) -> None:
        size = sum(value.nbytes for value in outputs.values())
        if self._held + size <= self._limit:
            self._held += size
            self._entries.append({name: np.array(value) for name, value in outputs.items()})
            return
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="calibkit-outputs-")
        path = Path(self._folder.name) / f"{len(self._entries)}.npz"
        np.savez(path, **{f"o{index}": value for index, value in enumerate(outputs.values())})
        self._entries.append(path)
        self._names = list(outputs)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for entry in self._entries:
            if isinstance(entry, Path):
                with np.load(entry) as arrays:
                    yield {name: arrays[f"o{index}"] for index, name in enumerate(self._names)}
            else:
                yield entry
