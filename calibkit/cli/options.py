"""The command line's parser: every command's options, their types and help, and the examples."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable, NoReturn

from calibkit import __version__
from calibkit.artifacts.trt_cache import DEFAULT_TRT_VERSION
from calibkit.cli.commands import (cmd_bench, cmd_calibrate, cmd_compare, cmd_demo, cmd_eval, cmd_import_cache,
                                   cmd_quantize)
from calibkit.cli.defaults import DEMO_BUDGET, INFERENCE_BATCH_SIZE
from calibkit.backends.base import registered_backends
from calibkit.calib.registry import available_calibrators
from calibkit.samplers.registry import available_samplers
from calibkit.stats import MEMORY_BUDGET
from calibkit.tasks.registry import available_tasks, budget_metrics_by_task
from calibkit.engine.commands import add_build_engine, add_engine_options

BATCH_HELP = (
    "images per ONNX Runtime call (default: 1 in the statistics pass, where one image's activations stay "
    f"in cache for the histograms; {INFERENCE_BATCH_SIZE} for evaluation and comparison)"
)


def _floats3(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers such as 127.5,127.5,127.5, "
                                         f"got {text!r}")
    return values  # type: ignore[return-value]


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size in pixels, SIZE or HxW such as 224 or 640x480, got {text!r}")
    return parts[0], parts[1]


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reads any word starting with a minus and a digit (``-1x224``, ``-1,0,0``) as
    a value, so the option's own check names what is wrong with it; calibkit has no option spelled so."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> NoReturn:
        """One ``calibkit: error:`` line, like every other error, pointing at the command's help."""
        self.exit(2, f"calibkit: error: {message}; see {self.prog} --help\n")


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="FP32 ONNX model")


def _add_images(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("images")
    group.add_argument("--images", type=Path, required=True, help="folder: flat, class subfolders or labels.csv")
    group.add_argument("--labels", type=Path, help="CSV with file,class_index (default: <images>/labels.csv)")
    group.add_argument("--batch-size", type=_positive_int, help=BATCH_HELP)
    group.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a counted warning")
    _add_preprocess(parser)


def _add_preprocess(parser: argparse.ArgumentParser, shape_only: bool = False) -> None:
    """Preprocessing options; ``shape_only`` keeps those that decide the input shape (for ``bench``)."""
    group = parser.add_argument_group("preprocessing")
    group.add_argument("--preset",
                       help="imagenet-tf, imagenet-torch, paddle-det, paddle-ocr-det, paddle-ocr-rec, yolo (default: "
                            "the model's exporter metadata says: yolo for Ultralytics exports, else imagenet-tf)")
    group.add_argument("--size", type=_size, help="HxW; required when the model's input size is dynamic")
    if shape_only:
        parser.set_defaults(mean=None, std=None, crop=None, interpolation=None, resize=None, channel_order=None,
                            pad_value=None)
        return
    group.add_argument("--resize", choices=["crop", "stretch", "letterbox", "pad-right"],
                       help="geometry (overrides the preset): centre crop, stretch, letterbox, or pad right")
    group.add_argument("--channel-order", choices=["RGB", "BGR"], help="channel order fed to the model")
    group.add_argument("--pad-value", type=float, help="0-255 fill of letterbox/pad-right borders")
    group.add_argument("--mean", type=_floats3, help="R,G,B mean on the 0-255 scale (overrides the preset)")
    group.add_argument("--std", type=_floats3, help="R,G,B std on the 0-255 scale (overrides the preset)")
    group.add_argument("--crop", type=float, help="centre-crop fraction of the short side (default 224/256)")
    group.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic"])


def _out_folder(text: str) -> Path:
    """A folder path that names a folder: not empty, not blank, no line breaks."""
    if not text.strip() or any(c in text for c in "\n\r\0"):
        raise argparse.ArgumentTypeError(f"expected a folder path, got {text!r}")
    return Path(text)


def _whole_number(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low``."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    return check


_positive_int = _whole_number(1)
_non_negative_int = _whole_number(0)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError("batch sizes must be >= 1")
    return sizes


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help with each option's default (where it has one) and the examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is argparse.SUPPRESS or action.default == []
        if unset or action.nargs == 0 or "%(default)" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


EXAMPLES = {
    "eval": "calibkit eval --model model.onnx --images val/",
    "calibrate": "calibkit calibrate --model model.onnx --images photos/ --out runs/m --method all --compare",
    "quantize": "calibkit quantize --model model.onnx --ranges runs/m/mse.json --out model.int8.onnx --exclude '*head*'",
    "bench": "calibkit bench --model model.onnx --int8 runs/m:mse --fp16 --batch-sizes 1,8",
    "compare": "calibkit compare --model model.onnx --images val/ --candidates int8:runs/m:mse+minmax,fp16",
    "demo": "calibkit demo --out reports/demo",
    "import-cache": "calibkit import-cache --model model.onnx --cache calib.cache --out runs/trt10.json",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="calibkit", description="INT8/FP16 quantization workbench for ONNX models",
                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"calibkit {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars (warnings and results still show)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=_HelpFormatter,
                              epilog=f"example:\n  {EXAMPLES[name]}")

    _eval_command(command)
    _calibrate_command(command)
    _quantize_command(command)
    _bench_command(command)
    _compare_command(command)
    _demo_command(command)
    add_build_engine(sub)
    _import_cache_command(command)
    return parser


def _eval_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = command("eval", "FP32 top-1/top-5 of a model on labelled images")
    _add_model(p)
    _add_images(p)
    p.add_argument("--backend", "--provider", dest="backend", default="ort-cpu",
                   help=f"{_listed(registered_backends())}, or a plug-in")
    _add_task(p)
    p.set_defaults(func=cmd_eval)


def _calibrate_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = command("calibrate", "collect statistics once, write ranges for every method")
    _add_model(p)
    _add_images(p)
    p.add_argument("--method", default="entropy2",
                   help=f"comma list of {_listed(available_calibrators())} (percentile:99.99 names its percentile), or all")
    p.add_argument("--samples", type=int, default=500, help="calibration images to pick (0 = all)")
    p.add_argument("--sampler", default="random", help=_listed(available_samplers()))
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--out", type=_out_folder, required=True, help="run folder for caches, JSON, stats")
    p.add_argument("--force", action="store_true",
                   help="write the run into a folder that holds files calibkit did not write (they are left as they are)")
    p.add_argument("--trt-version", type=_positive_int, default=DEFAULT_TRT_VERSION,
                   help="version number in the cache header")
    p.add_argument("--exclude", action="append", default=[], help="node name, glob or op type kept in float")
    p.add_argument("--compare", action="store_true", help="then compare FP32 vs INT8 (every method) and FP16")
    p.add_argument("--no-equalize", action="store_true",
                   help="calibrate the graph as exported, without equalising uneven depthwise-conv inputs")
    p.add_argument("--backend", default="ort-cpu",
                   help="where the statistics pass (and --compare) runs: ort-cpu, or ort-cuda (GPU: activations are "
                        "binned in device memory; needs the gpu extra)")
    p.add_argument("--weight-rounding", default="gptq",
                   help="how INT8 weights are rounded: gptq (minimises each layer's output error on the "
                        "calibration images) or nearest")
    p.add_argument("--no-bias-correction", action="store_true",
                   help="keep the float biases as exported instead of removing the mean shift weight rounding adds")
    p.add_argument("--memory-budget", type=_positive_float, default=MEMORY_BUDGET / (1 << 30), metavar="GB",
                   help="what the statistics pass may hold, the model's weights and the activations it reads "
                        "(default 1.5): past it, the graph runs in segments that each expose a part, at the cost "
                        "of one inference per image all the same")
    _add_ray(p)
    _add_task(p)
    _add_compare_options(p, out_default=None)
    add_engine_options(p)
    p.set_defaults(func=cmd_calibrate)


def _quantize_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = command("quantize", "write a Q/DQ ONNX model from a ranges JSON")
    _add_model(p)
    p.add_argument("--ranges", type=Path, required=True, help="JSON written by calibkit calibrate")
    p.add_argument("--out", type=Path, required=True, help="output .onnx path")
    p.add_argument("--target", choices=["tensorrt", "onnxruntime"], default="tensorrt")
    p.add_argument("--exclude", action="append", default=[], help="node name, glob or op type kept in float")
    p.add_argument("--nearest-weights", action="store_true",
                   help="round weights to nearest and keep the exported biases, ignoring the run's weights.npz")
    add_engine_options(p, write=False)
    p.set_defaults(func=cmd_quantize)


def _bench_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = command("bench", "latency and throughput of FP32, INT8 and FP16 models (random inputs of the model's shape)")
    _add_model(p)
    _add_preprocess(p, shape_only=True)
    p.add_argument("--int8", help="RUN_DIR[:method+method] of calibkit calibrate")
    p.add_argument("--fp16", action="store_true", help="also export and time the FP16 model")
    p.add_argument("--backend", default="all",
                   help=f"all (every backend available here), {_listed(registered_backends())}, or a plug-in")
    p.add_argument("--batch-sizes", type=_batch_sizes, default="1,8,32", help="comma list")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="where models the run lacks are written")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    p.set_defaults(func=cmd_bench)


def _compare_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = command("compare", "FP32 vs candidates: accuracy, drift per layer, speed, HTML report")
    _add_model(p)
    _add_images(p)
    p.add_argument("--candidates", required=True,
                   help="comma list: int8:RUN_DIR[:method+method], int8:RANGES.json, fp16")
    p.add_argument("--exclude", action="append", default=[], help="node name, glob or op type kept in float")
    p.add_argument("--backend", default="ort-cpu",
                   help="where every model runs and is timed: ort-cpu, ort-cuda, tensorrt, tensorrt-rtx (per-layer drift "
                        "stays on the CPU)")
    _add_ray(p)
    _add_task(p)
    _add_compare_options(p, out_default=Path("reports/compare"))
    add_engine_options(p)
    p.set_defaults(func=cmd_compare)


def _demo_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = command("demo", "the whole chain on EfficientNet-Lite0 and the shared photos")
    p.add_argument("--out", type=Path, default=Path("reports/demo"), help="run folder and report")
    p.add_argument("--method", default="entropy2,percentile:99.99,minmax", help="calibrators to compare")
    p.add_argument("--samples", type=int, default=500, help="calibration images to pick")
    p.add_argument("--sampler", default="random", help=_listed(available_samplers()))
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--batch-size", type=_positive_int, help=BATCH_HELP)
    _add_compare_options(p, out_default=None, with_out=False)
    p.add_argument("--no-accuracy-budget", dest="accuracy_budget", action="store_const", const=None,
                   help="skip the layer sensitivity ranking and the budget fit")
    add_engine_options(p)
    p.set_defaults(func=cmd_demo, accuracy_budget=DEMO_BUDGET)


def _import_cache_command(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = command("import-cache", "read a TensorRT calibration cache (trtexec, Polygraphy, Ultralytics) as calibkit ranges")
    _add_model(p)
    p.add_argument("--cache", type=Path, required=True, help="TensorRT calibration cache (TRT-<version>-<algorithm>)")
    p.add_argument("--out", type=Path, required=True, help="ranges JSON to write (quantize --ranges takes it)")
    p.set_defaults(func=cmd_import_cache)


def _add_task(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task")
    group.add_argument("--task", default="auto",
                       help=f"{_listed(available_tasks())}, or a plug-in (default: detected from the outputs, generic "
                            "when they are ambiguous)")
    group.add_argument("--task-opt", action="append", default=[], metavar="KEY=VALUE",
                       help="task setting, e.g. score=0.3, head=gfl, threshold=0.3, coco=labels.json")
    group.add_argument("--postprocess", metavar="MODULE:FUNCTION",
                       help="decode detector outputs yourself: fn(outputs, (h, w)) -> [(boxes, scores, classes)]")


def _add_compare_options(parser: argparse.ArgumentParser, out_default: Path | None, with_out: bool = True) -> None:
    group = parser.add_argument_group("comparison")
    if with_out and out_default is not None:
        group.add_argument("--out", type=Path, default=out_default, help="folder for the report and exports")
    group.add_argument("--report", type=Path, help="HTML report path (default: <out>/report.html)")
    group.add_argument("--no-bench", action="store_true", help="skip the speed measurement")
    group.add_argument("--exclude-calibration-images", action="store_true",
                       help="evaluate only on images no INT8 candidate was calibrated on (the demo does)")
    group.add_argument("--bench-batch-sizes", type=_batch_sizes, default="1,8,32", help="batch sizes to time")
    group.add_argument("--fail-on", action="append", default=[], metavar="RULE",
                       help="exit 3 when a candidate meets RULE, e.g. recall<0.95, top1-drop>1, cer>5")
    group.add_argument("--fail-on-top1-drop", type=float, help="same as --fail-on top1-drop>X")
    group.add_argument("--unusable-if", action="append", metavar="RULE",
                       help="call a candidate unusable when it meets RULE (default: the task's own rules)")
    group.add_argument("--accuracy-budget", type=_non_negative_float,
                       help="rank layer sensitivity, keep the fewest layers in float to lose at most this many "
                            "top-1 points (agreement points without labels); writes <method>.mixed.*.onnx")
    group.add_argument("--layer-images", type=_non_negative_int,
                       help="images for the per-layer drift pass, 0 to skip it (default: 50, fewer for large "
                            "activations)")
    group.add_argument("--no-layers", dest="layer_images", action="store_const", const=0,
                       help="skip the per-layer drift pass (same as --layer-images 0)")
    group.add_argument("--layer-seconds", type=_positive_float,
                       help="time budget of a separate per-layer drift pass: no image starts after it (at least one "
                            "runs; the report says how many did)")
    group.add_argument("--sensitivity-images", type=_positive_int, default=100,
                       help="images for the sensitivity ranking")
    group.add_argument("--budget-metric", default="auto",
                       help="what the budget limits, as the task names it (checked against the task before any work): "
                            + "; ".join(f"{task} {', '.join(names)}" for task, names in budget_metrics_by_task().items()))


def _add_ray(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run as Ray tasks (pip install 'calibkit[ray]'): alone, on a local Ray instance; "
                             "'auto' or an address, on that cluster (images must be at the same path on every worker)")


def _listed(names: list[str]) -> str:
    """Registry names for a help text, so a plug-in shows up beside the built-ins."""
    return ", ".join(names)
