"""calibkit vs ONNX Runtime's calibrators on the demo model: wall time, peak RSS, amax agreement.

Run on demand (minutes): ``python benchmarks/bench_calibration.py [--sizes 100,500,1000] [--repeats 3]``.
Each measurement runs in its own process; a watchdog stops ONNX Runtime once its resident memory
passes ``--memory-limit-gb`` or its time passes ``--time-limit``, and the table says so.
Pairs compared: entropy2 ~ ORT Entropy, percentile 99.99 ~ ORT Percentile 99.99, minmax ~ ORT MinMax
(the algorithms differ for entropy, so its amax difference is a difference of method, not an error).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = {"Entropy": "entropy2", "Percentile": "percentile-99.99", "MinMax": "minmax"}


def _rss_gb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return 0.0


def _items(images: Path, n: int):
    from calibkit.data.images import discover_images
    from calibkit.samplers import sample

    return sample(discover_images(images), n, "random", 0)


def run_calibkit(model: str, images: str, n: int, out) -> None:
    from calibkit.calib import compute_ranges, parse_methods
    from calibkit.stats.collect import collect_statistics
    from calibkit.workflow import model_preprocess

    items, spec = _items(Path(images), n), model_preprocess(Path(model))  # outside the timing, as for ORT
    start = time.perf_counter()
    stats = collect_statistics(Path(model), items, spec)
    amax = {c.label: {k: r.amax for k, r in compute_ranges(stats.tensors, c).items()}
            for c in parse_methods("entropy2,percentile:99.99,minmax")}
    out.put({"seconds": time.perf_counter() - start,
             "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "amax": amax})


def run_onnxruntime(model: str, images: str, n: int, method: str, batch_size: int, out) -> None:
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    from calibkit.data.loader import iter_batches
    from calibkit.workflow import model_preprocess

    spec = model_preprocess(Path(model))
    # ORT stacks all batches into one array, so every batch must have the same size (divide N by it).
    batches = iter_batches(_items(Path(images), n), spec, batch_size=batch_size)

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {"input": batch.array}

    options = {"symmetric": True}
    if method == "Percentile":
        options["percentile"] = 99.99
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(Path(model), None, str(Path(tmp) / "aug.onnx"),
                                       getattr(CalibrationMethod, method), extra_options=options)
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints its progress; keep the table readable
            calibrator.collect_data(Reader())
            table = calibrator.compute_data()
    amax = {name: float(max(abs(np.asarray(d.range_value[0]).item()), abs(np.asarray(d.range_value[1]).item())))
            for name, d in table.data.items()}
    out.put({"seconds": time.perf_counter() - start,
             "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "amax": amax})


def supervise(target, args, memory_gb: float, time_limit: float) -> dict:
    """Run ``target`` in a child process; stop it past the memory or time limit."""
    queue: mp.Queue = mp.Queue()
    process = mp.get_context("fork").Process(target=target, args=(*args, queue))
    process.start()
    started, peak = time.time(), 0.0
    while process.is_alive():
        try:
            peak = max(peak, _rss_gb(process.pid))
        except FileNotFoundError:
            break
        if peak > memory_gb:
            process.kill()
            return {"status": f"out of memory (> {memory_gb:.0f} GB RSS)", "rss_gb": peak}
        if time.time() - started > time_limit:
            process.kill()
            return {"status": f"over {time_limit:.0f} s", "rss_gb": peak}
        if not queue.empty():
            break
        time.sleep(0.2)
    result = queue.get(timeout=60)
    process.join()
    return {"status": "ok", **result}


def measure(target, args, memory_gb: float, time_limit: float, repeats: int) -> dict:
    """Median wall time of ``repeats`` supervised runs (stopping at the first that fails), with its spread."""
    runs = []
    for _ in range(repeats):
        result = supervise(target, args, memory_gb, time_limit)
        if result["status"] != "ok":
            return result
        runs.append(result)
    seconds = sorted(run["seconds"] for run in runs)
    median_run = runs[[run["seconds"] for run in runs].index(seconds[len(seconds) // 2])]
    spread = f"{seconds[0]:.2f}-{seconds[-1]:.2f}" if repeats > 1 else ""
    return {**median_run, "spread": spread, "rss_gb": max(run["rss_gb"] for run in runs)}


def max_rel_diff(ours: dict, theirs: dict) -> float | None:
    common = [k for k in ours if k in theirs and theirs[k] > 0]
    if not common:
        return None
    return max(abs(ours[k] - theirs[k]) / theirs[k] for k in common)


def main(argv=None) -> int:
    from calibkit.bench.table import format_table
    from calibkit.demo_assets import SHARED_IMAGES, demo_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500,1000")
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--memory-limit-gb", type=float, default=20.0)
    parser.add_argument("--time-limit", type=float, default=900.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; the median is reported")
    parser.add_argument("--ort-batch-size", type=int, default=4, help="images per ONNX Runtime calibration batch")
    args = parser.parse_args(argv)
    os.environ["CALIBKIT_QUIET"] = "1"
    model = str(demo_model())
    limits = (args.memory_limit_gb, args.time_limit, max(1, args.repeats))
    columns = ["N", "tool", "status", "seconds", "spread", "peak_rss_gb", "vs_calibkit", "max_rel_amax_diff"]
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        ours = measure(run_calibkit, (model, str(args.images), n), *limits)
        rows.append({"N": n, "tool": "calibkit (all 3 methods, one pass)", "status": ours["status"],
                     "seconds": ours.get("seconds"), "spread": ours.get("spread", ""),
                     "peak_rss_gb": ours.get("rss_gb"), "vs_calibkit": None, "max_rel_amax_diff": None})
        print(format_table(rows[-1:], columns), flush=True)
        for method, label in PAIRS.items():
            theirs = measure(run_onnxruntime, (model, str(args.images), n, method, args.ort_batch_size), *limits)
            ok = theirs["status"] == "ok" and ours["status"] == "ok"
            rows.append({"N": n, "tool": f"onnxruntime {method} (vs {label})", "status": theirs["status"],
                         "seconds": theirs.get("seconds"), "spread": theirs.get("spread", ""),
                         "peak_rss_gb": theirs.get("rss_gb"),
                         "vs_calibkit": f"{theirs['seconds'] / ours['seconds']:.1f}x" if ok else None,
                         "max_rel_amax_diff": max_rel_diff(ours["amax"][label], theirs["amax"]) if ok else None})
            print(format_table(rows[-1:], columns), flush=True)
    print()
    print(format_table(rows, columns))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
