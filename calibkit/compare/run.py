"""Run the FP32 reference and every candidate on the same images: accuracy, agreement, per-layer drift.

A candidate has a model to measure accuracy on (for INT8 the ONNX Runtime target, real integer
kernels) and a model to measure per-layer drift on (for INT8 the TensorRT target, whose float tensors
keep the reference names). Everything is accumulated batch by batch; only logits are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from calibkit.backends.onnxruntime import OrtSession
from calibkit.compare.accuracy import accuracy_summary, agreement
from calibkit.compare.layers import LayerDrift
from calibkit.data.images import ImageItem
from calibkit.data.loader import LoadReport, iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.onnx_model import float_activations, load_model
from calibkit.progress import progress


@dataclass
class Candidate:
    """A model to compare against the reference."""

    name: str
    precision: str
    model: Path
    drift_model: Path | None = None
    calibrator: str | None = None
    ranges: Path | None = None


def common_tensors(reference_tensors: Sequence[str], candidate: Path) -> list[str]:
    """The reference's float activations that the candidate graph also produces, in reference order."""
    produced = {out for node in load_model(candidate).graph.node for out in node.output}
    return [name for name in reference_tensors if name in produced]


def compare_models(
    reference: Path,
    candidates: Sequence[Candidate],
    items: Sequence[ImageItem],
    preprocess: Preprocess,
    batch_size: int = 8,
    skip_bad: bool = False,
    layer_images: int = 200,
) -> dict:
    """Accuracy (with labels) and agreement on every image; per-layer drift on the first ``layer_images``.

    Per-layer drift runs every model once more with all shared tensors exposed, the costly part of a
    comparison; a few hundred images pin SQNR down to a fraction of a dB. ``layer_images=0`` skips it.
    """
    if not candidates:
        raise CalibkitError("nothing to compare: give at least one candidate (int8:RUN or fp16)")
    reference_tensors = float_activations(load_model(reference))[1:] if layer_images else []
    layer_names = {
        c.name: common_tensors(reference_tensors, c.drift_model) for c in candidates if layer_images and c.drift_model
    }
    exposed = sorted({name for names in layer_names.values() for name in names})
    ref_session = OrtSession(reference, ["CPUExecutionProvider"], expose=exposed)
    ref_plain = OrtSession(reference, ["CPUExecutionProvider"])
    fast = {c.name: OrtSession(c.model, ["CPUExecutionProvider"]) for c in candidates}
    drift_sessions = {
        name: OrtSession(c.drift_model, ["CPUExecutionProvider"], expose=layer_names[name])
        for c in candidates if (name := c.name) in layer_names
    }
    drifts = {name: {t: LayerDrift(t) for t in names} for name, names in layer_names.items()}
    ref_logits: list[np.ndarray] = []
    cand_logits: dict[str, list[np.ndarray]] = {c.name: [] for c in candidates}
    kept: list[ImageItem] = []
    report = LoadReport()
    with progress(len(items), f"comparing {len(candidates)} candidate(s)") as bar:
        for batch in iter_batches(items, preprocess, batch_size, skip_bad=skip_bad, report=report):
            with_layers = len(kept) < layer_images
            if with_layers:
                ref_out = ref_session.run(batch.array, ref_session.model_outputs + exposed)
            else:
                ref_out = ref_plain.run(batch.array)
            ref_logits.append(ref_out[ref_session.model_outputs[0]].reshape(len(batch.items), -1))
            for c in candidates:
                logits = next(iter(fast[c.name].run(batch.array).values()))
                cand_logits[c.name].append(np.asarray(logits, np.float32).reshape(len(batch.items), -1))
                if with_layers and c.name in drift_sessions:
                    outs = drift_sessions[c.name].run(batch.array, layer_names[c.name])
                    for tensor, drift in drifts[c.name].items():
                        drift.update(ref_out[tensor], outs[tensor])
            kept.extend(batch.items)
            bar.update(len(batch.items))
    if not kept:
        raise CalibkitError("every image failed to load; nothing to compare")
    labels = None if any(i.label is None for i in kept) else np.array([i.label for i in kept])
    reference_logits = np.concatenate(ref_logits)
    ref_acc = accuracy_summary(reference_logits, labels)
    results = []
    for c in candidates:
        logits = np.concatenate(cand_logits[c.name])
        acc = accuracy_summary(logits, labels)
        drop = {f"{k}_drop": ref_acc[k] - acc[k] for k in ("top1", "top5")} if labels is not None else {}
        results.append({
            "name": c.name,
            "precision": c.precision,
            "calibrator": c.calibrator,
            "model": str(c.model),
            "accuracy": {**acc, **drop},
            "agreement": agreement(reference_logits, logits),
            "layers": [d.to_dict() for d in drifts.get(c.name, {}).values()],
        })
    return {
        "reference": {"model": str(reference), "accuracy": ref_acc},
        "images": len(kept),
        "skipped_images": len(report.skipped),
        "labelled": labels is not None,
        "layer_images": min(layer_images, len(kept)),
        "candidates": results,
    }
