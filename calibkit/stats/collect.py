"""One ONNX Runtime pass over calibration images that folds every float activation into TensorStats."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx

from calibkit.backends import load
from calibkit.backends.base import backend_info
from calibkit.data.images import ImageItem, file_digest, image_list_hash
from calibkit.data.loader import LoadReport, iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.fileio import read_npz, write_npz_atomic
from calibkit.graph.normalize import normalized_model
from calibkit.graph.onnx_model import activation_bytes, file_sha256, float_activations
from calibkit.memory import trim_heap
from calibkit.progress import progress
from calibkit.stats import MEMORY_BUDGET, device
from calibkit.stats.clamps import Clamp, derivable_clamps, with_clamps
from calibkit.stats.histogram import DEFAULT_BINS, TensorStats
from calibkit.stats.moments import MomentCollector
from calibkit.stats.segments import SegmentedSession, split, weights_apart

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
    segments: int = 1  # the graph's segments under the memory budget (the same statistics however many)

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
    memory_budget: int = MEMORY_BUDGET,
) -> CollectedStats:
    """Run the model's normalised graph (:mod:`calibkit.graph.normalize`) once over ``items`` and return
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
                        moments, backend, memory_budget)
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
    segments: int = 1


class _Folder:
    """Where a pass's tensors go, batch by batch: each shard's histograms and the layer-input moments
    (folded on a thread of their own, in image order, unless the tensors live on the GPU)."""

    def __init__(self, measured: list[str], bins: int, shard_size: int | None, moments: MomentCollector | None,
                 clamps: dict[str, Clamp], segmented: bool, on_gpu: bool) -> None:
        self.measured, self.bins, self.shard_size, self.moments = measured, bins, shard_size, moments
        self.clamps, self.segmented, self.on_gpu = clamps, segmented, on_gpu
        self.shards: list[dict[str, TensorStats]] = [self._new_shard()]
        self.shard_images = [0]
        self.seen: list[ImageItem] = []
        self.moments_left = moments.images - moments.seen if moments is not None else 0
        self.moment_updates: Ordered | None = None
        self.bar = None

    def _new_shard(self) -> dict[str, TensorStats]:
        return {name: TensorStats(name, self.bins) for name in self.measured}

    def _moments(self, call, *args) -> None:
        if self.on_gpu:
            call(*args)
        else:
            self.moment_updates.submit(call, *args)

    def _layer_inputs(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Segment outputs are handed over whole (a clamp a layer reads is exposed); a whole batch derives it.
        return {name: _tensor(name, outputs, self.clamps) for name in self.moments.inputs
                if not self.segmented or name in outputs}

    def start(self) -> None:
        if self.shard_size and self.shard_images[-1] >= self.shard_size:
            self.shards.append(self._new_shard())
            self.shard_images.append(0)

    def values(self, outputs: dict[str, np.ndarray]) -> None:
        """A batch's tensors (all of them, or one segment's) into the histograms and the moments."""
        if self.moments is not None and self.moments_left > 0:
            self._moments(lambda: self.moments.add(self._layer_inputs(outputs)))
        for name in self.measured:
            if name in outputs:
                self.shards[-1][name].update(outputs[name])
        if self.on_gpu:
            device.synchronize()  # the kernels have read ONNX Runtime's buffers, which may now be reused

    def end(self, batch_items: list[ImageItem]) -> None:
        if self.moments is not None and self.moments_left > 0:
            self.moments_left -= len(batch_items)
            self._moments(self.moments.count, len(batch_items))
        self.shard_images[-1] += len(batch_items)
        self.seen.extend(batch_items)
        self.bar.update(len(batch_items))


def collect_part(model_path: Path, items: Sequence[ImageItem], preprocess: Preprocess,
                 batch_size: int = STATS_BATCH_SIZE, bins: int = DEFAULT_BINS, tensors: Sequence[str] | None = None,
                 skip_bad: bool = False, threads: int = 1, shard_size: int | None = None,
                 moments: MomentCollector | None = None, backend: str = "ort-cpu",
                 memory_budget: int = MEMORY_BUDGET) -> PassPart:
    """The pass of :func:`collect_statistics` over ``items``, before its parts are merged: one process's
    share of a pass that may be split over several (:mod:`calibkit.distributed`)."""
    model = normalized_model(Path(model_path)).model
    names = list(tensors) if tensors is not None else float_activations(model)
    clamps = derivable_clamps(model, names)
    by_output = {clamp.output: clamp for clamp in clamps}
    measured = [name for name in names if name not in by_output]
    sizes = activation_bytes(model, (batch_size, *preprocess.input_shape()))
    per_batch = sum(sizes.get(n, 0) for n in measured)
    tensor_budget = tensor_bytes(model, memory_budget - (moments.max_bytes if moments is not None else 0))
    segments = None
    if per_batch > tensor_budget and not backend_info(backend).on_gpu:
        wanted = [*measured, *(n for n in (moments.inputs if moments else []) if n in by_output)]
        light, weights_dir = weights_apart(model)
        # one segment folded while the next runs, and room for what folding one tensor makes of it
        segments = split(light, wanted, sizes, tensor_budget // 3)
        if moments is not None:
            moments.use_layer_streams()  # a segment's layers come before those of earlier tensors
        del model  # its weights are on disk now, each segment's session reads its own share
        session = SegmentedSession(Path(model_path), segments, backend, threads, folder=weights_dir)
    else:
        session = load(Path(model_path), "fp32", backend, expose=measured, threads=threads, model=model)
        del model  # the session holds the weights now; the graph's copy would double them
    on_gpu = getattr(session, "on_gpu", False)
    folder = _Folder(measured, bins, shard_size, moments, by_output, segments is not None, on_gpu)
    report = _fold_batches(session, folder, items, preprocess, batch_size, skip_bad, bool(segments), per_batch)
    shards = [with_clamps({name: stats.on_host() for name, stats in shard.items()}, clamps, names)
              for shard in folder.shards]
    return PassPart(shards, folder.shard_images, folder.seen, [file_digest(item.path) for item in folder.seen],
                    len(report.skipped), len(clamps), len(segments or [None]))


def _fold_batches(session, folder: _Folder, items: Sequence[ImageItem], preprocess: Preprocess, batch_size: int,
                  skip_bad: bool, segmented: bool, per_batch: int) -> LoadReport:
    """Run ``items`` through ``session`` batch by batch into ``folder``; what could not be read."""
    run = session.run_device if folder.on_gpu else session.run
    report = LoadReport()

    def fold_segments(batch_items: list[ImageItem], parts: Iterator[dict[str, np.ndarray]]) -> None:
        """A batch segment by segment, the next segment computed while this one is folded."""
        folder.start()
        pending = inference.submit(next, parts, None)
        while (values := pending.result()) is not None:
            pending = inference.submit(next, parts, None)
            folder.values(values)
            del values
        folder.end(batch_items)
        trim_heap()  # a segment's GBs freed by three threads: glibc keeps them unless asked

    def fold_oldest() -> None:
        batch_items, outputs = queued.popleft()
        folder.start()
        folder.values(outputs.result())
        folder.end(batch_items)

    # Up to two batches are queued for inference on one thread while the histograms of the oldest
    # are updated (ONNX Runtime and the C binning kernel release the GIL), fewer where their exposed
    # activations would pass INFLIGHT_BYTES (none for PP-PicoDet: each result is folded as it comes).
    # One inference at a time on single images measured fastest: the activations of one image stay in
    # cache for the histograms. The layer-input moments of the first images (most of the work of those
    # images) are folded on a third thread, in image order, so the histograms do not wait for them.
    depth = 0 if folder.on_gpu or segmented else max(0, min(2, INFLIGHT_BYTES // max(per_batch, 1) - 1))
    queued: deque[tuple[list[ImageItem], Future]] = deque()
    with (progress(len(items), "collecting statistics") as folder.bar, ThreadPoolExecutor(1) as inference,
          Ordered(max(depth, 1)) as folder.moment_updates):
        for batch in iter_batches(items, preprocess, batch_size, skip_bad=skip_bad, report=report):
            if segmented:
                fold_segments(batch.items, session.run(batch.array))
                continue
            queued.append((batch.items, inference.submit(run, batch.array, folder.measured)))
            if len(queued) > depth:
                fold_oldest()
        while queued:
            fold_oldest()
    return report


def tensor_bytes(model: onnx.ModelProto, memory_budget: int) -> int:
    """What ``memory_budget`` (less what the layer-input moments hold) leaves for exposed tensors once the
    session holds ``model``'s weights: the budget bounds the pass's memory, weights included (a quarter of
    it at least, so that a model whose weights alone pass the budget still runs in segments of some size)."""
    weights = sum(init.ByteSize() for init in model.graph.initializer)
    return max(memory_budget - weights, memory_budget // 4)


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
                          shards if keep_shards else [], shard_images if keep_shards else [],
                          max(part.segments for part in parts))


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
