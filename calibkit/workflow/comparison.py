"""The comparison chain: FP32 against every candidate in the task's terms, verdicts, sensitivity and the
accuracy budget, speed, what TensorRT-RTX builds, and the report."""

from __future__ import annotations

import json
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

from calibkit.artifacts.ranges_json import read_ranges
from calibkit.backends.base import backend_info
from calibkit.compare.results import BudgetFit, Comparison, ReportDocument, SensitivityResult
from calibkit.compare.run import Candidate
from calibkit.data.images import ImageItem
from calibkit.data.preprocess import Preprocess
from calibkit.engine.summary import EngineSettings
from calibkit.errors import CalibkitError
from calibkit.graph.onnx_model import file_sha256, image_input, model_metadata, model_outline, model_outputs
from calibkit.memory import trim_heap
from calibkit.notices import merge, recording
from calibkit.progress import progress
from calibkit.report.provenance import environment
from calibkit.run_folder import SUMMARY, TIMINGS
from calibkit.samplers.registry import sample
from calibkit.stats.collect import CollectedStats
from calibkit.tasks import OutputInfo, Task, TaskContext, make_task
from calibkit.workflow.calibration import CalibrationRun, engine_check, input_shape
from calibkit.workflow.candidates import run_weights
from calibkit.workflow.config import ComparisonOptions
from calibkit.workflow.publish import Publisher


def bench_models(models: Sequence[tuple[str, str, Path]], input_shape: Sequence[int],
                 batch_sizes: Sequence[int] = (1, 8, 32), backend: str = "ort-cpu") -> list[dict]:
    """Speed rows for ``(name, precision, path)`` models on one backend, timed side by side in rounds
    (:mod:`calibkit.bench.speed`), with speedups over ``fp32`` and their spread. ONNX Runtime sessions
    share one arena, so each run reuses memory as a deployed session does while holding every model at
    once stays near one model's peak."""
    from calibkit.backends import load
    from calibkit.bench.speed import measure_interleaved, with_ratios

    sessions = [(name, precision, load(path, precision, backend, shared_arena=True)) for name, precision, path in models]
    with progress(len(batch_sizes), "benchmarking (interleaved rounds)", unit="batch size") as bar:
        results = []
        for batch in batch_sizes:
            results.extend(measure_interleaved(sessions, input_shape, [batch]))
            bar.update(1)
    return with_ratios(results)


def usable_batch_sizes(model: Path, requested: Sequence[int]) -> list[int]:
    """``requested``, or the model's own batch size (with a warning) when its batch axis is fixed."""
    fixed = image_input(model_outline(model), model).batch
    if fixed is None or list(requested) == [fixed] or not requested:
        return list(requested)
    warnings.warn(f"{model}: the model's batch size is fixed at {fixed}; timing batch {fixed} only", stacklevel=2)
    return [fixed]


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
    ``report.json`` holds, as records (:mod:`calibkit.compare.results`)."""
    from calibkit.compare.run import compare_models
    from calibkit.distributed import sharded_comparison

    config = ComparisonOptions(**options)
    rules = config.rules(task)
    extras, provenance = report_sections(model, items, preprocess, task, config.run, candidates)
    publish = Publisher(report, task, calibration_warnings(config.run, candidates), provenance, extras)
    compare = partial(sharded_comparison, address=config.ray) if config.ray else compare_models
    layers = {} if config.layer_images is None else {"layer_images": config.layer_images}
    comparison = compare(model, candidates, items, preprocess, task, config.batch_size, config.skip_bad,
                         backend=config.backend, layer_seconds=config.layer_seconds,
                         before_layers=lambda doc: publish(judged(doc, task, rules, config.note)), **layers)
    judged(comparison, task, rules, config.note)
    trim_heap()
    models = [("fp32", "fp32", Path(model))] + [(c.name, c.precision, c.speed_model or c.model) for c in candidates]
    if config.accuracy_budget is not None:
        models += add_sensitivity(comparison, model, items, preprocess, task, candidates, config.accuracy_budget,
                                  Path(report).parent, config.sensitivity_images, config.budget_metric, config.ray,
                                  config.skip_bad)
    if config.engines is not None:
        add_engine_check(comparison, model, candidates, preprocess, config.engines, Path(report).parent)
        engine = comparison.engine
        provenance["TensorRT-RTX engine check"] = f"TensorRT-RTX {engine['tensorrt_rtx_version']}, {engine['target']}"
    publish(comparison)
    speed: list[dict] = []
    if config.batch_sizes:
        try:
            speed = add_speed(comparison, models, model, preprocess, config.batch_sizes, config.backend)
        except CalibkitError as exc:
            comparison.speed_error = str(exc)
            warnings.warn(f"benchmark failed ({exc}); the report holds the comparison without speed", stacklevel=2)
        publish(comparison, speed)
    return ReportDocument(comparison, speed, provenance, extras["sufficiency"])


def add_sensitivity(comparison: Comparison, model: Path, items: Sequence[ImageItem], preprocess: Preprocess, task: Task,
                    candidates: Sequence[Candidate], budget: float, out: Path, sensitivity_images: int,
                    budget_metric: str, ray: str | None, skip_bad: bool) -> list[tuple[str, str, Path]]:
    """The sensitivity ranking and the budget's mixed model into ``comparison``
    (:func:`sensitivity_and_budget`); returns the mixed model to time, if one was written."""
    started = time.perf_counter()
    sensitivity = sensitivity_and_budget(model, items, preprocess, task, candidates, comparison, budget, out,
                                         sensitivity_images, budget_metric, ray, skip_bad)
    comparison.sensitivity = sensitivity
    comparison.timings["sensitivity_and_budget_s"] = time.perf_counter() - started
    trim_heap()
    written = sensitivity.budget.models
    return [(sensitivity.name, "int8", Path(written["onnxruntime"]))] if written else []


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


def report_sections(model: Path, items: Sequence[ImageItem], preprocess: Preprocess, task: Task,
                    run: CalibrationRun | None, candidates: Sequence[Candidate]) -> tuple[dict, dict]:
    """The report's calibration sections and its provenance rows (model, task, calibration, environment)."""
    provenance = {"model": str(model), "model_sha256": file_sha256(Path(model)), "images": len(items),
                  "task": task.name, "task settings": json.dumps(task.settings),
                  "preprocess": json.dumps(preprocess.to_dict())}
    extras, calibration_rows = calibration_sections(run, candidates)
    provenance.update(calibration_rows)
    provenance.update(environment([item.path for item in items]))
    return extras, provenance


def add_engine_check(comparison: Comparison, model: Path, candidates: Sequence[Candidate], preprocess: Preprocess,
                     engines: EngineSettings, out: Path) -> None:
    """What TensorRT-RTX builds of every model, the budget's mixed model included, into ``comparison``."""
    started = time.perf_counter()
    built = list(candidates)
    mixed = comparison.sensitivity
    if mixed is not None and mixed.budget.models:
        built.append(Candidate(mixed.name, "int8", Path(mixed.budget.models["tensorrt"]),
                               calibrator=f"{mixed.calibrator}.mixed"))
    comparison.engine = engine_check(model, built, preprocess, engines, out)
    comparison.engine["kept_float_for_tensorrt"] = sorted({
        node for c in candidates if c.ranges is not None and (c.ranges.parent / SUMMARY).is_file()
        for node in json.loads((c.ranges.parent / SUMMARY).read_text(encoding="utf-8")).get(
            "kept float for TensorRT", [])})
    comparison.timings["engine_check_s"] = time.perf_counter() - started


def add_speed(comparison: Comparison, models: Sequence[tuple[str, str, Path]], model: Path, preprocess: Preprocess,
              batch_sizes: Sequence[int], backend: str) -> list[dict]:
    """Time every model side by side, and add the backend's profile of where the time goes."""
    started = time.perf_counter()
    speed = bench_models(models, input_shape(preprocess), usable_batch_sizes(model, batch_sizes), backend)
    comparison.timings["bench_s"] = time.perf_counter() - started
    started = time.perf_counter()
    profiling = backend_info(backend).profiling
    if profiling == "ops":
        comparison.profiles = op_profiles(models, input_shape(preprocess))
    elif profiling == "placement":
        comparison.placement = provider_placement(models, input_shape(preprocess), backend)
    elif profiling == "layers":
        from calibkit.bench.profile import engine_layer_times

        comparison.layer_times = engine_layer_times(models, input_shape(preprocess), backend)
    comparison.timings["profile_s"] = time.perf_counter() - started
    return speed


def calibration_warnings(run: CalibrationRun | None, candidates: Sequence[Candidate]) -> list[str]:
    """What the calibration behind the candidates warned: ``run``'s, else each run folder's ``summary.json``."""
    if run is not None:
        return list(run.warnings)
    folders = dict.fromkeys(c.ranges.parent for c in candidates if c.ranges is not None)
    found: list[str] = []
    for folder in folders:
        if (folder / SUMMARY).is_file():
            merge(found, json.loads((folder / SUMMARY).read_text(encoding="utf-8")).get("warnings", []))
    return found


def calibration_sections(run: CalibrationRun | None, candidates: Sequence[Candidate]) -> tuple[dict, dict]:
    """The report's calibration sections (statistics, thresholds, sufficiency) and provenance rows: from
    ``run`` when this command calibrated, else read back from the run folder the INT8 candidates came from."""
    if run is not None:
        stats, ranges, timings, coverage, enough = run.stats, run.ranges, run.timings, run.coverage, run.sufficiency
    else:
        run_dir = next((c.ranges.parent for c in candidates if c.ranges is not None), None)
        if run_dir is None or not (run_dir / "stats.npz").is_file():
            return {"stats": None, "thresholds": None, "sufficiency": None}, {}
        stats = CollectedStats.load(run_dir / "stats.npz")
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
        ranges = {c.calibrator: read_ranges(c.ranges)[0] for c in candidates
                  if c.ranges is not None and c.ranges.parent == run_dir}
        timings = (json.loads((run_dir / TIMINGS).read_text(encoding="utf-8")) if (run_dir / TIMINGS).is_file()
                   else summary.get("timings", {}))  # runs before timings.json kept them in the summary
        coverage, enough = summary.get("coverage"), summary.get("sufficiency")
    rows = {f"calibration {k}": v for k, v in stats.provenance.items() if k != "preprocess"}
    rows["calibration timings (s)"] = json.dumps({k: round(v, 2) for k, v in timings.items() if k.endswith("_s")})
    if "peak_rss_gb" in timings:  # timings.json also records the run's peak memory and graph segments
        rows["calibration peak RSS (GB)"] = f"{timings['peak_rss_gb']:.2f}"
        rows["calibration graph segments"] = str(timings["statistics_graph_segments"])
    if coverage:
        rows["calibration subset coverage"] = json.dumps(coverage)
    thresholds = {label: {name: r.amax for name, r in table.items()} for label, table in ranges.items()}
    return {"stats": stats.tensors, "sufficiency": enough, "thresholds": thresholds}, rows


def op_profiles(models: Sequence[tuple[str, str, Path]], shape: Sequence[int]) -> dict[str, dict]:
    """Where each INT8 model's CPU time goes (:mod:`calibkit.bench.profile`), by candidate name."""
    from calibkit.bench.profile import profile_ops, summarize

    return {name: summarize(profile_ops(path, shape)) for name, precision, path in models if precision == "int8"}


def provider_placement(models: Sequence[tuple[str, str, Path]], shape: Sequence[int], backend: str) -> dict[str, dict]:
    """Per model, the nodes ONNX Runtime left on the CPU on a GPU ``backend`` (:func:`cpu_fallbacks`)."""
    from calibkit.backends.onnxruntime import CUDA_OPTIONS
    from calibkit.bench.profile import cpu_fallbacks

    providers = [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    return {name: cpu_fallbacks(path, shape, providers) for name, _, path in models}


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
