"""Per-layer drift between a reference and a candidate model, accumulated streaming over images."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from calibkit.backends import load
from calibkit.compare.results import TensorDrift
from calibkit.data.images import ImageItem
from calibkit.data.loader import iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.graph.onnx_model import activation_bytes, constant_values, float_activations, load_model, model_outline
from calibkit.memory import sessions_fit, trim_heap
from calibkit.progress import log, log_line, progress
from calibkit.stats.segments import SegmentedSession, split, split_like, weights_apart

try:
    from calibkit.compare import _drift
except ImportError:  # built without a C compiler: candidate_sums falls back to NumPy (same sums to float rounding)
    _drift = None

# Bytes per image of exposed tensors (reference plus candidates) up to which the per-layer drift is taken
# inside the comparison's own pass.
LAYER_GROUP_BYTES = 256 << 20
# Bytes per image of exposed tensors (reference plus candidates) of one graph segment of the separate pass.
LAYER_SEGMENT_BYTES = 512 << 20
# Bytes of exposed tensors the per-layer pass may read over all its images: large models get fewer
# images (at least MIN_LAYER_IMAGES) instead of a pass many times longer than the comparison itself.
LAYER_TRAFFIC_BYTES = 48 << 30
MIN_LAYER_IMAGES = 4


@dataclass
class LayerDrift:
    """Running sums for one tensor; read the metrics from the properties."""

    name: str
    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    cand_energy: float = 0.0
    max_abs_error: float = 0.0
    ref_absmax: float = 0.0
    count: int = 0
    nonfinite: int = 0

    def update(self, reference: np.ndarray, candidate: np.ndarray,
               reference_sums: tuple[float, float] | None = None) -> None:
        """Fold one batch in; products run in float32 BLAS per batch and add up in float64.

        ``reference_sums`` is :func:`reference_sums_of` ``reference``, for callers that score several
        candidates against one reference tensor and compute it once."""
        ref = np.asarray(reference, dtype=np.float32).reshape(-1)
        cand = np.asarray(candidate, dtype=np.float32).reshape(-1)
        noise, dot, energy, largest, nonfinite = candidate_sums(ref, cand)
        signal, ref_absmax = reference_sums if reference_sums is not None else reference_sums_of(ref)
        self.signal += signal
        self.noise += noise
        self.dot += dot
        self.cand_energy += energy
        self.max_abs_error = max(self.max_abs_error, largest)
        self.nonfinite += nonfinite
        self.ref_absmax = max(self.ref_absmax, ref_absmax)
        self.count += ref.size

    def merge(self, other: "LayerDrift") -> None:
        """Add another pass's sums for the same tensor (of other images)."""
        self.signal += other.signal
        self.noise += other.noise
        self.dot += other.dot
        self.cand_energy += other.cand_energy
        self.max_abs_error = max(self.max_abs_error, other.max_abs_error)
        self.ref_absmax = max(self.ref_absmax, other.ref_absmax)
        self.count += other.count
        self.nonfinite += other.nonfinite

    @property
    def sqnr_db(self) -> float:
        """Signal-to-quantization-noise ratio; inf when the tensors are identical."""
        if self.noise == 0:
            return math.inf
        if self.signal == 0:
            return -math.inf
        return 10 * math.log10(self.signal / self.noise)

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.signal * self.cand_energy)
        return self.dot / denom if denom else 1.0

    @property
    def max_rel_error(self) -> float:
        """Largest absolute error relative to the tensor's reference range."""
        return self.max_abs_error / self.ref_absmax if self.ref_absmax else 0.0

    def result(self) -> TensorDrift:
        """The drift as the comparison's record of it."""
        return TensorDrift(self.name, self.sqnr_db, self.cosine, self.max_abs_error, self.max_rel_error,
                           self.nonfinite)


def candidate_sums(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, float, float, int]:
    """``(sum((c - r)^2), sum(r c), sum(c^2), max |c - r|, non-finite count)`` of flat float32 arrays, a
    candidate's NaN or infinite values counted and scored as 0: in one pass of the C kernel
    (``_drift.c``, float64 sums) where it was built, else in NumPy (float32 BLAS products)."""
    if _drift is not None:
        return _drift.drift_sums(np.ascontiguousarray(ref), np.ascontiguousarray(cand))
    nonfinite = 0
    energy = float(np.dot(cand, cand))
    if not math.isfinite(energy):
        finite = np.isfinite(cand)
        nonfinite = int(cand.size - finite.sum())
        cand = np.where(finite, cand, 0.0).astype(np.float32)
        energy = float(np.dot(cand, cand))
    diff = cand - ref
    largest = max(float(diff.max()), -float(diff.min())) if diff.size else 0.0
    return float(np.dot(diff, diff)), float(np.dot(ref, cand)), energy, largest, nonfinite


def reference_sums_of(reference: np.ndarray) -> tuple[float, float]:
    """Energy and largest |x| of a reference tensor: the parts of :meth:`LayerDrift.update` that do not
    depend on the candidate."""
    ref = np.asarray(reference, dtype=np.float32).reshape(-1)
    if not ref.size:
        return 0.0, 0.0
    return float(np.dot(ref, ref)), max(float(ref.max()), -float(ref.min()), 0.0)


@dataclass
class LayerPlan:
    """Which reference activations each candidate's drift model shares (in reference order), and the
    bytes per image of each such tensor times the number of models that expose it."""

    shared: dict[str, list[str]]
    sizes: dict[str, int]

    def images(self, requested: int, traffic_bytes: int = LAYER_TRAFFIC_BYTES) -> int:
        """How many images the per-layer pass runs: ``requested``, fewer when its activations are large."""
        if not requested or not self.sizes:
            return 0
        per_image = sum(self.sizes.values())
        return min(requested, max(MIN_LAYER_IMAGES, traffic_bytes // max(per_image, 1)))


class InlineLayerDrift:
    """The per-layer pass folded into the comparison's own pass over the images, for models whose exposed
    tensors fit one group: while images still count for drift, they run one at a time with every shared
    tensor exposed, and their outputs serve the task metrics too, so no image is decoded or inferred twice.
    (A graph with exposed tensors may fuse fewer kernels: its outputs can differ from a plain session's
    at float rounding level.)"""

    def __init__(self, reference: Path, drift_models: Mapping[str, Path], plan: LayerPlan, images: int) -> None:
        self.tensors = list(plan.sizes)
        self.images = self.images_left = images
        self.exposed = {name: [t for t in names if t in plan.sizes] for name, names in plan.shared.items()}
        self.reference = load(reference, "fp32", "ort-cpu", expose=self.tensors, arena=False,
                                    spinning=False)
        self.sessions = {name: load(path, "fp32", "ort-cpu", expose=self.exposed[name], arena=False,
                                          spinning=False, qdq_as_written=True) for name, path in drift_models.items()}
        self.drifts = {name: {t: LayerDrift(t) for t in names} for name, names in plan.shared.items()}

    @staticmethod
    def fits(plan: LayerPlan, budget_bytes: int = LAYER_GROUP_BYTES) -> bool:
        """True when one image's exposed tensors, over every model, stay within the memory budget."""
        return bool(plan.sizes) and sum(plan.sizes.values()) <= budget_bytes

    def run(self, array: np.ndarray) -> tuple[int, dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
        """Fold the batch's first images still counted into the drift, one image at a time; return how many
        it took and the model outputs of the reference and of each candidate for those images."""
        keep = min(self.images_left, len(array))
        ref_parts, cand_parts = [], {name: [] for name in self.sessions}
        for image in (array[i : i + 1] for i in range(keep)):
            exposed = self.reference.run(image, list(dict.fromkeys(self.reference.model_outputs + self.tensors)))
            sums = {t: reference_sums_of(exposed[t]) for t in self.tensors}
            ref_parts.append({out: exposed[out] for out in self.reference.model_outputs})
            for name, session in self.sessions.items():
                values = session.run(image, list(dict.fromkeys(session.model_outputs + self.exposed[name])))
                for tensor in self.exposed[name]:
                    self.drifts[name][tensor].update(exposed[tensor], values[tensor], sums[tensor])
                cand_parts[name].append({out: values[out] for out in session.model_outputs})
        self.images_left -= keep
        return keep, _stacked(ref_parts), {name: _stacked(parts) for name, parts in cand_parts.items()}

    def result(self) -> dict[str, list[LayerDrift]]:
        return {name: list(d.values()) for name, d in self.drifts.items()}


def _stacked(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}


def plan_layers(reference: Path, drift_models: Mapping[str, Path], preprocess: Preprocess) -> LayerPlan:
    """Read the graphs once: shared activations per candidate, sized by shape inference at the input size."""
    graph = load_model(reference)
    constants = set(constant_values(graph))
    reference_tensors = [t for t in float_activations(graph)[1:] if t not in constants]
    shared = {}
    for name, path in drift_models.items():
        produced = {out for node in model_outline(path).graph.node for out in node.output}
        shared[name] = [t for t in reference_tensors if t in produced]
    h, w = preprocess.size
    estimate = activation_bytes(graph, (1, 3, h, w) if preprocess.layout == "NCHW" else (1, h, w, 3))
    sizes = {}
    for tensor in reference_tensors:
        copies = sum(tensor in names for names in shared.values())
        if copies:
            sizes[tensor] = estimate[tensor] * (1 + copies)
    return LayerPlan(shared, sizes)


def layer_drift(
    reference: Path,
    drift_models: Mapping[str, Path],
    items: Sequence[ImageItem],
    preprocess: Preprocess,
    plan: LayerPlan,
    skip_bad: bool = False,
    budget_bytes: int = LAYER_SEGMENT_BYTES,
    deadline: float | None = None,
) -> tuple[dict[str, list[LayerDrift]], int]:
    """SQNR, cosine and error of every activation the reference shares with each candidate's drift model,
    and how many of ``items`` it took (``plan.images`` sizes them).

    Every model runs once per image, in graph segments (:mod:`calibkit.stats.segments`) whose exposed
    tensors, summed over the reference and the candidates, stay within ``budget_bytes``: the candidates'
    graphs are cut to mirror the reference's, so each segment's tensors are scored and let go before the
    next segment runs. After ``deadline`` (``time.time()``) no further image starts; one always runs.
    """
    drifts = {name: {t: LayerDrift(t) for t in names if t in plan.sizes} for name, names in plan.shared.items()}
    if not plan.sizes or not items:
        return {name: list(d.values()) for name, d in drifts.items()}, 0
    trim_heap()  # what the comparison's sessions left in the C heap goes back before these load
    light, folder = weights_apart(load_model(reference))
    segments = split(light, list(plan.sizes), plan.sizes, budget_bytes)
    groups = [segment.exposed for segment in segments]
    resident = sessions_fit(reference, 1 + sum(bool(d) for d in drifts.values()))
    ref_session = SegmentedSession(reference, segments, spinning=False, resident=resident, folder=folder)
    sessions = {}
    for name, path in drift_models.items():
        if drifts[name]:
            trim_heap()  # the last graph's copies, let go as its segments loaded
            light, folder = weights_apart(load_model(path))
            sessions[name] = SegmentedSession(path, split_like(light, list(drifts[name]), groups), spinning=False,
                                              qdq_as_written=True, resident=resident, folder=folder)
    trim_heap()
    log(f"per-layer drift: {len(items)} image(s), {len(plan.sizes)} tensors in {len(segments)} graph segment(s), "
        f"every model run once per image" + ("" if resident else ", each segment loaded from disk as it runs"))
    done, started = 0, time.perf_counter()
    with progress(len(items), f"per-layer drift ({len(segments)} graph segment(s))") as bar:
        for batch in iter_batches(items, preprocess, 1, skip_bad=skip_bad):
            if done and deadline is not None and time.time() > deadline:
                break
            _fold_image(batch.array, ref_session, sessions, drifts)
            trim_heap()
            done += 1
            bar.update(1)
            log_line(f"per-layer drift: image {done} of {len(items)} done ({time.perf_counter() - started:.0f} s)")
    return {name: scored(name, d.values()) for name, d in drifts.items()}, done


def scored(candidate: str, drifts: Iterable[LayerDrift]) -> list[LayerDrift]:
    """The drifts that saw values: one that never did would read as identical (SQNR inf), so it is left
    out with a warning instead."""
    drifts = list(drifts)
    kept = [d for d in drifts if d.count]
    if len(kept) < len(drifts):
        missed = [d.name for d in drifts if not d.count]
        warnings.warn(f"per-layer drift of {candidate}: {len(missed)} tensor(s) were never scored and are left out "
                      f"({', '.join(missed[:3])}{' ...' if len(missed) > 3 else ''}); please report this model",
                      stacklevel=3)
    return kept


def _fold_image(image: np.ndarray, reference: SegmentedSession, sessions: Mapping[str, SegmentedSession],
                drifts: Mapping[str, Mapping[str, LayerDrift]]) -> None:
    """One image through the reference's segments, each candidate advanced until it has produced what the
    reference segment just produced; a tensor is scored as soon as both sides have it, then let go."""
    streams = {name: session.run(image) for name, session in sessions.items()}
    waiting: dict[str, dict] = {name: {} for name in sessions}  # reference tensors whose candidate side is not out
    early: dict[str, dict] = {name: {} for name in sessions}  # candidate tensors whose reference side is not out
    for ref_values in reference.run(image):
        sums = {tensor: reference_sums_of(value) for tensor, value in ref_values.items()}
        for name, stream in streams.items():
            waiting[name].update({t: (v, sums[t]) for t, v in ref_values.items() if t in drifts[name]})
            _score(waiting[name], early[name], drifts[name])
            while waiting[name] and stream is not None:
                values = next(stream, None)
                if values is None:
                    streams[name] = stream = None
                    break
                early[name].update(values)
                _score(waiting[name], early[name], drifts[name])
    # a candidate's segments left unrun compute only what no shared tensor needs: they are not run


def _score(waiting: dict, early: dict, drifts: Mapping[str, LayerDrift]) -> None:
    for tensor in [t for t in waiting if t in early]:
        value, sums = waiting.pop(tensor)
        drifts[tensor].update(value, early.pop(tensor), sums)
