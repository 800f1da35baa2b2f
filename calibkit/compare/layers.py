"""Per-layer drift between a reference and a candidate model, accumulated streaming over images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from calibkit.backends.onnxruntime import OrtSession
from calibkit.data.images import ImageItem
from calibkit.data.loader import iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.onnx_model import activation_bytes, constant_values, float_activations, load_model
from calibkit.progress import progress

# Bytes per image of exposed tensors (reference plus candidates) held at once in the per-layer pass.
LAYER_GROUP_BYTES = 256 << 20
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

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Fold one batch in; products run in float32 BLAS per batch and add up in float64."""
        ref = np.asarray(reference, dtype=np.float32).reshape(-1)
        cand = np.asarray(candidate, dtype=np.float32).reshape(-1)
        finite = np.isfinite(cand)
        if not finite.all():
            self.nonfinite += int(cand.size - finite.sum())
            cand = np.where(finite, cand, 0.0).astype(np.float32)
        diff = cand - ref
        self.signal += float(np.dot(ref, ref))
        self.noise += float(np.dot(diff, diff))
        self.dot += float(np.dot(ref, cand))
        self.cand_energy += float(np.dot(cand, cand))
        self.max_abs_error = max(self.max_abs_error, float(np.abs(diff).max(initial=0.0)))
        self.ref_absmax = max(self.ref_absmax, float(np.abs(ref).max(initial=0.0)))
        self.count += ref.size

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

    def to_dict(self) -> dict:
        return {
            "tensor": self.name,
            "sqnr_db": self.sqnr_db,
            "cosine": self.cosine,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "nonfinite": self.nonfinite,
        }


def group_by_bytes(sizes: Mapping[str, int], budget: int) -> list[list[str]]:
    """Consecutive tensors packed into groups whose bytes per image stay within ``budget`` (a tensor
    larger than the budget gets a group of its own)."""
    groups: list[list[str]] = []
    used = budget + 1
    for name, size in sizes.items():
        if used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


def layer_drift(
    reference: Path,
    drift_models: Mapping[str, Path],
    items: Sequence[ImageItem],
    preprocess: Preprocess,
    skip_bad: bool = False,
    budget_bytes: int = LAYER_GROUP_BYTES,
) -> dict[str, list[LayerDrift]]:
    """SQNR, cosine and error of every activation the reference shares with each candidate's drift model.

    Images run one at a time; tensors are exposed in groups of at most ``budget_bytes`` per image
    (summed over the reference and the candidates), so memory stays bounded for large inputs. With
    more than one group, the images are decoded once per group. Use :func:`layer_images_for` to size
    ``items``.
    """
    reference_tensors = layer_tensors(reference)
    shared = {name: _produced_in_order(reference_tensors, path) for name, path in drift_models.items()}
    wanted = [t for t in reference_tensors if any(t in names for names in shared.values())]
    drifts = {name: {t: LayerDrift(t) for t in names} for name, names in shared.items()}
    if not wanted or not items:
        return {name: list(d.values()) for name, d in drifts.items()}
    sizes = _exposed_bytes(reference, preprocess, shared)
    groups = group_by_bytes(sizes, budget_bytes)
    bar = progress(len(groups) * len(items), f"per-layer drift ({len(groups)} tensor group(s))")
    for group in groups:
        in_group = set(group)
        ref_session = OrtSession(reference, ["CPUExecutionProvider"], expose=group)
        sessions = {name: OrtSession(drift_models[name], ["CPUExecutionProvider"],
                                     expose=[t for t in names if t in in_group])
                    for name, names in shared.items() if in_group & set(names)}
        for batch in iter_batches(items, preprocess, 1, skip_bad=skip_bad):
            ref_out = ref_session.run(batch.array, group)
            for name, session in sessions.items():
                exposed = [t for t in shared[name] if t in in_group]
                for tensor, value in session.run(batch.array, exposed).items():
                    drifts[name][tensor].update(ref_out[tensor], value)
            bar.update(1)
    bar.close()
    return {name: list(d.values()) for name, d in drifts.items()}


def layer_tensors(model: Path) -> list[str]:
    """The float activations of ``model`` after its input: node outputs that are not constants."""
    graph = load_model(model)
    constants = set(constant_values(graph))
    return [t for t in float_activations(graph)[1:] if t not in constants]


def _exposed_bytes(reference: Path, preprocess: Preprocess, shared: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Bytes per image of each shared tensor, times the number of models that expose it."""
    h, w = preprocess.size
    estimate = activation_bytes(load_model(reference), (1, 3, h, w) if preprocess.layout == "NCHW" else (1, h, w, 3))
    wanted = [t for t in layer_tensors(reference) if any(t in names for names in shared.values())]
    return {t: estimate[t] * (1 + sum(t in names for names in shared.values())) for t in wanted}


def layer_images_for(reference: Path, drift_models: Mapping[str, Path], preprocess: Preprocess, requested: int,
                     traffic_bytes: int = LAYER_TRAFFIC_BYTES) -> int:
    """How many images the per-layer pass runs: ``requested``, fewer when its activations are large."""
    if not requested or not drift_models:
        return 0
    reference_tensors = layer_tensors(reference)
    shared = {name: _produced_in_order(reference_tensors, path) for name, path in drift_models.items()}
    per_image = sum(_exposed_bytes(reference, preprocess, shared).values())
    return min(requested, max(MIN_LAYER_IMAGES, traffic_bytes // max(per_image, 1)))


def _produced_in_order(reference_tensors: Sequence[str], candidate: Path) -> list[str]:
    produced = {out for node in load_model(candidate).graph.node for out in node.output}
    return [name for name in reference_tensors if name in produced]
