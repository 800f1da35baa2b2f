"""Stages split over a Ray cluster: the statistics pass, the comparison and layer sensitivity.

calibkit's statistics merge exactly (integer histograms on one dyadic grid, :meth:`TensorStats.merge`)
and its comparison scores are sums, so a stage splits into tasks over consecutive shards of images (of
layers, for sensitivity) and this process merges what they return, in shard order:

* statistics: the same numbers as one process, so the same caches, JSON and Q/DQ models byte for byte.
  A task takes whole shards of the sufficiency check's 50 images, so its statistics per shard are one
  process's too; the first task takes enough of them to cover the images whose layer inputs feed weight
  rounding (:mod:`calibkit.stats.moments`) and accumulates those moments exactly as one process does;
* comparison: the same counts (agreement, top-1, CER, boxes, confusion matrices); sums of floats (KL,
  top-5 overlap, SQNR and cosine per layer and output) equal up to the order of summation;
* sensitivity: one task per group of layers, each the computation one process does for them.

Ray runs the tasks (``pip install 'calibkit[ray]'``): :data:`LOCAL` starts an instance on this machine,
``auto`` joins the cluster this machine belongs to, any other address is passed to ``ray.init``. Workers
read the images from their paths, so the folder must be at the same path on every worker (a local
folder for a local instance, a shared filesystem on a cluster); the model travels once, through Ray's
object store. A task whose worker dies is run again (Ray's task retries, :data:`TASK_RETRIES`); a task
that fails on its data stops the command with one line naming the shard and the image.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from calibkit.data.images import ImageItem
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.progress import progress
from calibkit.stats import MEMORY_BUDGET

LOCAL = "local"

# Runs of a task whose worker process died before it finished.
TASK_RETRIES = 3

# Most images per comparison task (there are at least two tasks per CPU), and per task of the per-layer pass.
COMPARE_SHARD = 128
LAYER_SHARD = 25

# Layers per sensitivity task.
SENSITIVITY_SHARD = 8


def check_backend(address: str | None, backend: str) -> None:
    """Refuse Ray with a GPU backend before any work: Ray tasks run on CPU workers."""
    from calibkit.backends.base import backend_info

    if address and not backend_info(backend).ray:
        raise CalibkitError(f"--ray runs its tasks on CPU workers, not on {backend}; drop --backend or --ray")


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise CalibkitError("--ray needs Ray: pip install 'calibkit[ray]'") from exc
    return ray


@contextlib.contextmanager
def connect(address: str = LOCAL) -> Iterator[Any]:
    """Ray, initialised for ``address`` unless this process already is (then left as it was)."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    options = {"include_dashboard": False, "log_to_driver": False}
    try:
        ray.init(**options) if address == LOCAL else ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CalibkitError(f"--ray {address}: cannot reach a Ray cluster ({str(exc).splitlines()[0][:160]}); "
                            "start one with `ray start --head`, or pass --ray without an address") from exc
    try:
        yield ray
    finally:
        ray.shutdown()
        if address == LOCAL:
            remove_local_copies()


def remove_local_copies() -> None:
    """Remove the model copies that workers on this machine wrote of the models this process sent: call
    after shutting down a local Ray instance (never while its workers may still read them)."""
    for folder in _WRITTEN:
        shutil.rmtree(folder, ignore_errors=True)
    _WRITTEN.clear()


# Where workers of a local Ray instance this process started write the models it sent (removed at shutdown).
_WRITTEN: set[Path] = set()


@dataclass(frozen=True)
class ModelFile:
    """A model's bytes, sent once through the object store and written once per worker process."""

    name: str
    data: bytes

    @classmethod
    def of(cls, path: Path) -> "ModelFile":
        model = cls(Path(path).name, Path(path).read_bytes())
        _WRITTEN.add(model.folder())
        return model

    def folder(self) -> Path:
        return Path(tempfile.gettempdir()) / f"calibkit-ray-{hashlib.sha256(self.data).hexdigest()[:16]}"

    def path(self) -> Path:
        """The model as a file on this worker (its name kept: provenance and messages use it)."""
        folder = self.folder()
        target = folder / self.name
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".{self.name}.{id(self)}.tmp"
            partial.write_bytes(self.data)
            partial.replace(target)
        return target


def run_tasks(fn: Callable, shared: Sequence[Any], shards: Sequence[Any], describe: Callable[[int], str],
              desc: str, weights: Sequence[int] | None = None) -> list:
    """``fn(*shared, shard)`` for every shard as Ray tasks (``shared`` put in the object store once);
    results in shard order, a progress bar advanced by ``weights[i]`` as shard ``i`` finishes, and the
    first task error as one :class:`CalibkitError` that starts with ``describe(i)``."""
    ray = _ray()
    remote = ray.remote(max_retries=TASK_RETRIES)(fn)
    refs = [ray.put(value) for value in shared]
    futures = [remote.remote(*refs, shard) for shard in shards]
    index = {future: i for i, future in enumerate(futures)}
    weights = list(weights) if weights is not None else [1] * len(shards)
    results: list = [None] * len(futures)
    pending = list(futures)
    with progress(sum(weights), desc) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index[done[0]]
            try:
                results[i] = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                for future in pending:
                    ray.cancel(future)
                cause = getattr(exc, "cause", None) or exc
                text = str(cause) if isinstance(cause, CalibkitError) else f"{type(cause).__name__}: {cause}"
                raise CalibkitError(f"{describe(i)}: {text.splitlines()[0]}") from None
            bar.update(weights[i])
    return results


def _image_shard(items: Sequence[ImageItem]) -> str:
    return f"{items[0].path.name} .. {items[-1].path.name}" if items else "no images"


def _statistics_task(model: ModelFile, preprocess: Preprocess, shard: tuple):
    from calibkit.stats.collect import collect_part

    items, batch_size, bins, skip_bad, shard_size, moments, memory_budget = shard
    part = collect_part(model.path(), items, preprocess, batch_size, bins, skip_bad=skip_bad, shard_size=shard_size,
                        moments=moments, memory_budget=memory_budget)
    return part, moments


def task_sizes(shards: int, tasks: int, first: int = 0) -> list[int]:
    """Shards per task: ``shards`` over at most ``tasks`` tasks (two per CPU: a task's start, a session
    with every activation exposed, is paid per task, not per shard), whole shards, the first task at
    least ``first`` of them (the images whose layer inputs it accumulates), the rest as even as whole
    shards allow and larger first: every worker ends at about the same time."""
    first = min(first, shards)
    tasks = max(1, min(tasks, shards))
    if first > -(-shards // tasks):
        rest = shards - first
        more = min(tasks - 1, rest)
        return [first] + ([rest // more + (i < rest % more) for i in range(more)] if more else [])
    return [shards // tasks + (i < shards % tasks) for i in range(tasks)]


def task_bounds(sizes: Sequence[int], unit: int, total: int) -> list[tuple[int, int]]:
    """The item range ``(start, stop)`` of each task of ``sizes`` units of ``unit`` items, cut at ``total``."""
    ends = [min(size * unit, total) for size in itertools.accumulate(sizes)]
    return list(zip([0, *ends[:-1]], ends))


def sharded_statistics(model_path: Path, items: Sequence[ImageItem], preprocess: Preprocess, batch_size: int,
                       bins: int, skip_bad: bool = False, shard_size: int = 50, moments=None,
                       address: str = LOCAL, memory_budget: int = MEMORY_BUDGET):
    """:func:`calibkit.stats.collect.collect_statistics` split into Ray tasks of whole ``shard_size``-image
    shards (see the module docstring); ``moments`` is filled as one process would fill it. Each task
    holds to ``memory_budget`` as one process does."""
    from calibkit.stats.collect import assemble

    started = time.perf_counter()
    with connect(address) as ray:
        first = -(-moments.images // shard_size) if moments is not None else 0
        sizes = task_sizes(-(-len(items) // shard_size), 2 * int(ray.cluster_resources().get("CPU", 1)), first)
        bounds = task_bounds(sizes, shard_size, len(items))
        shards = [(list(items[a:b]), batch_size, bins, skip_bad, shard_size, moments if i == 0 else None,
                   memory_budget) for i, (a, b) in enumerate(bounds)]
        results = run_tasks(_statistics_task, (ModelFile.of(model_path), preprocess), shards,
                            lambda i: f"statistics shard {i} ({_image_shard(shards[i][0])})",
                            f"collecting statistics ({len(shards)} Ray tasks)", [b - a for a, b in bounds])
    if moments is not None:
        filled = results[0][1]
        moments.moments, moments.seen = filled.moments, filled.seen
    return assemble(model_path, [part for part, _ in results], preprocess, bins, time.perf_counter() - started, True)


def _compare_task(reference: ModelFile, models: Mapping[str, ModelFile], candidates, preprocess, task, shard: tuple):
    from calibkit.compare.run import compare_part

    items, batch_size, skip_bad = shard
    local = [_with_local_models(c, models) for c in candidates]
    return compare_part(reference.path(), local, items, preprocess, task, batch_size, skip_bad, threads=1)


def _layer_task(reference: ModelFile, models: Mapping[str, ModelFile], candidates, preprocess, plan, deadline, items):
    from calibkit.compare.layers import layer_drift

    local = {c.name: _with_local_models(c, models).drift_model for c in candidates if c.drift_model is not None}
    return layer_drift(reference.path(), local, items, preprocess, plan, deadline=deadline)


def _with_local_models(candidate, models: Mapping[str, ModelFile]):
    from dataclasses import replace

    def local(path):
        return models[str(path)].path() if path is not None else None

    return replace(candidate, model=local(candidate.model), drift_model=local(candidate.drift_model),
                   speed_model=local(candidate.speed_model))


def sharded_comparison(reference: Path, candidates: Sequence, items: Sequence[ImageItem], preprocess: Preprocess,
                       task, batch_size: int = 8, skip_bad: bool = False, layer_images: int | None = None,
                       backend: str = "ort-cpu", address: str = LOCAL, layer_seconds: float | None = None,
                       before_layers=None):
    """:func:`calibkit.compare.run.compare_models` split into Ray tasks of whole batches (two per CPU, at
    about :data:`COMPARE_SHARD` images at most; one ONNX Runtime thread per task, as a task holds one CPU),
    then (the finished comparison handed to ``before_layers`` first) the per-layer pass in tasks of
    :data:`LAYER_SHARD` images; the parts merged in image order."""
    from calibkit.compare.run import LAYER_IMAGES, comparison_of, deadline, layer_plan, with_layers

    _, plan, layer_images = layer_plan(reference, candidates, items, preprocess,
                                       LAYER_IMAGES if layer_images is None else layer_images)
    paths = {str(p) for c in candidates for p in (c.model, c.drift_model, c.speed_model) if p is not None}
    models = {path: ModelFile.of(Path(path)) for path in paths}
    shared = (ModelFile.of(reference), models, list(candidates), preprocess)
    with connect(address) as ray:
        started = time.perf_counter()
        batches = -(-len(items) // batch_size)
        tasks = max(2 * int(ray.cluster_resources().get("CPU", 1)), -(-len(items) // COMPARE_SHARD))
        shards = [(list(items[a:b]), batch_size, skip_bad)
                  for a, b in task_bounds(task_sizes(batches, tasks), batch_size, len(items))]
        parts = run_tasks(_compare_task, (*shared, task), shards,
                          lambda i: f"comparison shard {i} ({_image_shard(shards[i][0])})",
                          f"comparing {len(candidates)} candidate(s) ({len(shards)} Ray tasks)",
                          [len(s[0]) for s in shards])
        merged = parts[0]
        for part in parts[1:]:
            merged.merge(part)
        timings = {"outputs_pass_s": time.perf_counter() - started}
        chosen = merged.kept[:layer_images]
        comparison = comparison_of(reference, candidates, merged, {}, 0, preprocess, task, backend, timings,
                                   layers_pending=len(chosen))
        if not chosen:
            return comparison
        if before_layers is not None:
            before_layers(comparison)
        started = time.perf_counter()
        groups = [chosen[i:i + LAYER_SHARD] for i in range(0, len(chosen), LAYER_SHARD)]
        found = run_tasks(_layer_task, (*shared, plan, deadline(layer_seconds)), groups,
                          lambda i: f"per-layer shard {i} ({_image_shard(groups[i])})",
                          f"per-layer drift ({len(groups)} Ray tasks)", [len(g) for g in groups])
    layers, done = found[0]
    for more, images in found[1:]:
        done += images
        for name, drifts in more.items():
            for drift, other in zip(layers[name], drifts):
                drift.merge(other)
    return with_layers(comparison, layers, done, len(chosen), layer_seconds, time.perf_counter() - started)


def _sensitivity_task(model: ModelFile, ranges, cache, task, weights, exclude, nodes):
    from calibkit.sensitivity.ranking import leave_one_out

    return leave_one_out(model.path(), ranges, cache, task, nodes, weights, exclude)


def sharded_leave_one_out(model: Path, ranges, cache, task, nodes: Sequence[str], weights=None,
                          exclude: Sequence[str] = (), address: str = LOCAL) -> list[dict]:
    """:func:`calibkit.sensitivity.ranking.leave_one_out` in Ray tasks of :data:`SENSITIVITY_SHARD` layers."""
    groups = [list(nodes[i:i + SENSITIVITY_SHARD]) for i in range(0, len(nodes), SENSITIVITY_SHARD)]
    with connect(address):
        shared = (ModelFile.of(model), ranges, cache, task, weights, tuple(exclude))
        found = run_tasks(_sensitivity_task, shared, groups,
                          lambda i: f"sensitivity shard {i} ({groups[i][0]} .. {groups[i][-1]})",
                          f"layer sensitivity ({len(groups)} Ray tasks)", [len(g) for g in groups])
    return [row for rows in found for row in rows]
