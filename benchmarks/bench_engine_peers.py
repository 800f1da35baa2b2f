"""What TensorRT-RTX builds of calibkit's INT8 models and of the peers' (NNCF, Model Optimizer), from the
same calibration images: builds or not, convolution/matrix-product precisions, nodes that fell to float,
kernels against the FP16 engine, engine MB, build seconds. Structure only: no engine runs.

Run on demand (installs the peers once, like bench_accuracy_peers.py): ``python benchmarks/bench_engine_peers.py``.
Models: EfficientNet-Lite0 on the shared photos and PP-PicoDet (layout_cdla) on the shared document pages.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_accuracy_peers import quantize_with_peers  # noqa: E402

from calibkit.artifacts.fp16 import export_fp16  # noqa: E402
from calibkit.data.images import discover_images  # noqa: E402
from calibkit.data.loader import iter_batches  # noqa: E402
from calibkit.data.preprocess import get_preset  # noqa: E402
from calibkit.demo_assets import SHARED_IMAGES, demo_model  # noqa: E402
from calibkit.engine.check import EngineModel  # noqa: E402
from calibkit.engine.summary import EngineSettings, check_engines  # noqa: E402
from calibkit.fileio import cache_dir  # noqa: E402
from calibkit.workflow import model_preprocess  # noqa: E402

PAGES = ROOT.parent / "shared" / "data" / "doc-pages"


def cases(samples: int) -> list[tuple[str, Path, Path, str, int]]:
    """(name, model, images, preset, calibration images) per model."""
    subprocess.run([sys.executable, str(ROOT / "datasets" / "fetch_paddle_models.py")], check=True, capture_output=True)
    return [("EfficientNet-Lite0", demo_model(), SHARED_IMAGES, "imagenet-tf", samples),
            ("PP-PicoDet", cache_dir() / "paddle-models" / "layout_cdla.onnx", PAGES, "paddle-det", 24)]


def run_case(name, model, images, preset, samples, tools, venvs, target, tmp: Path) -> list[dict]:
    run = tmp / name / "run"
    done = subprocess.run([sys.executable, "-m", "calibkit.cli", "calibrate", "--model", str(model), "--images",
                           str(images), "--out", str(run), "--method", "mse,percentile:99.99,entropy2",
                           "--samples", str(samples), "--preset", preset, "--no-engine-check", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name}: calibkit calibrate failed: {done.stderr[-500:]}")
    spec = model_preprocess(model, get_preset(preset))
    chosen = {Path(line).resolve() for line in (run / "images.txt").read_text().splitlines() if line}
    calib_items = [item for item in discover_images(images) if item.path.resolve() in chosen]
    calib = tmp / name / "calib.npy"
    np.save(calib, np.concatenate([b.array for b in iter_batches(calib_items, spec, 8)]))
    peers, failures = quantize_with_peers(tools, venvs, calib, model, tmp / name, lambda tool: samples)
    labels = json.loads((run / "summary.json").read_text())["methods"]
    models = [EngineModel(f"calibkit {label}", "int8", run / f"{label}.qdq.onnx", label) for label in labels]
    models += [EngineModel(f"{tool} {method}", "int8", path, f"{tool}-{method}") for tool, method, path, _, _ in peers]
    models.append(EngineModel("fp16", "fp16", export_fp16(model, tmp / name / "fp16.onnx"), "fp16"))
    section = check_engines(models, (1, *spec.input_shape()), EngineSettings(True, target))
    rows = [{**m, "model": name} for m in section["models"]]
    rows += [{"model": name, "name": tool, "built": False, "verdict": f"did not quantize: {why}"}
             for tool, why in failures.items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", default="nncf,modelopt")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--trt-target", default="sm89")
    parser.add_argument("--venvs", type=Path, default=cache_dir() / "peer-venvs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="calibkit-engine-peers-") as tmp:
        for case in cases(args.samples):
            rows += run_case(*case, args.tools.split(","), args.venvs, args.trt_target, Path(tmp))
    print(f"{'model':<20} {'candidate':<32} {'builds':>6} {'conv/gemm precisions':<26} {'float':>5} "
          f"{'kernels':>7} {'vs FP16':>7} {'MB':>6} {'build s':>7}")
    for r in rows:
        if not r.get("built"):
            print(f"{r['model']:<20} {r['name']:<32} {'no':>6}  {r['verdict']}")
            continue
        counts = ", ".join(f"{n} {p}" for p, n in r["precision_counts"].items())
        ratio = f"{r['versus_fp16']['kernel_ratio']:.2f}x" if r.get("versus_fp16") else "-"
        print(f"{r['model']:<20} {r['name']:<32} {'yes':>6} {counts:<26} {len(r['fell_to_float']):>5} "
              f"{r['kernels']:>7} {ratio:>7} {r['engine_mb']:6.1f} {r['build_s']:7.1f}")
    print(f"TensorRT-RTX builds for {args.trt_target}, ahead of time on this machine; the same calibration images "
          "for every tool; float = convolutions and matrix products with INT8 weights whose engine layer runs float")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
