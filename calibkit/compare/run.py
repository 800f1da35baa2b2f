"""Run the FP32 reference and every candidate on the same images and measure drift in the task's terms.

A candidate has a model to measure accuracy and per-layer drift on (for INT8 the TensorRT-target Q/DQ
graph, the artefact a user ships, whose float tensors keep the reference names) and a model to time
(for INT8 the ONNX Runtime target, whose Q/DQ groups ONNX Runtime fuses into integer kernels). Each
batch is decoded once and inferred once per model; the task turns outputs into predictions and its
scorers keep only running sums (and, for detection, the boxes).
Every model output is compared too (SQNR, cosine, max error), whatever the task.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from calibkit.backends import load
from calibkit.backends.base import backend_info
from calibkit.colours import colour_key, method_colours
from calibkit.compare.layers import InlineLayerDrift, LayerDrift, layer_drift, plan_layers
from calibkit.compare.results import CandidateResult, Comparison, ReferenceResult, TaskSummary
from calibkit.data.image_cache import ImageCache, OutputCache
from calibkit.data.images import ImageItem
from calibkit.data.loader import LoadReport, iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.memory import sessions_fit, trim_heap
from calibkit.progress import progress
from calibkit.tasks.base import Scorer, Task

EXAMPLES = 3
# Images of the per-layer drift pass. SQNR sums every element of a tensor, so 50 images hold it within
# 0.3 dB of 200 images' (EfficientNet-Lite0, mse and entropy2: mean 0.1 dB, the same five worst layers;
# 100 images: mean 0.1, at most 0.4 dB) at half the cost of 100, which was a third of a comparison.
LAYER_IMAGES = 50


@dataclass
class Candidate:
    """A model to compare against the reference: ``model`` for accuracy and drift, ``speed_model`` for
    timing where it differs; an INT8 candidate also names its calibrator, its ranges file, ``source``, the
    FP32 graph it was quantized from, and ``exclude``, the node patterns its Q/DQ model keeps in float."""

    name: str
    precision: str
    model: Path
    drift_model: Path | None = None
    speed_model: Path | None = None
    calibrator: str | None = None
    ranges: Path | None = None
    source: Path | None = None
    exclude: tuple[str, ...] = ()


def output_metrics(drifts: Sequence[LayerDrift]) -> dict[str, float]:
    """The lowest output SQNR and the count of non-finite output values: every task's common metrics."""
    sqnr = [d.sqnr_db for d in drifts]
    lowest = min(sqnr) if sqnr else math.inf
    return {"output_sqnr": -math.inf if math.isnan(lowest) else lowest,
            "nonfinite_outputs": float(sum(d.nonfinite for d in drifts))}


def _joined(first: Mapping[str, np.ndarray], rest: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of a batch's first images (run one at a time) followed by those of the rest."""
    if not first or not rest:
        return dict(first or rest)
    return {name: np.concatenate([first[name], rest[name]]) for name in first}


@dataclass
class ComparePart:
    """One process's share of a comparison's pass over images: the task's scorers, the per-output drift
    and, where it ran inline, the per-layer drift; :meth:`merge` adds another share (of later images)."""

    reference_scorer: Scorer
    scorers: dict[str, Scorer]
    output_drift: dict[str, dict[str, LayerDrift]]
    kept: list[ImageItem]
    skipped: int = 0
    layers: dict[str, list[LayerDrift]] = field(default_factory=dict)
    layer_images: int = 0

    def merge(self, other: "ComparePart") -> None:
        self.reference_scorer.merge(other.reference_scorer)
        for name, scorer in self.scorers.items():
            scorer.merge(other.scorers[name])
            for output, drift in self.output_drift[name].items():
                drift.merge(other.output_drift[name][output])
        self.kept.extend(other.kept)
        self.skipped += other.skipped

    @classmethod
    def empty(cls, task: Task, candidates: Sequence[Candidate], outputs: Sequence[str]) -> "ComparePart":
        """A share with nothing scored yet: a scorer and a drift per model output for every candidate."""
        return cls(task.scorer(), {c.name: task.scorer() for c in candidates},
                   {c.name: {o: LayerDrift(o) for o in outputs} for c in candidates}, [])

    def score(self, name: str, ref_pred: Sequence, cand_pred: Sequence, ref_out: Mapping[str, np.ndarray],
              out: Mapping[str, np.ndarray], batch) -> None:
        """One batch of candidate ``name`` against the reference: its task score and each output's drift."""
        self.scorers[name].add(ref_pred, cand_pred, batch)
        for output, drift in self.output_drift[name].items():
            drift.update(ref_out[output], out[output])


def compare_models(
    reference: Path,
    candidates: Sequence[Candidate],
    items: Sequence[ImageItem],
    preprocess: Preprocess,
    task: Task,
    batch_size: int = 8,
    skip_bad: bool = False,
    layer_images: int = LAYER_IMAGES,
    backend: str = "ort-cpu",
    layer_seconds: float | None = None,
    before_layers: Callable[[Comparison], None] | None = None,
) -> Comparison:
    """Task metrics and per-output drift on every image; per-layer drift on the first ``layer_images``
    (fewer for models whose activations are large: see ``LayerPlan.images``).

    Where a whole batch's exposed tensors fit the per-layer memory budget, the per-layer drift is taken in
    the same pass (:class:`~calibkit.compare.layers.InlineLayerDrift`); otherwise a second pass runs every
    model once per image in graph segments (:func:`~calibkit.compare.layers.layer_drift`), handing the
    finished comparison to ``before_layers`` first and starting no image after ``layer_seconds``.
    ``layer_images=0`` skips it. The models run on ``backend``; the per-layer drift, which exposes every
    tensor, always runs on the CPU.
    """
    drift_models, plan, layer_images = layer_plan(reference, candidates, items, preprocess, layer_images)
    inline = layer_images if layer_images and inline_layers(reference, candidates, backend, plan) else 0
    started = time.perf_counter()
    part = compare_part(reference, candidates, items, preprocess, task, batch_size, skip_bad, backend, inline, plan)
    timings = {"outputs_pass_s": time.perf_counter() - started}
    if part.layers or not layer_images:
        return comparison_of(reference, candidates, part, part.layers, part.layer_images, preprocess, task,
                             backend, timings)
    chosen = part.kept[:layer_images]
    comparison = comparison_of(reference, candidates, part, {}, 0, preprocess, task, backend, timings,
                               layers_pending=len(chosen))
    if before_layers is not None:
        before_layers(comparison)
    started = time.perf_counter()
    layers, done = layer_drift(reference, drift_models, chosen, preprocess, plan, deadline=deadline(layer_seconds))
    return with_layers(comparison, layers, done, len(chosen), layer_seconds, time.perf_counter() - started)


def inline_layers(reference: Path, candidates: Sequence[Candidate], backend: str, plan) -> bool:
    """Whether the per-layer drift can be taken in the comparison's own pass: on a CPU backend that exposes
    tensors, a batch's tensors within the inline budget, each candidate's drift model the one compared, and
    every model held at once."""
    info = backend_info(backend)
    return (info.exposes_tensors and not info.on_gpu and InlineLayerDrift.fits(plan)
            and all(c.drift_model in (None, c.model) for c in candidates) and held_together(reference, candidates))


def deadline(seconds: float | None) -> float | None:
    """The ``time.time()`` after which the per-layer pass starts no further image."""
    return None if seconds is None else time.time() + seconds


def with_layers(comparison: Comparison, layers: Mapping[str, list[LayerDrift]], done: int, planned: int,
                seconds: float | None, elapsed: float) -> Comparison:
    """``comparison`` with the separate per-layer pass's drift, saying (and warning) when the time budget
    stopped it before its ``planned`` images."""
    for candidate in comparison.candidates:
        candidate.layers = [d.result() for d in layers.get(candidate.name, [])]
    comparison.layers_pending = None
    comparison.layer_images = done
    comparison.timings["layer_pass_s"] = elapsed
    if done < planned:
        comparison.layer_note = (f"the per-layer pass stopped at its {seconds:g} s time budget (--layer-seconds) "
                                 f"after {done} of {planned} images")
        warnings.warn(comparison.layer_note, stacklevel=2)
    return comparison


def layer_plan(reference: Path, candidates: Sequence[Candidate], items: Sequence[ImageItem], preprocess: Preprocess,
               layer_images: int) -> tuple[dict[str, Path], object, int]:
    """What a comparison's per-layer pass covers: each candidate's drift model, the
    :func:`~calibkit.compare.layers.plan_layers` plan (``None`` without one) and how many images it takes."""
    if not candidates:
        raise CalibkitError("nothing to compare: give at least one candidate (int8:RUN or fp16)")
    drift_models = {c.name: c.drift_model for c in candidates if c.drift_model is not None}
    plan = plan_layers(reference, drift_models, preprocess) if layer_images and drift_models else None
    return drift_models, plan, plan.images(min(layer_images, len(items))) if plan is not None else 0


def held_together(reference: Path, candidates: Sequence[Candidate]) -> bool:
    """Whether the reference's and every candidate's sessions may be held at once
    (:func:`calibkit.memory.sessions_fit`); if not, the models run one at a time."""
    return sessions_fit(reference, 1 + len(candidates))


def compare_part(reference: Path, candidates: Sequence[Candidate], items: Sequence[ImageItem], preprocess: Preprocess,
                 task: Task, batch_size: int = 8, skip_bad: bool = False, backend: str = "ort-cpu",
                 inline_images: int = 0, plan=None, threads: int = 0) -> ComparePart:
    """Each batch of ``items`` decoded once and run once per model; with ``inline_images``, the per-layer
    drift of that many first images in the same pass (``plan``: :func:`plan_layers`). ``threads``: ONNX
    Runtime's per session (0: every core). Models too large to hold together run one at a time."""
    if not held_together(reference, candidates):
        return one_model_at_a_time(reference, candidates, items, preprocess, task, batch_size, skip_bad, backend,
                                   threads)
    drift_models = {c.name: c.drift_model for c in candidates if c.drift_model is not None}
    inline = InlineLayerDrift(reference, drift_models, plan, inline_images) if inline_images else None
    ref_session = load(reference, "fp32", backend, arena=False, spinning=False, threads=threads)
    sessions = {c.name: load(c.model, c.precision, backend, arena=False, spinning=False, qdq_as_written=True,
                             threads=threads) for c in candidates}
    part = ComparePart.empty(task, candidates, ref_session.model_outputs)
    report = LoadReport()
    with progress(len(items), f"comparing {len(candidates)} candidate(s)") as bar:
        for batch in iter_batches(items, preprocess, batch_size, skip_bad=skip_bad, report=report):
            counted, ref_first, cand_first = inline.run(batch.array) if inline is not None else (0, {}, {})
            rest = batch.array[counted:]
            ref_out = _joined(ref_first, ref_session.run(rest) if len(rest) else {})
            ref_pred = task.decode(ref_out, batch)
            part.reference_scorer.add(ref_pred, ref_pred, batch)
            for c in candidates:
                if c.name in cand_first:
                    out = _joined(cand_first[c.name], sessions[c.name].run(rest) if len(rest) else {})
                else:
                    out = sessions[c.name].run(batch.array)
                part.score(c.name, ref_pred, task.decode(out, batch), ref_out, out, batch)
            if inline is not None and not inline.images_left:
                part.layers, part.layer_images, inline = inline.result(), inline.images, None
            part.kept.extend(batch.items)
            bar.update(len(batch.items))
    if not part.kept:
        raise CalibkitError("every image failed to load; nothing to compare")
    if inline is not None:  # fewer images than the per-layer pass asked for
        part.layers, part.layer_images = inline.result(), inline.images - inline.images_left
    part.skipped = len(report.skipped)
    return part


def one_model_at_a_time(reference: Path, candidates: Sequence[Candidate], items: Sequence[ImageItem],
                        preprocess: Preprocess, task: Task, batch_size: int = 8, skip_bad: bool = False,
                        backend: str = "ort-cpu", threads: int = 0) -> ComparePart:
    """:func:`compare_part` holding one model's session at a time: the images decoded once (kept in RAM or
    on disk, :class:`~calibkit.data.image_cache.ImageCache`), the reference's outputs kept the same way,
    then each candidate alone over both. Scores and drift add up in the same image order as in one pass."""
    report = LoadReport()
    images = ImageCache(decode=lambda: iter_batches(items, preprocess, batch_size, skip_bad=skip_bad, report=report))
    session = load(reference, "fp32", backend, arena=False, spinning=False, threads=threads)
    outputs = session.model_outputs
    part = ComparePart.empty(task, candidates, outputs)
    held = OutputCache()
    with progress(len(items), "running the FP32 reference") as bar:
        for batch in images:
            ref_out = session.run(batch.array)
            ref_pred = task.decode(ref_out, batch)
            part.reference_scorer.add(ref_pred, ref_pred, batch)
            held.append({name: ref_out[name] for name in outputs})
            part.kept.extend(batch.items)
            bar.update(len(batch.items))
    if not part.kept:
        raise CalibkitError("every image failed to load; nothing to compare")
    for c in candidates:
        del session
        trim_heap()  # the previous model's weights go back before the next is loaded
        session = load(c.model, c.precision, backend, arena=False, spinning=False, qdq_as_written=True, threads=threads)
        with progress(len(part.kept), f"running {c.name}") as bar:
            for batch, ref_out in zip(images, held):
                out = session.run(batch.array)
                part.score(c.name, task.decode(ref_out, batch), task.decode(out, batch), ref_out, out, batch)
                bar.update(len(batch.items))
    part.skipped = len(report.skipped)
    return part


def comparison_of(reference: Path, candidates: Sequence[Candidate], part: ComparePart,
                  layers: Mapping[str, list[LayerDrift]], layer_images: int, preprocess: Preprocess, task: Task,
                  backend: str, timings: dict, layers_pending: int = 0) -> Comparison:
    """The comparison's results from a (merged) pass and the per-layer drift; ``layers_pending`` images
    still to come from a separate per-layer pass (:func:`with_layers` adds them)."""
    absolute_keys = [m.key for m in task.metrics if not m.versus_fp32]
    label_keys = [m.key for m in task.metrics if m.labels]
    reference_metrics = part.reference_scorer.result()
    colours = method_colours([colour_key(c.calibrator, c.name) for c in candidates])
    results = []
    for c in candidates:
        scorer = part.scorers[c.name]
        drifts = list(part.output_drift[c.name].values())
        results.append(CandidateResult(
            c.name, c.precision, c.calibrator, str(c.model), {**scorer.result(), **output_metrics(drifts)},
            scorer.details(), scorer.examples(preprocess, EXAMPLES, colour=colours[colour_key(c.calibrator, c.name)]),
            [d.result() for d in drifts], [d.result() for d in layers.get(c.name, [])]))
    return Comparison(
        task=TaskSummary(task.name, task.description, task.settings, list(task.metrics)),
        reference=ReferenceResult(str(reference), list(next(iter(part.output_drift.values()))),
                                  {k: reference_metrics.get(k) for k in absolute_keys}),
        images=len(part.kept), skipped_images=part.skipped,
        labelled=any(reference_metrics.get(k) is not None for k in label_keys),
        layer_images=layer_images, preprocess=preprocess.describe(), candidates=results, timings=timings,
        backend=backend, layers_pending=layers_pending or None)
