"""The command-line side of the engine check: its options on calibrate/compare/quantize, and
``calibkit build-engine``, which writes engines for one or more GPU architectures."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from calibkit.engine.builder import TARGETS
from calibkit.engine.summary import EngineSettings, engine_lines

TARGET_HELP = (f"GPU architecture the TensorRT-RTX engines are built for: {', '.join(TARGETS)} (default: this "
               "machine's GPU where TensorRT-RTX supports it, else sm89)")


def add_engine_options(parser: argparse.ArgumentParser, write: bool = True) -> None:
    """``--no-engine-check``, ``--trt-target`` and (``write``) ``--write-engines``."""
    group = parser.add_argument_group("TensorRT-RTX engine check (structure, not speed)")
    group.add_argument("--no-engine-check", action="store_true",
                       help="skip building the models with TensorRT-RTX (on by default when it is installed)")
    group.add_argument("--trt-target", metavar="SM", help=TARGET_HELP)
    if write:
        group.add_argument("--write-engines", action="store_true",
                           help="keep the engines as <candidate>.<target>.trtrtx.engine beside the models")


def engine_settings(args: argparse.Namespace) -> EngineSettings | None:
    """The resolved engine-check settings of a command's options (None when the check is off)."""
    enabled = False if args.no_engine_check else None
    return EngineSettings(enabled, args.trt_target, getattr(args, "write_engines", False)).resolved()


def add_build_engine(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("build-engine", help="build TensorRT-RTX engines of an ONNX model for users' GPUs",
                       description="Build a TensorRT-RTX engine of an FP32, FP16 or Q/DQ INT8 ONNX model for each "
                                   "--trt-target, ahead of time (no GPU needed); write it with a JSON of its layers.")
    p.add_argument("--model", type=Path, required=True, help="ONNX model (Q/DQ INT8, FP16 or FP32)")
    p.add_argument("--trt-target", required=True, metavar="SM[,SM...]", help=f"comma list of {', '.join(TARGETS)}")
    p.add_argument("--size", help="HxW of the input where the model's is dynamic")
    p.add_argument("--out", type=Path, required=True, help="folder for <model>.<target>.trtrtx.engine and .json")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_build_engine)
    return p


def cmd_build_engine(args: argparse.Namespace) -> int:
    """Build ``--model`` for every target; exit 4 when any build failed."""
    from calibkit.engine.check import EngineModel
    from calibkit.engine.summary import check_engines
    from calibkit.fileio import ensure_writable_dir, write_text_atomic
    from calibkit.graph.onnx_model import file_sha256, load_model

    targets = [t.strip() for t in args.trt_target.split(",") if t.strip()]
    settings = [EngineSettings(True, t, True).resolved() for t in targets]
    model = load_model(args.model)
    shape = build_shape(args.model, args.size)
    out = ensure_writable_dir(args.out)
    label = args.model.name.removesuffix(".onnx")
    precision = "int8" if any(n.op_type == "DequantizeLinear" for n in model.graph.node) else "model"
    failed = 0
    for chosen in settings:
        section = check_engines([EngineModel(label, precision, args.model, label)], shape, chosen, out)
        section["model_sha256"] = file_sha256(args.model)
        write_text_atomic(out / f"{label}.{chosen.target}.trtrtx.json", json.dumps(section, indent=1) + "\n")
        print("\n".join(engine_lines(section)), file=sys.stderr)
        failed += sum(not m["built"] for m in section["models"])
    return 4 if failed else 0


def build_shape(model: Path, size: str | None = None) -> tuple[int, int, int, int]:
    """The input shape an engine of ``model`` is built for: its own batch (1 where free) and spatial size,
    or ``size`` (HxW) where that is dynamic."""
    from calibkit.graph.onnx_model import image_input, model_outline

    info = image_input(model_outline(model), model)
    height, width = _size(size, info, model)
    if info.layout == "NCHW":
        return (info.batch or 1, info.channels, height, width)
    return (info.batch or 1, height, width, info.channels)


def _size(text: str | None, info, model: Path) -> tuple[int, int]:
    from calibkit.errors import CalibkitError

    if text:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",") if v.strip().isdigit()]
        if len(parts) in (1, 2) and min(parts) > 0:
            return (parts[0], parts[-1])
        raise CalibkitError(f"--size {text!r}: expected SIZE or HxW, e.g. 640x640")
    if info.height is None or info.width is None:
        raise CalibkitError(f"{model}: the input size is dynamic; pass --size HxW to build for one size")
    return info.height, info.width
