"""What each command does with its parsed options: wiring to :mod:`calibkit.workflow`, and the lines it prints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from calibkit.cli.defaults import INFERENCE_BATCH_SIZE
from calibkit.engine.commands import engine_settings
from calibkit.errors import CalibkitError
from calibkit.run_folder import folder_lock

if TYPE_CHECKING:
    from calibkit.compare.results import ReportDocument


def _preprocess(args: argparse.Namespace):
    from calibkit.data.preprocess import get_preset
    from calibkit.workflow import model_preprocess, model_preset

    preset = get_preset(args.preset) if args.preset else model_preset(args.model)
    spec = preset.with_overrides(
        mean=args.mean, std=args.std, crop_fraction=args.crop, interpolation=args.interpolation,
        resize=getattr(args, "resize", None), channel_order=getattr(args, "channel_order", None),
        pad_value=getattr(args, "pad_value", None),
    )
    return model_preprocess(args.model, spec, args.size)


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=1))


def _task(args: argparse.Namespace, spec, items=()):
    from calibkit.workflow import model_task

    options = {}
    for pair in args.task_opt:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CalibkitError(f"--task-opt {pair!r}: expected KEY=VALUE, e.g. --task-opt score=0.3")
        options[key.strip().replace("-", "_")] = value.strip()
    if args.postprocess:
        options["postprocess"] = args.postprocess
    task = args.task
    if args.postprocess and task in (None, "auto"):
        task = "detection"
    return model_task(args.model, spec, task, options, items)


def cmd_eval(args: argparse.Namespace) -> int:
    from calibkit.backends import load, require
    from calibkit.data.images import discover_images
    from calibkit.workflow.evaluation import evaluate

    require(args.backend)
    spec = _preprocess(args)
    items = discover_images(args.images, args.labels)
    task = _task(args, spec, items)
    session = load(args.model, "fp32", args.backend)
    result = evaluate(session, items, spec, task, args.batch_size or INFERENCE_BATCH_SIZE, args.skip_bad, desc="eval")
    summary = {
        "model": str(args.model),
        "task": task.name,
        "images": result.images,
        "skipped": result.skipped,
        **result.metrics,
        "images_per_second": round(result.images_per_second, 1),
        "backend": session.backend,
        "preprocess": spec.to_dict(),
    }
    shown = [f"{m.label} {m.format(result.metrics.get(m.key))}" for m in task.metrics
             if result.metrics.get(m.key) is not None]
    if shown:
        print(f"{'  '.join(shown)}  on {result.images} images", file=sys.stderr)
    _print_json(summary)
    return 0


def candidate_specs(text: str) -> list[tuple[str, str]]:
    """``int8:RUN[:m+m],int8:RANGES.json,fp16`` as (kind, rest) pairs, refused (before any export) when a
    part is not understood or is listed twice."""
    specs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        kind, _, rest = part.partition(":")
        if not (kind == "fp16" and not rest) and not (kind == "int8" and rest):
            raise CalibkitError(f"candidate {part!r} not understood; use int8:RUN_DIR[:method+method] or fp16")
        if (kind, rest) in specs:
            raise CalibkitError(f"--candidates names {part} more than once; list each candidate once")
        specs.append((kind, rest))
    if not specs:
        raise CalibkitError("--candidates is empty; use int8:RUN_DIR[:method+method] or fp16")
    return specs


def _parse_candidates(text: str, model: Path, out: Path, exclude: Sequence[str]):
    from calibkit.workflow import fp16_candidate

    candidates = []
    for kind, rest in candidate_specs(text):
        if kind == "fp16":
            candidates.append(fp16_candidate(model, out))
        else:
            candidates.extend(_int8_from_spec(model, rest, out, exclude))
    names = [c.name for c in candidates]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CalibkitError(f"--candidates names {', '.join(repeated)} more than once; list each candidate once")
    return candidates


def _int8_from_spec(model: Path, spec: str, out: Path, exclude: Sequence[str] = ()):
    """INT8 candidates from ``RUN_DIR``, ``RUN_DIR:method+method`` or one ranges JSON; exports the run
    lacks go to ``out``."""
    from calibkit.run_folder import check_not_a_run
    from calibkit.workflow import int8_candidates, ranges_candidate

    if spec.endswith(".json") and Path(spec).is_file():
        return [ranges_candidate(model, Path(spec), out, exclude)]
    run_dir, _, labels = spec.partition(":")
    check_not_a_run(out, [Path(run_dir)])
    return int8_candidates(model, Path(run_dir), labels.split("+") if labels else None, exclude, out)


def _gate(result: ReportDocument) -> int:
    """Exit code 3 when any candidate fails a --fail-on gate."""
    failed = [c for c in result.comparison.candidates if c.verdict.failed_gates]
    for c in failed:
        print(f"calibkit: {c.name} fails {'; '.join(c.verdict.failed_gates)}", file=sys.stderr)
    return 3 if failed else 0


def points_text(loss: float) -> str:
    """A budget loss in words: ``loss 0.50`` or, for a negative loss, ``gain 0.50``."""
    return f"loss {loss:.2f}" if loss >= 0 else f"gain {-loss:.2f}"


def _summarise(result: ReportDocument, report: Path) -> None:
    """The verdict and the task's main metrics per candidate, on stderr."""
    from calibkit.bench.table import speed_text
    from calibkit.tasks.verdict import verdict_line

    comparison = result.comparison
    lines = [f"report: {report}  (task: {comparison.task.name}, {comparison.images} images)"]
    if comparison.sensitivity is not None:
        sens = comparison.sensitivity
        budget = sens.budget
        top = ", ".join(r["node"] for r in sens.ranking[:3])
        lines.append(f"  most sensitive ({sens.calibrator}): {top}")
        chosen = budget.steps[len(budget.kept_float)]
        outcome = "met" if budget.met else f"NOT met by up to {budget.steps[-1]['float_layers']} layers; closest"
        lines.append(f"  budget {budget.budget} {budget.metric} points {outcome} "
                     f"with {chosen['float_layers']} layer(s) in float: {points_text(chosen['loss'])}")
    for c in comparison.candidates:
        shown = [f"{m.key} {m.format(c.metrics.get(m.key))}" for m in comparison.task.metrics
                 if c.metrics.get(m.key) is not None][:4]
        speed = [r for r in result.speed if r["candidate"] == c.name and r["speedup"]]
        if speed:
            shown.append(speed_text(speed[-1]))
        lines.append(f"  {verdict_line(c.name, c.verdict)}")
        lines.append(f"      {'  '.join(shown)}  output SQNR {c.metrics['output_sqnr']:.1f} dB")
    from calibkit.engine.summary import engine_lines

    lines += engine_lines(comparison.engine)
    if comparison.recommendation:
        lines.append(comparison.recommendation)
    print("\n".join(lines), file=sys.stderr)


def _report_path(args: argparse.Namespace) -> Path:
    """Where the HTML report goes, checked writable (and no folder made) before any inference."""
    from calibkit.fileio import check_writable_file

    return check_writable_file(args.report or (args.out / "report.html"))


def _fail_on(args: argparse.Namespace) -> list[str]:
    return list(args.fail_on) + ([f"top1_drop>{args.fail_on_top1_drop}"] if args.fail_on_top1_drop is not None else [])


def check_comparison_options(args: argparse.Namespace) -> None:
    """Every comparison option checked against the model's outputs and the task's metrics before any image
    is read or any model written: the task and its --task-opt, the rules, the budget metric, the report path."""
    from calibkit.tasks.verdict import rules_for

    task = _task(args, _preprocess(args))
    rules_for(task, _fail_on(args), args.unusable_if)
    if args.accuracy_budget is not None:
        task.check_budget_metric(args.budget_metric)
    _report_path(args)


def _compare_outputs(args: argparse.Namespace, candidates, run=None, note: str | None = None, engines=None) -> int:
    from calibkit.data.images import discover_images
    from calibkit.workflow import calibration_overlap, compare_and_report

    items = discover_images(args.images, args.labels)
    items, overlap_note = calibration_overlap(items, candidates, args.exclude_calibration_images)
    note = " ".join(n for n in (note, overlap_note) if n) or None
    if overlap_note:
        print(f"calibkit: note: {overlap_note}", file=sys.stderr)
    report = _report_path(args)
    spec = _preprocess(args)
    result = compare_and_report(
        args.model, items, spec, candidates, report, _task(args, spec, items), fail_on=_fail_on(args),
        unusable_if=args.unusable_if, batch_size=args.batch_size or INFERENCE_BATCH_SIZE, skip_bad=args.skip_bad,
        batch_sizes=[] if args.no_bench else args.bench_batch_sizes, run=run, note=note,
        accuracy_budget=args.accuracy_budget, sensitivity_images=args.sensitivity_images,
        budget_metric=args.budget_metric, backend=args.backend, ray=args.ray, engines=engines,
        layer_images=args.layer_images, layer_seconds=args.layer_seconds,
    )
    _summarise(result, report)
    return _gate(result)


def cmd_calibrate(args: argparse.Namespace, note: str | None = None) -> int:
    """Calibrate; with ``--compare`` also compare FP32 against every calibrated INT8 model and FP16."""
    from calibkit.workflow import fp16_candidate, int8_candidates

    if args.compare:
        check_comparison_options(args)
    engines = engine_settings(args)
    run = _run_calibration(args, engines)
    if not args.compare:
        return 0
    with folder_lock(args.out):  # the comparison writes into the run folder: no other run may meanwhile
        candidates = int8_candidates(args.model, args.out) + [fp16_candidate(args.model, args.out)]
        return _compare_outputs(args, candidates, run, note, engines)


def timing_text(timings: dict[str, float]) -> str:
    """``checks 0.4 s, sampling 0.1 s, ...``: every stage of a calibration in the order it ran."""
    return ", ".join(f"{key[:-2].replace('_', ' ')} {seconds:.1f} s" for key, seconds in timings.items()
                     if key.endswith("_s") and key != "total_s")


def _run_calibration(args: argparse.Namespace, engines=None):
    from calibkit.engine.summary import engine_lines
    from calibkit.workflow import calibrate

    run = calibrate(
        args.model, args.images, args.out, methods=args.method, samples=args.samples, sampler=args.sampler,
        seed=args.seed, preprocess=_preprocess(args), batch_size=args.batch_size, skip_bad=args.skip_bad,
        labels=args.labels, trt_version=args.trt_version, exclude=args.exclude,
        equalize_depthwise=not args.no_equalize, weight_rounding=args.weight_rounding,
        bias_correction=not args.no_bias_correction, backend=args.backend, ray=args.ray, engines=engines,
        force=args.force, memory_budget=int(args.memory_budget * (1 << 30)),
    )
    n, segments = run.stats.provenance["num_images"], run.stats.segments
    print(
        f"calibrated on {n} images in {run.timings['total_s']:.1f} s (statistics pass {run.timings['statistics_s']:.1f} s, "
        f"{n / run.timings['statistics_s']:.1f} img/s); wrote {', '.join(sorted(run.calibrators))} to {run.out}\n"
        f"  stages: {timing_text(run.timings)}; peak RSS {run.timings['peak_rss_gb']:.2f} GB"
        + (f"; statistics in {segments} graph segments (--memory-budget)" if segments > 1 else ""),
        file=sys.stderr,
    )
    if run.engine:
        print("\n".join(engine_lines(run.engine)), file=sys.stderr)
    _print_json({"out": str(run.out), "methods": list(run.calibrators), "timings": run.timings})
    return run


def cmd_quantize(args: argparse.Namespace) -> int:
    from calibkit.artifacts.qdq import export_qdq
    from calibkit.artifacts.ranges_json import read_ranges
    from calibkit.fileio import ensure_writable_file
    from calibkit.graph.onnx_model import check_model_file
    from calibkit.workflow import check_made_from, ranges_weights, run_graph

    check_model_file(args.model)
    ensure_writable_file(args.out)
    ranges, document = read_ranges(args.ranges)
    check_made_from(args.model, document.get("provenance", {}).get("model_sha256"), args.ranges, "ranges")
    weights = ranges_weights(Path(args.ranges), document, args.nearest_weights)
    graph = run_graph(args.model, Path(args.ranges).parent)
    engines = engine_settings(args) if args.target == "tensorrt" else None
    path = export_qdq(graph, ranges, args.out, exclude=args.exclude, target=args.target, weights=weights)
    print(f"wrote {path}", file=sys.stderr)
    if engines is not None:
        _check_quantized(args.model, path, engines)
    return 0


def _check_quantized(model: Path, path: Path, engines) -> None:
    """What TensorRT-RTX builds of a model ``quantize`` wrote, on the terminal."""
    from calibkit.engine.check import EngineModel
    from calibkit.engine.commands import build_shape
    from calibkit.engine.summary import check_engines, engine_lines

    try:
        shape = build_shape(model)
    except CalibkitError as exc:
        print(f"calibkit: note: engine check skipped ({exc})", file=sys.stderr)
        return
    section = check_engines([EngineModel(path.name, "int8", path, path.stem)], shape, engines)
    print("\n".join(engine_lines(section)), file=sys.stderr)


def cmd_import_cache(args: argparse.Namespace) -> int:
    from calibkit.artifacts.cache_import import import_cache
    from calibkit.fileio import ensure_writable_file

    ensure_writable_file(args.out)
    done = import_cache(args.cache, args.model, args.out)
    print(f"wrote {done.out}: ranges of {len(done.matched)} tensors from a TRT-{done.version}-{done.algorithm} cache; "
          f"calibkit quantize --model {args.model} --ranges {done.out} writes its Q/DQ model", file=sys.stderr)
    if done.unmatched:
        shown = ", ".join(done.unmatched[:8]) + (" ..." if len(done.unmatched) > 8 else "")
        print(f"calibkit: note: {len(done.unmatched)} cache entries name no tensor of {args.model} and were left "
              f"out: {shown}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from calibkit.backends import available_backends, require
    from calibkit.bench.table import format_table
    from calibkit.fileio import ensure_writable_file
    from calibkit.workflow import (
        bench_models,
        fp16_candidate,
        input_shape,
        usable_batch_sizes,
    )

    if args.backend != "all":
        require(args.backend)
    if args.json:
        ensure_writable_file(args.json)
    candidates = _int8_from_spec(args.model, args.int8, args.out) if args.int8 else []
    if args.fp16:
        candidates.append(fp16_candidate(args.model, args.out))
    models = [("fp32", "fp32", args.model)] + [(c.name, c.precision, c.speed_model or c.model) for c in candidates]
    shape = input_shape(_preprocess(args))
    backends = available_backends() if args.backend == "all" else [args.backend]
    sizes = usable_batch_sizes(args.model, args.batch_sizes)
    rows = [row for backend in backends for row in bench_models(models, shape, sizes, backend)]
    print(format_table(rows, ["candidate", "backend", "batch", "p50_ms", "p90_ms", "p99_ms", "images_per_s", "speedup",
                              "speedup_low", "speedup_high", "noisy"]))
    from calibkit.bench.speed import NOISY_SPREAD
    from calibkit.report.provenance import environment

    machine = environment()
    print(f"timed on {machine['CPU']}; {machine['threads']}; speedup = median round ratio (lowest-highest round), "
          f"noisy where rounds differ by more than {NOISY_SPREAD - 1:.0%}", file=sys.stderr)
    if args.json:
        from calibkit.fileio import write_text_atomic

        write_text_atomic(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from calibkit.backends import require
    from calibkit.distributed import check_backend

    check_backend(args.ray, args.backend)
    require(args.backend)
    candidate_specs(args.candidates)
    check_comparison_options(args)
    engines = engine_settings(args)
    with folder_lock(args.out):  # its exports and report: two comparisons never share a folder
        return _compare_outputs(args, _parse_candidates(args.candidates, args.model, args.out, args.exclude),
                                engines=engines)


# What the demo fixes over calibrate's defaults: the demo model's preprocessing and task, and the held-out
# evaluation its report's accuracy needs.
DEMO_SETTINGS = {"preset": "imagenet-tf", "task": "classification", "compare": True,
                 "exclude_calibration_images": True}


def cmd_demo(args: argparse.Namespace) -> int:
    """``calibrate --compare`` on the demo model and images: calibrate's defaults, the demo's own options,
    then :data:`DEMO_SETTINGS`."""
    from calibkit.cli.options import build_parser
    from calibkit.demo_assets import SHARED_IMAGES, demo_images, demo_model

    images = demo_images()
    defaults = build_parser().parse_args(["calibrate", "--model", str(demo_model()), "--images", str(images),
                                          "--out", str(args.out)])
    settings = {**vars(defaults), **vars(args), **DEMO_SETTINGS, "report": args.report or args.out / "report.html"}
    note = None
    if images == SHARED_IMAGES:
        note = ("Images: one photo per ImageNet class (a coverage set, not a benchmark); full-ImageNet top-1 of "
                "EfficientNet-Lite0 is about 75%.")
    return cmd_calibrate(argparse.Namespace(**settings), note)
