"""``calibkit`` command line: eval, calibrate, quantize, bench, compare, demo."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from calibkit import __version__
from calibkit.errors import CalibkitError


def _floats3(text: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def _size(text: str) -> tuple[int, int]:
    parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW, got {text!r}")
    return parts[0], parts[1]


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="FP32 ONNX model")


def _add_images(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("images and preprocessing")
    group.add_argument("--images", type=Path, required=required, help="folder: flat, class subfolders or labels.csv")
    group.add_argument("--labels", type=Path, help="CSV with file,class_index (default: <images>/labels.csv)")
    group.add_argument("--preset", default="imagenet-tf", help="imagenet-tf (default) or imagenet-torch")
    group.add_argument("--size", type=_size, help="HxW when the model's input size is dynamic")
    group.add_argument("--mean", type=_floats3, help="R,G,B mean on the 0-255 scale (overrides the preset)")
    group.add_argument("--std", type=_floats3, help="R,G,B std on the 0-255 scale (overrides the preset)")
    group.add_argument("--crop", type=float, help="centre-crop fraction of the short side (default 224/256)")
    group.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic"])
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a counted warning")


def _preprocess(args: argparse.Namespace):
    from calibkit.data.preprocess import get_preset
    from calibkit.workflow import model_preprocess

    spec = get_preset(args.preset).with_overrides(
        mean=args.mean, std=args.std, crop_fraction=args.crop, interpolation=args.interpolation
    )
    return model_preprocess(args.model, spec, args.size)


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=1))


def cmd_eval(args: argparse.Namespace) -> int:
    from calibkit.backends import load
    from calibkit.compare.accuracy import accuracy_summary
    from calibkit.compare.inference import predict
    from calibkit.data.images import discover_images

    spec = _preprocess(args)
    items = discover_images(args.images, args.labels)
    session = load(args.model, "fp32", args.backend)
    preds = predict(session, items, spec, args.batch_size, args.skip_bad, desc="eval")
    summary = {
        "model": str(args.model),
        "images": len(preds.items),
        "skipped": preds.skipped,
        **accuracy_summary(preds.logits, preds.labels),
        "images_per_second": round(preds.images_per_second, 1),
        "backend": session.backend,
        "preprocess": spec.to_dict(),
    }
    if summary["top1"] is not None:
        print(f"top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  on {len(preds.items)} images", file=sys.stderr)
    _print_json(summary)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from calibkit.workflow import calibrate

    run = calibrate(
        args.model, args.images, args.out, methods=args.method, samples=args.samples, sampler=args.sampler,
        seed=args.seed, preprocess=_preprocess(args), batch_size=args.batch_size, skip_bad=args.skip_bad,
        labels=args.labels, trt_version=args.trt_version,
    )
    n = run.stats.provenance["num_images"]
    print(
        f"calibrated on {n} images in {run.timings['statistics_s']:.1f} s "
        f"({n / run.timings['statistics_s']:.1f} img/s); wrote {', '.join(sorted(run.calibrators))} to {run.out}",
        file=sys.stderr,
    )
    _print_json({"out": str(run.out), "methods": list(run.calibrators), "timings": run.timings})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calibkit", description="INT8/FP16 quantization workbench for ONNX models")
    parser.add_argument("--version", action="version", version=f"calibkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="FP32 top-1/top-5 of a model on labelled images")
    _add_model(p)
    _add_images(p)
    p.add_argument("--backend", "--provider", dest="backend", default="ort-cpu", help="ort-cpu, ort-cuda, tensorrt")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("calibrate", help="collect statistics once, write ranges for every method")
    _add_model(p)
    _add_images(p)
    p.add_argument("--method", default="entropy2", help="comma list: entropy2, minmax, percentile:99.99, mse, all")
    p.add_argument("--samples", type=int, default=500, help="calibration images to pick (0 = all)")
    p.add_argument("--sampler", default="random", help="random, stratified, kmeans, all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="run folder for caches, JSON, stats")
    p.add_argument("--trt-version", type=int, default=100800, help="version number in the cache header")
    p.set_defaults(func=cmd_calibrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one line on stderr and exit code 2 for user errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, category, *rest: f"calibkit: warning: {message}\n"
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except CalibkitError as exc:
        print(f"calibkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("calibkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
