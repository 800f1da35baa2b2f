"""One ONNX Runtime pass over calibration images that folds every float activation into TensorStats."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from calibkit.backends import load
from calibkit.data.images import ImageItem, file_digest, image_list_hash
from calibkit.data.loader import LoadReport, iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.fileio import read_npz, write_npz_atomic
from calibkit.normalize import normalized_model
from calibkit.onnx_model import activation_bytes, file_sha256, float_activations
from calibkit.progress import progress
from calibkit.stats import device
from calibkit.stats.clamps import Clamp, derivable_clamps, with_clamps
from calibkit.stats.histogram import DEFAULT_BINS, TensorStats
from calibkit.stats.moments import MomentCollector

STATS_BATCH_SIZE = 1  # images per inference on the CPU (BackendInfo.stats_batch)

# Exposed activations of the inferences in flight (computed, not yet folded) stay under about this much:
# PP-PicoDet at 800x608 exposes 0.81 GB per image, EfficientNet-Lite0 at 224x224 40 MB.
INFLIGHT_BYTES = 1 << 30

# Version of the stats.npz layout; 2: signed histograms and exact-zero counts.
STATS_FORMAT = 2


@dataclass
class CollectedStats:
    """Statistics of every collected tensor (in graph order) and where they came from."""

    tensors: dict[str, TensorStats]
    provenance: dict = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    seconds: float = 0.0
    shards: list[dict[str, TensorStats]] = field(default_factory=list)
    shard_images: list[int] = field(default_factory=list)

    def save(self, path: Path) -> Path:
        """Write an ``.npz`` that :meth:`load` reads back; calibrators can then run without images."""
        arrays: dict[str, np.ndarray] = {}
        for index, stats in enumerate(self.tensors.values()):
            arrays.update(stats.to_arrays(f"t{index}"))
        meta = {"format": STATS_FORMAT, "names": list(self.tensors), "provenance": self.provenance,
                "images": self.images}
        return write_npz_atomic(Path(path), arrays, meta)

    @classmethod
    def load(cls, path: Path) -> "CollectedStats":
        arrays, meta = read_npz(path)
        if meta.get("format") != STATS_FORMAT:
            raise CalibkitError(
                f"{path}: statistics written by an older calibkit (|x| histograms only); "
                "run calibkit calibrate again to collect signed ones"
            )
        tensors = {
            name: TensorStats.from_arrays(name, arrays, f"t{index}") for index, name in enumerate(meta["names"])
        }
        return cls(tensors, meta["provenance"], meta["images"])


def collect_statistics(
    model_path: Path,
    items: Sequence[ImageItem],
    preprocess: Preprocess,
    batch_size: int = STATS_BATCH_SIZE,
    bins: int = DEFAULT_BINS,
    tensors: Sequence[str] | None = None,
    skip_bad: bool = False,
    threads: int = 1,
    shard_size: int | None = None,
    moments: MomentCollector | None = None,
    backend: str = "ort-cpu",
) -> CollectedStats:
    """Run the model's normalised graph (:mod:`calibkit.normalize`) once over ``items`` and return
    streaming statistics of ``tensors``.

    ``tensors`` defaults to the graph input plus every float tensor a node produces, which covers all
    inputs and outputs a Q/DQ quantizer may ask a range for. With ``shard_size``, statistics are also
    kept per consecutive shard of about that many images (``shards``), for sufficiency analysis; the
    totals are their exact merge; memory grows by one histogram set per shard, not per image.
    Outputs of Relu/Clip nodes are not run through histograms: their statistics follow from their
    inputs' (see :mod:`calibkit.stats.clamps`).
    ``threads`` is ONNX Runtime's intra-op thread count: one by default, because inference runs beside
    the histogram updates rather than on every core. ``moments``, if given, is fed the inputs of its
    weighted layers from the same inferences (:mod:`calibkit.stats.moments`). On ``backend="ort-cuda"``
    the activations stay in GPU memory and are binned there (:mod:`calibkit.stats.device`).
    """
    start = time.perf_counter()
    part = collect_part(model_path, items, preprocess, batch_size, bins, tensors, skip_bad, threads, shard_size,
                        moments, backend)
    return assemble(model_path, [part], preprocess, bins, time.perf_counter() - start, bool(shard_size))


@dataclass
class PassPart:
    """What one pass over some images found: statistics per shard of images (clamp outputs derived),
    the images read, in order, with a digest of each file, and how many could not be read."""

    shards: list[dict[str, TensorStats]]
    shard_images: list[int]
    seen: list[ImageItem]
    digests: list[str]
    skipped: int
    clamped: int


def collect_part(model_path: Path, items: Sequence[ImageItem], preprocess: Preprocess,
                 batch_size: int = STATS_BATCH_SIZE, bins: int = DEFAULT_BINS, tensors: Sequence[str] | None = None,
                 skip_bad: bool = False, threads: int = 1, shard_size: int | None = None,
                 moments: MomentCollector | None = None, backend: str = "ort-cpu") -> PassPart:
    """The pass of :func:`collect_statistics` over ``items``, before its parts are merged: one process's
    share of a pass that may be split over several (:mod:`calibkit.distributed`)."""
    model = normalized_model(Path(model_path)).model
    names = list(tensors) if tensors is not None else float_activations(model)
    clamps = derivable_clamps(model, names)
    derived = {clamp.output for clamp in clamps}
    by_output = {clamp.output: clamp for clamp in clamps}
    measured = [name for name in names if name not in derived]
    session = load(Path(model_path), "fp32", backend, expose=measured, threads=threads, model=model)
    on_gpu = getattr(session, "on_gpu", False)
    run = session.run_device if on_gpu else session.run
    shards: list[dict[str, TensorStats]] = [{name: TensorStats(name, bins) for name in measured}]
    shard_images = [0]
    report = LoadReport()
    seen: list[ImageItem] = []

    def update_moments(outputs: dict[str, np.ndarray]) -> None:
        moments.update({name: _tensor(name, outputs, by_output) for name in moments.inputs})

    def fold(batch_items: list[ImageItem], outputs: dict[str, np.ndarray]) -> None:
        nonlocal moments_left
        if shard_size and shard_images[-1] >= shard_size:
            shards.append({name: TensorStats(name, bins) for name in measured})
            shard_images.append(0)
        if moments is not None and moments_left > 0:
            moments_left -= len(batch_items)
            if on_gpu:
                update_moments(outputs)
            else:
                moment_updates.submit(update_moments, outputs)
        for name in measured:
            shards[-1][name].update(outputs[name])
        if on_gpu:
            device.synchronize()  # the kernels have read ONNX Runtime's buffers, which may now be reused
        shard_images[-1] += len(batch_items)
        seen.extend(batch_items)
        bar.update(len(batch_items))

    # Up to two batches are queued for inference on one thread while the histograms of the oldest
    # are updated (ONNX Runtime and the C binning kernel release the GIL), fewer where their exposed
    # activations would pass INFLIGHT_BYTES (none for PP-PicoDet: each result is folded as it comes).
    # One inference at a time on single images measured fastest: the activations of one image stay in
    # cache for the histograms. The layer-input moments of the first images (most of the work of those
    # images) are folded on a third thread, in image order, so the histograms do not wait for them.
    sizes = activation_bytes(model, (batch_size, *preprocess.input_shape()))
    per_batch = sum(sizes.get(n, 0) for n in measured)
    depth = 0 if on_gpu else max(0, min(2, INFLIGHT_BYTES // max(per_batch, 1) - 1))
    moments_left = moments.images - moments.seen if moments is not None else 0
    with (progress(len(items), "collecting statistics") as bar, ThreadPoolExecutor(1) as inference,
          Ordered(max(depth, 1)) as moment_updates):
        queued: deque[tuple[list[ImageItem], Future]] = deque()

        def fold_oldest() -> None:
            batch_items, outputs = queued.popleft()
            fold(batch_items, outputs.result())

        for batch in iter_batches(items, preprocess, batch_size, skip_bad=skip_bad, report=report):
            queued.append((batch.items, inference.submit(run, batch.array, measured)))
            if len(queued) > depth:
                fold_oldest()
        while queued:
            fold_oldest()
    shards = [with_clamps({name: stats.on_host() for name, stats in shard.items()}, clamps, names) for shard in shards]
    return PassPart(shards, shard_images, seen, [file_digest(item.path) for item in seen], len(report.skipped),
                    len(clamps))


def assemble(model_path: Path, parts: Sequence[PassPart], preprocess: Preprocess, bins: int, seconds: float,
             keep_shards: bool) -> CollectedStats:
    """One :class:`CollectedStats` from the parts of a pass, in image order: the shards' exact merge."""
    seen = [item for part in parts for item in part.seen]
    if not seen:
        raise CalibkitError("no calibration image could be read; check the --images folder")
    shards = [shard for part in parts for shard in part.shards]
    provenance = {
        "model_sha256": file_sha256(Path(model_path)),
        "model": Path(model_path).name,
        "images_sha256": image_list_hash(seen, [digest for part in parts for digest in part.digests]),
        "num_images": len(seen),
        "skipped_images": sum(part.skipped for part in parts),
        "preprocess": preprocess.to_dict(),
        "histogram_bins": bins,
        "tensors_from_clamped_inputs": parts[0].clamped,
    }
    shard_images = [count for part in parts for count in part.shard_images]
    return CollectedStats(merge_shards(shards), provenance, [str(item.path) for item in seen], seconds,
                          shards if keep_shards else [], shard_images if keep_shards else [])


class Ordered:
    """Calls run one at a time, in submission order, on one thread; ``submit`` waits while ``limit``
    are pending, so the arguments they hold stay bounded. Leaving the block normally waits for every
    call and raises the first failure; leaving it on an exception cancels what has not started."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pool = ThreadPoolExecutor(1)
        self._pending: deque[Future] = deque()

    def submit(self, fn, *args) -> None:
        while len(self._pending) >= self.limit:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def __enter__(self) -> "Ordered":
        return self

    def __exit__(self, kind, *_) -> None:
        try:
            while self._pending and kind is None:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(cancel_futures=True)


def _tensor(name: str, outputs: dict[str, np.ndarray], clamps: dict[str, Clamp]) -> np.ndarray:
    """A tensor of the batch: exposed by ONNX Runtime, or a clamp of one that is (not exposed, see above)."""
    if name in outputs:
        return outputs[name]
    clamp = clamps[name]
    return _tensor(clamp.source, outputs, clamps).clip(clamp.low, clamp.high)


def merge_shards(shards: Sequence[dict[str, TensorStats]]) -> dict[str, TensorStats]:
    """Tensor-wise merge of several statistics sets (exact: see :meth:`TensorStats.merge`)."""
    merged = dict(shards[0])
    for shard in shards[1:]:
        merged = {name: merged[name].merge(stats) for name, stats in shard.items()}
    return merged
