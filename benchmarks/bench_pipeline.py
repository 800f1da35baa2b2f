"""Each calibkit command against its floor: the decoding and plain inference it cannot avoid.

Run on demand (several minutes): ``python benchmarks/bench_pipeline.py [--samples 500] [--skip-demo]``.
Every stage runs as the real CLI in a subprocess (wall time and peak RSS measured here; stage timings
read from the JSON it writes); the floors are measured in this same run, on the same images:

* decode: every image decoded and preprocessed once (the loader's thread pool, as the commands use it);
* inference: one ONNX Runtime pass per model over the preprocessed images (batch 1 for the statistics
  pass, which runs one image at a time; the comparison's batch size otherwise). The sensitivity floor
  is one whole pass per ranked layer, although each variant now runs only from where it differs.

Prints one table: stage, wall s, floor s, ratio, target. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibkit.backends.onnxruntime import OrtSession  # noqa: E402
from calibkit.cli import INFERENCE_BATCH_SIZE  # noqa: E402
from calibkit.data.images import ImageItem, discover_images  # noqa: E402
from calibkit.data.loader import iter_batches  # noqa: E402
from calibkit.demo_assets import SHARED_IMAGES, demo_model  # noqa: E402
from calibkit.fileio import cache_dir  # noqa: E402
from calibkit.workflow import model_preprocess  # noqa: E402


def run_cli(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GB) and stderr of one ``calibkit`` command in its own process."""
    code = ("import sys, runpy; sys.argv = ['calibkit'] + sys.argv[1:]\n"
            "from calibkit.memory import peak_rss_gb\n"
            "try:\n    runpy.run_module('calibkit.cli', run_name='__main__')\n"
            "finally:\n    print('PEAK_RSS_KB', round(peak_rss_gb() * (1 << 20)), file=sys.stderr)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "CALIBKIT_QUIET": "1"}, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 3):
        raise SystemExit(f"calibkit {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    return wall, int(peak[-1].split()[1]) / (1 << 20) if peak else float("nan"), done.stderr


def decode_floor(items: list[ImageItem], spec, batch_size: int) -> tuple[float, list]:
    """Seconds to decode and preprocess ``items`` once, and the batches (kept for the inference floors)."""
    start = time.perf_counter()
    batches = [batch.array for batch in iter_batches(items, spec, batch_size)]
    return time.perf_counter() - start, batches


def inference_floor(model: Path, batches: list) -> float:
    """Seconds of one plain ONNX Runtime pass of ``model`` over preprocessed ``batches`` (after a warm-up);
    a Q/DQ model runs as written, as the comparison and the sensitivity ranking run it."""
    session = OrtSession(model, ["CPUExecutionProvider"], qdq_as_written=True)
    session.run(batches[0])
    start = time.perf_counter()
    for batch in batches:
        session.run(batch)
    return time.perf_counter() - start


def stress_rows(pages: Path, count: int, tmp: Path) -> list[tuple]:
    """The stress detector (``datasets/build_stress_detector.py``: 117 M parameters at 960x960, built once
    into the cache) calibrated on the first ``count`` document pages, then compared (INT8 mse and FP16,
    no per-layer pass) on the same pages: each against its decode + inference floor, with its peak RSS."""
    sys.path.insert(0, str(ROOT / "datasets"))
    from build_stress_detector import SIZE, build

    model = cache_dir() / "stress-models" / f"stress-detector-{SIZE}.onnx"
    if not model.is_file():
        model.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(build(), str(model))
    folder = tmp / "stress-pages"
    folder.mkdir()
    for page in sorted(p for p in pages.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:count]:
        (folder / page.name).symlink_to(page)
    run, spec = tmp / "stress-run", model_preprocess(model)
    wall, peak, _ = run_cli(["calibrate", "--model", str(model), "--images", str(folder), "--out", str(run),
                             "--method", "mse", "--samples", "0", "--no-engine-check"])
    timings = json.loads((run / "timings.json").read_text())
    decode_s, single = decode_floor(discover_images(folder), spec, 1)
    fp32_s = inference_floor(model, single)
    rows = [(f"stress detector: calibrate on {count} pages vs decode + FP32 pass", wall, decode_s + fp32_s, 2.0, peak),
            ("stress detector: statistics pass vs decode + FP32 pass", timings["statistics_s"], decode_s + fp32_s,
             1.5, None)]
    compare = tmp / "stress-compare"
    wall, peak, _ = run_cli(["compare", "--model", str(model), "--images", str(folder), "--candidates",
                             f"int8:{run},fp16", "--no-bench", "--no-engine-check", "--out", str(compare)])
    passes = [fp32_s, inference_floor(run / "mse.qdq.onnx", single), inference_floor(compare / "model.fp16.onnx", single)]
    comparison = json.loads((compare / "report.json").read_text())["comparison"]
    layer_s, layer_images = comparison["timings"].get("layer_pass_s", 0.0), comparison["layer_images"]
    rows.append((f"stress detector: compare INT8 + FP16 on {count} pages, without its per-layer pass", wall - layer_s,
                 decode_s + sum(passes), 2.0, peak))
    rows.append((f"stress detector: per-layer pass ({layer_images} pages) vs one pass of each model", layer_s,
                 sum(passes) * layer_images / count, 2.0, None))
    return rows


def items_listed(path: Path) -> list[ImageItem]:
    return [ImageItem(Path(line)) for line in path.read_text().splitlines() if line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--stress-pages", type=int, default=10,
                        help="document pages for the stress detector's rows (0 skips them)")
    parser.add_argument("--pages", type=Path, default=ROOT.parent / "shared" / "data" / "doc-pages")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    model = demo_model()
    spec = model_preprocess(model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="calibkit-bench-") as tmp:
        run = Path(tmp) / "run"
        wall, peak, _ = run_cli(["calibrate", "--model", str(model), "--images", str(args.images), "--out", str(run),
                                 "--method", "all", "--samples", str(args.samples)])
        timings = json.loads((run / "timings.json").read_text())
        chosen = items_listed(run / "images.txt")
        decode_s, single = decode_floor(chosen, spec, 1)
        stats_floor = decode_s + inference_floor(model, single)
        del single
        rows.append(("calibrate --method all: total vs its statistics pass", wall, timings["statistics_s"], 1.3, peak))
        rows.append(("statistics pass vs decode + FP32 pass (batch 1)", timings["statistics_s"], stats_floor, 1.5, None))

        pool = discover_images(args.images)
        calibrated = {item.path.resolve() for item in chosen}
        held_out = [item for item in pool if item.path.resolve() not in calibrated]
        methods = ["entropy2", "minmax", "mse"]
        compare = Path(tmp) / "compare"
        wall, peak, _ = run_cli(["compare", "--model", str(model), "--images", str(args.images), "--candidates",
                                 f"int8:{run}:{'+'.join(methods)},fp16", "--exclude-calibration-images", "--no-bench",
                                 "--out", str(compare)])
        decode_s, batches = decode_floor(held_out, spec, INFERENCE_BATCH_SIZE)
        passes = {"fp32": inference_floor(model, batches)}
        for method in methods:
            passes[method] = inference_floor(run / f"{method}.qdq.onnx", batches)
        passes["fp16"] = inference_floor(compare / "model.fp16.onnx", batches)
        floor = decode_s + sum(passes.values())
        rows.append((f"compare {len(methods)} INT8 + FP16 on {len(held_out)} images", wall, floor, 1.5, peak))

        budget = Path(tmp) / "budget"
        wall, peak, _ = run_cli(["compare", "--model", str(model), "--images", str(args.images), "--candidates",
                                 f"int8:{run}:minmax", "--exclude-calibration-images", "--no-bench",
                                 "--accuracy-budget", "0.5", "--out", str(budget)])
        sensitivity = json.loads((budget / "report.json").read_text())["comparison"]["sensitivity"]
        layers = len(sensitivity["ranking"])
        subset = batches[: -(-sensitivity["sensitivity_images"] // INFERENCE_BATCH_SIZE)]
        ranking_floor = (layers + 1) * inference_floor(run / "minmax.qdq.onnx", subset)
        rows.append((f"sensitivity ranking over {layers} layers ({sensitivity['sensitivity_images']} images)",
                     sensitivity["seconds"]["ranking"], ranking_floor, 1.5, peak))

        if args.stress_pages:
            rows += stress_rows(args.pages, args.stress_pages, Path(tmp))

        if not args.skip_demo:
            wall, peak, _ = run_cli(["demo", "--out", str(Path(tmp) / "demo")])
            rows.append(("calibkit demo (whole command)", wall, 120.0, 1.0, peak))

    if args.json:
        args.json.write_text(json.dumps([dict(zip(("stage", "wall_s", "floor_s", "target", "peak_gb"), row))
                                         for row in rows], indent=1) + "\n")
    print(f"{'stage':<62} {'wall s':>8} {'floor s':>8} {'ratio':>6} {'target':>7} {'peak GB':>8}")
    for stage, wall, floor, target, peak in rows:
        shown_peak = "" if peak is None else f"{peak:.2f}"
        print(f"{stage:<62} {wall:8.1f} {floor:8.1f} {wall / floor:6.2f} {'<=' + format(target, 'g'):>7} "
              f"{shown_peak:>8}")
    print("floors: decode = every image decoded and preprocessed once; inference = one plain ONNX Runtime pass "
          "per model; the demo's 'floor' is the 2-minute target itself")


if __name__ == "__main__":
    main()
