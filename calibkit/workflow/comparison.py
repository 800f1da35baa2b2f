"""The comparison chain as named stages: FP32 against every candidate in the task's terms, verdicts,
sensitivity and the accuracy budget, what TensorRT-RTX builds, the report, and speed
(:mod:`~calibkit.workflow.speed`); the report's calibration sections come from
:mod:`~calibkit.workflow.sections`."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

from calibkit.artifacts.ranges_json import read_ranges
from calibkit.compare.results import BudgetFit, Comparison, ReportDocument, SensitivityResult
from calibkit.compare.run import Candidate
from calibkit.data.images import ImageItem
from calibkit.data.preprocess import Preprocess
from calibkit.errors import CalibkitError
from calibkit.graph.onnx_model import model_metadata, model_outline, model_outputs
from calibkit.memory import trim_heap
from calibkit.notices import recording
from calibkit.progress import progress
from calibkit.run_folder import SUMMARY
from calibkit.samplers.registry import sample
from calibkit.tasks import OutputInfo, Task, TaskContext, make_task
from calibkit.workflow.calibration import engine_check
from calibkit.workflow.candidates import run_weights
from calibkit.workflow.config import ComparisonOptions
from calibkit.workflow.publish import Publisher
from calibkit.workflow.sections import calibration_warnings, report_sections
from calibkit.workflow.speed import add_speed


def model_task(model: Path, preprocess: Preprocess, name: str | None = "auto",
               options: Mapping[str, str] | None = None, items: Sequence[ImageItem] = ()) -> Task:
    """The task plug-in for ``model`` (detected from its outputs for ``auto``), set up for ``preprocess``."""
    proto = model_outline(model)
    outputs = [OutputInfo(name, shape) for name, shape in model_outputs(proto)]
    labels = [item.label for item in items]
    num_labels = max(labels) + 1 if labels and None not in labels else None
    context = TaskContext(outputs, tuple(preprocess.size), preprocess, dict(options or {}), num_labels,
                          model_metadata(proto))
    task = make_task(name, context)
    check_labels(items, task.label_classes(), model)
    return task


def check_labels(items: Sequence[ImageItem], classes: int | None, model: Path) -> None:
    """Refuse labels naming a class the model does not have, naming the rows (never drop them all)."""
    bad = [item for item in items if classes and item.label is not None and item.label >= classes]
    if bad:
        rows = ", ".join(f"{item.origin or item.path} names class {item.label}" for item in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CalibkitError(f"{rows}{more}: outside {model.name}'s {classes} classes (0-{classes - 1}); "
                            "fix or remove those rows")


@dataclass
class ComparisonState:
    """A comparison as its stages fill it in: the inputs and checked options, then the results, the
    models to time and their speed rows."""

    model: Path
    items: Sequence[ImageItem]
    preprocess: Preprocess
    candidates: Sequence[Candidate]
    report: Path
    task: Task
    config: ComparisonOptions
    rules: tuple
    publish: Publisher
    provenance: dict
    sufficiency: dict | None = None
    comparison: Comparison | None = None
    timed: list[tuple[str, str, Path]] = field(default_factory=list)
    speed: list[dict] = field(default_factory=list)


@recording
def compare_and_report(model: Path, items: Sequence[ImageItem], preprocess: Preprocess, candidates: Sequence[Candidate],
                       report: Path, task: Task, **options) -> ReportDocument:
    """Compare in the task's terms, judge each candidate, optionally rank layer sensitivity and fit an
    accuracy budget, write ``report`` (HTML) and its JSON, then benchmark and write them again: a
    failed benchmark never discards a finished comparison, and a separate per-layer pass starts only once
    the comparison is written. ``options`` are the fields of :class:`~calibkit.workflow.config.ComparisonOptions`,
    checked before any inference. Every model runs and is timed on ``backend``.
    With ``ray`` (an address, or ``local``) the comparison and the sensitivity ranking run as Ray tasks
    (:mod:`calibkit.distributed`). ``engines`` (resolved settings) adds what TensorRT-RTX builds of every
    model (:func:`engine_check`). ``layer_images`` caps the per-layer drift pass (0 skips it; ``None``: the
    default, :data:`calibkit.compare.run.LAYER_IMAGES`) and ``layer_seconds`` its time. Returns what
    ``report.json`` holds, as records (:mod:`calibkit.compare.results`). The work is :data:`STAGES`, each
    recording its time in the comparison's ``timings``."""
    config = ComparisonOptions(**options)
    rules = config.rules(task)
    extras, provenance = report_sections(model, items, preprocess, task, config.run, candidates)
    publish = Publisher(report, task, calibration_warnings(config.run, candidates), provenance, extras)
    state = ComparisonState(Path(model), items, preprocess, candidates, Path(report), task, config, rules, publish,
                            provenance, extras["sufficiency"])
    for stage in STAGES:
        stage(state)
    return ReportDocument(state.comparison, state.speed, provenance, state.sufficiency)


def compare_candidates(state: ComparisonState) -> None:
    """The comparison pass (in Ray tasks with ``ray``), judged; a separate per-layer pass publishes the
    judged comparison before it starts."""
    from calibkit.compare.run import compare_models
    from calibkit.distributed import sharded_comparison

    config, task = state.config, state.task
    compare = partial(sharded_comparison, address=config.ray) if config.ray else compare_models
    layers = {} if config.layer_images is None else {"layer_images": config.layer_images}
    state.comparison = compare(state.model, state.candidates, state.items, state.preprocess, task, config.batch_size,
                               config.skip_bad, backend=config.backend, layer_seconds=config.layer_seconds,
                               before_layers=lambda c: state.publish(judged(c, task, state.rules, config.note)),
                               **layers)
    judged(state.comparison, task, state.rules, config.note)
    trim_heap()
    state.timed = [("fp32", "fp32", state.model)] + [(c.name, c.precision, c.speed_model or c.model)
                                                     for c in state.candidates]


def fit_budget(state: ComparisonState) -> None:
    """With ``accuracy_budget``: the sensitivity ranking and the budget's mixed model
    (:func:`sensitivity_and_budget`), which is timed with the others if one was written."""
    config = state.config
    if config.accuracy_budget is None:
        return
    started = time.perf_counter()
    sensitivity = sensitivity_and_budget(state.model, state.items, state.preprocess, state.task, state.candidates,
                                         state.comparison, config.accuracy_budget, state.report.parent,
                                         config.sensitivity_images, config.budget_metric, config.ray, config.skip_bad)
    state.comparison.sensitivity = sensitivity
    state.comparison.timings["sensitivity_and_budget_s"] = time.perf_counter() - started
    trim_heap()
    if sensitivity.budget.models:
        state.timed.append((sensitivity.name, "int8", Path(sensitivity.budget.models["onnxruntime"])))


def check_engines(state: ComparisonState) -> None:
    """With ``engines``: what TensorRT-RTX builds of every model, the budget's mixed model included."""
    if state.config.engines is None:
        return
    started = time.perf_counter()
    comparison, built = state.comparison, list(state.candidates)
    mixed = comparison.sensitivity
    if mixed is not None and mixed.budget.models:
        built.append(Candidate(mixed.name, "int8", Path(mixed.budget.models["tensorrt"]),
                               calibrator=f"{mixed.calibrator}.mixed"))
    engine = comparison.engine = engine_check(state.model, built, state.preprocess, state.config.engines,
                                              state.report.parent)
    engine["kept_float_for_tensorrt"] = sorted({
        node for c in state.candidates if c.ranges is not None and (c.ranges.parent / SUMMARY).is_file()
        for node in json.loads((c.ranges.parent / SUMMARY).read_text(encoding="utf-8")).get(
            "kept float for TensorRT", [])})
    state.provenance["TensorRT-RTX engine check"] = f"TensorRT-RTX {engine['tensorrt_rtx_version']}, {engine['target']}"
    comparison.timings["engine_check_s"] = time.perf_counter() - started


def publish_comparison(state: ComparisonState) -> None:
    """The report, complete but for speed: what a failed benchmark leaves."""
    state.publish(state.comparison)


def time_models(state: ComparisonState) -> None:
    """Every model timed side by side (:func:`~calibkit.workflow.speed.add_speed`) and the report written
    again with the speed; a failed benchmark is said in the report and leaves the comparison as it was."""
    config = state.config
    if not config.batch_sizes:
        return
    try:
        state.speed = add_speed(state.comparison, state.timed, state.model, state.preprocess, config.batch_sizes,
                                config.backend)
    except CalibkitError as exc:
        state.comparison.speed_error = str(exc)
        warnings.warn(f"benchmark failed ({exc}); the report holds the comparison without speed", stacklevel=2)
    state.publish(state.comparison, state.speed)


# What compare_and_report does, in order; each stage reads and fills its ComparisonState.
STAGES = (compare_candidates, fit_budget, check_engines, publish_comparison, time_models)


def judged(comparison: Comparison, task: Task, rules: tuple, note: str | None) -> Comparison:
    """``comparison`` with its rules and each candidate's verdict (``rules``: :func:`rules_for`), and ``note``."""
    from calibkit.tasks.verdict import degraded_rules, judge

    unusable_rules, gate_rules = rules
    comparison.rules = {"unusable_if": [str(r) for r in unusable_rules], "fail_on": [str(r) for r in gate_rules],
                        "degraded_if": [str(r) for r in degraded_rules(task)]}
    for c in comparison.candidates:
        c.verdict = judge(c.metrics, unusable_rules, gate_rules, degraded_rules(task))
    comparison.note = note or None
    return comparison


def calibration_overlap(items: Sequence[ImageItem], candidates: Sequence[Candidate],
                        exclude: bool = False) -> tuple[list[ImageItem], str | None]:
    """The evaluation items (without the images any INT8 candidate was calibrated on, with ``exclude``)
    and a sentence for the report when the two sets overlap."""
    used: set[Path] = set()
    for candidate in candidates:
        listed = candidate.ranges.parent / "images.txt" if candidate.ranges is not None else None
        if listed is not None and listed.is_file():
            used.update(Path(line).resolve() for line in listed.read_text(encoding="utf-8").splitlines() if line)
    shared = [item for item in items if item.path.resolve() in used]
    if not shared:
        return list(items), None
    if not exclude:
        return list(items), (f"{len(shared)} of the {len(items)} evaluation images were also calibration images; "
                             "scores on them can flatter INT8 (--exclude-calibration-images leaves them out).")
    kept = [item for item in items if item.path.resolve() not in used]
    if not kept:
        raise CalibkitError("every evaluation image was a calibration image; pass other --images to evaluate on")
    return kept, f"{len(shared)} calibration images left out of the evaluation; {len(kept)} evaluated."


def image_cache(items: Sequence[ImageItem], preprocess: Preprocess, skip_bad: bool = False):
    """The images preprocessed once for repeated scoring (:class:`~calibkit.data.image_cache.ImageCache`:
    in memory up to its limit, the rest on disk), decoded when first used."""
    from calibkit.data.image_cache import ImageCache
    from calibkit.data.loader import iter_batches

    def decode():
        with progress(len(items), "decoding images") as bar:
            for batch in iter_batches(items, preprocess, 16, skip_bad=skip_bad):
                bar.update(len(batch.array))
                yield batch

    return ImageCache(decode=decode)


def sensitivity_and_budget(model: Path, items: Sequence[ImageItem], preprocess: Preprocess, task: Task,
                           candidates: Sequence[Candidate], comparison: Comparison, budget: float, out: Path,
                           sensitivity_images: int = 100, budget_metric: str = "auto", ray: str | None = None,
                           skip_bad: bool = False) -> SensitivityResult:
    """Rank layers for the best INT8 candidate on a seeded subset (in Ray tasks with ``ray``), then fit
    ``budget`` on all images (the comparison's measurement of that candidate is step 0). Layers the
    candidate keeps in float (``--exclude``) stay float in every variant and are not ranked."""
    from calibkit.distributed import sharded_leave_one_out
    from calibkit.sensitivity.budget import fit_accuracy_budget
    from calibkit.sensitivity.ranking import layer_sensitivity

    results = {c.name: c for c in comparison.candidates}
    int8 = [c for c in candidates if c.precision == "int8" and c.ranges is not None]
    if not int8:
        raise CalibkitError("--accuracy-budget needs an INT8 candidate from a calibration run")
    best = min(int8, key=lambda c: task.budget_loss(results[c.name].metrics, budget_metric)[0])
    ranges, _ = read_ranges(best.ranges)
    subset = sample(list(items), min(sensitivity_images, len(items)), "random", seed=0)
    source = best.source or model
    weights = run_weights(best.ranges.parent)
    started = time.perf_counter()
    rank = partial(sharded_leave_one_out, address=ray) if ray else None
    ranking = layer_sensitivity(source, ranges, image_cache(subset, preprocess, skip_bad), task, weights=weights,
                                rank=rank, exclude=best.exclude)
    ranked_s = time.perf_counter() - started
    fitted = fit_accuracy_budget(source, ranges, image_cache(items, preprocess, skip_bad), task,
                                 [r["node"] for r in ranking], budget, Path(out) / f"{best.calibrator}.mixed",
                                 metric=budget_metric, weights=weights, measured=results[best.name].metrics,
                                 exclude=best.exclude)
    return SensitivityResult(
        f"int8 {best.calibrator} mixed", best.calibrator, len(subset), ranking,
        BudgetFit(budget, fitted.metric, fitted.met, fitted.kept_float, fitted.steps, fitted.models),
        {"ranking": ranked_s, "budget": time.perf_counter() - started - ranked_s})
