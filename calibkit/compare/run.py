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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from calibkit.backends.onnxruntime import OrtSession
from calibkit.compare.layers import LayerDrift, layer_drift, plan_layers
from calibkit.data.images import ImageItem
from calibkit.data.loader import LoadReport, iter_batches
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.progress import progress
from calibkit.tasks.base import Task

EXAMPLES = 3


@dataclass
class Candidate:
    """A model to compare against the reference: ``model`` for accuracy and drift, ``speed_model`` for
    timing where it differs; an INT8 candidate also names its calibrator, its ranges file and ``source``,
    the FP32 graph it was quantized from."""

    name: str
    precision: str
    model: Path
    drift_model: Path | None = None
    speed_model: Path | None = None
    calibrator: str | None = None
    ranges: Path | None = None
    source: Path | None = None


def output_metrics(drifts: Sequence[LayerDrift]) -> dict[str, float]:
    """The lowest output SQNR and the count of non-finite output values: every task's common metrics."""
    sqnr = [d.sqnr_db for d in drifts]
    lowest = min(sqnr) if sqnr else math.inf
    return {"output_sqnr": -math.inf if math.isnan(lowest) else lowest,
            "nonfinite_outputs": float(sum(d.nonfinite for d in drifts))}


def compare_models(
    reference: Path,
    candidates: Sequence[Candidate],
    items: Sequence[ImageItem],
    preprocess: Preprocess,
    task: Task,
    batch_size: int = 8,
    skip_bad: bool = False,
    layer_images: int = 200,
) -> dict:
    """Task metrics and per-output drift on every image; per-layer drift on the first ``layer_images``
    (fewer for models whose activations are large: see ``LayerPlan.images``).

    ``layer_images=0`` skips the per-layer pass, the costly part of a comparison (a few hundred images
    pin SQNR down to a fraction of a dB).
    """
    if not candidates:
        raise CalibkitError("nothing to compare: give at least one candidate (int8:RUN or fp16)")
    ref_session = OrtSession(reference, ["CPUExecutionProvider"], arena=False)
    sessions = {c.name: OrtSession(c.model, ["CPUExecutionProvider"], arena=False) for c in candidates}
    outputs = ref_session.model_outputs
    scorers = {c.name: task.scorer() for c in candidates}
    reference_scorer = task.scorer()
    output_drift = {c.name: {o: LayerDrift(o) for o in outputs} for c in candidates}
    kept: list[ImageItem] = []
    report = LoadReport()
    with progress(len(items), f"comparing {len(candidates)} candidate(s)") as bar:
        for batch in iter_batches(items, preprocess, batch_size, skip_bad=skip_bad, report=report):
            ref_out = ref_session.run(batch.array)
            ref_pred = task.decode(ref_out, batch)
            reference_scorer.add(ref_pred, ref_pred, batch)
            for c in candidates:
                out = sessions[c.name].run(batch.array)
                scorers[c.name].add(ref_pred, task.decode(out, batch), batch)
                for name in outputs:
                    output_drift[c.name][name].update(ref_out[name], out[name])
            kept.extend(batch.items)
            bar.update(len(batch.items))
    if not kept:
        raise CalibkitError("every image failed to load; nothing to compare")
    del ref_session, sessions  # weights of every model: the per-layer pass loads its own
    drift_models = {c.name: c.drift_model for c in candidates if c.drift_model is not None}
    layers: dict[str, list[LayerDrift]] = {}
    if layer_images and drift_models:
        plan = plan_layers(reference, drift_models, preprocess)
        layer_images = plan.images(min(layer_images, len(kept)))
        layers = layer_drift(reference, drift_models, kept[:layer_images], preprocess, plan)
    else:
        layer_images = 0
    absolute_keys = [m.key for m in task.metrics if not m.versus_fp32]
    label_keys = [m.key for m in task.metrics if m.labels]
    reference_metrics = reference_scorer.result()
    results = []
    for c in candidates:
        scorer = scorers[c.name]
        drifts = list(output_drift[c.name].values())
        results.append({
            "name": c.name,
            "precision": c.precision,
            "calibrator": c.calibrator,
            "model": str(c.model),
            "metrics": {**scorer.result(), **output_metrics(drifts)},
            "details": scorer.details(),
            "examples": scorer.examples(preprocess, EXAMPLES),
            "outputs": [d.to_dict() for d in drifts],
            "layers": [d.to_dict() for d in layers.get(c.name, [])],
        })
    return {
        "task": {"name": task.name, "description": task.description, "settings": task.settings,
                 "metrics": [vars(m) for m in task.metrics]},
        "reference": {"model": str(reference), "outputs": outputs,
                      "metrics": {k: reference_metrics.get(k) for k in absolute_keys}},
        "images": len(kept),
        "skipped_images": len(report.skipped),
        "labelled": any(reference_metrics.get(k) is not None for k in label_keys),
        "layer_images": layer_images,
        "preprocess": preprocess.describe(),
        "candidates": results,
    }
