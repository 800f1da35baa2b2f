"""The statistics pass and the comparison in one process against Ray tasks on 1, 2, 4, 8 local workers.

Run on demand: ``python benchmarks/bench_ray.py [--images DIR] [--model M] [--workers 1,2,4,8]``
(needs ``pip install 'calibkit[ray]'``); meant for a many-core machine. Each round runs one process and
then every worker count, side by side; the table gives images/s per configuration (median of the rounds,
with its range), its ratio to one process in the same round, the peak RSS of each worker process, the
driver's merge cost, and whether the merged statistics equal one process's bin for bin (and the
comparison's numbers one process's).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibkit import distributed  # noqa: E402
from calibkit.compare.run import compare_models  # noqa: E402
from calibkit.data.images import discover_images  # noqa: E402
from calibkit.demo_assets import SHARED_IMAGES, demo_model  # noqa: E402
from calibkit.memory import peak_rss_gb  # noqa: E402
from calibkit.samplers.registry import sample  # noqa: E402
from calibkit.stats.collect import collect_statistics, merge_shards  # noqa: E402
from calibkit.stats.histogram import DEFAULT_BINS  # noqa: E402
from calibkit.workflow import calibrate, fp16_candidate, int8_candidates, model_preprocess, model_task  # noqa: E402


def _worker_peak() -> tuple[int, float]:
    time.sleep(0.3)  # long enough for the calls to spread over every worker process
    return os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def worker_peaks(ray, workers: int) -> float:
    """The largest peak RSS (GB) among the instance's worker processes, read inside them."""
    remote = ray.remote(num_cpus=1)(_worker_peak)
    found = dict(ray.get([remote.remote() for _ in range(4 * workers)]))
    return max(found.values())


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--model", type=Path, help="default: EfficientNet-Lite0")
    parser.add_argument("--samples", type=int, default=200, help="distinct images (each read --repeat times)")
    parser.add_argument("--repeat", type=int, default=4, help="passes over the images in one run")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-compare", action="store_true", help="time the statistics pass alone")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ray"))
    args = parser.parse_args()
    model = args.model or demo_model()
    spec = model_preprocess(model)
    items = sample(discover_images(args.images), args.samples, "random", 0) * args.repeat
    counts = [int(w) for w in args.workers.split(",")]
    calibrate(model, args.images, args.out, methods="minmax", samples=min(args.samples, 100), preprocess=spec)
    candidates = int8_candidates(model, args.out) + [fp16_candidate(model, args.out)]
    task = model_task(model, spec, "classification")
    rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    same = {"statistics": True, "comparison": True}
    for _ in range(args.rounds):
        base_s, single = timed(lambda: collect_statistics(model, items, spec, shard_size=50))
        rates.setdefault("statistics, one process", []).append(len(items) / base_s)
        if not args.no_compare:
            base_c, one = timed(lambda: compare_models(model, candidates, items, spec, task, layer_images=0))
            rates.setdefault("comparison, one process", []).append(len(items) / base_c)
        for workers in counts:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            took, split = timed(lambda: distributed.sharded_statistics(model, items, spec, 1, DEFAULT_BINS,
                                                                       shard_size=50))
            if not args.no_compare:
                took_c, there = timed(lambda: distributed.sharded_comparison(model, candidates, items, spec, task,
                                                                             layer_images=0))
            peaks[f"{workers}"] = max(peaks.get(f"{workers}", 0.0), worker_peaks(ray, workers))
            ray.shutdown()
            distributed.remove_local_copies()
            timings = [("statistics", took, base_s)] + ([] if args.no_compare else [("comparison", took_c, base_c)])
            for stage, seconds, base in timings:
                key = f"{stage}, Ray {workers} worker(s)"
                rates.setdefault(key, []).append(len(items) / seconds)
                print(f"  {key}: {len(items) / seconds:.1f} images/s", file=sys.stderr, flush=True)
                ratios.setdefault(key, []).append(base / seconds)
            same["statistics"] &= all(np.array_equal(split.tensors[n].signed, single.tensors[n].signed)
                                      for n in single.tensors)
            same["comparison"] &= args.no_compare or all(a["metrics"]["agreement"] == b["metrics"]["agreement"]
                                                         for a, b in zip(one["candidates"], there["candidates"]))
    merge_s, _ = timed(lambda: merge_shards(single.shards))
    print(f"{len(items)} images ({args.samples} distinct x {args.repeat}), {model.name}, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds; driver peak RSS {peak_rss_gb():.2f} GB")
    print(f"{'configuration':<36} {'images/s':>9} {'range':>15} {'x one process':>14} {'range':>13} {'worker GB':>9}")
    for key, values in rates.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        ratio = ratios.get(key)
        ratio_text = (f"{statistics.median(ratio):14.2f} {f'{min(ratio):.2f}-{max(ratio):.2f}':>13}"
                      if ratio else f"{'1.00':>14} {'':>13}")
        workers = key.split("Ray ")[-1].split(" ")[0] if "Ray" in key else None
        peak = f"{peaks[workers]:9.2f}" if workers else f"{'':>9}"
        print(f"{key:<36} {statistics.median(values):9.1f} {spread:>15} {ratio_text} {peak}")
    print(f"driver merge: {merge_s * 1000 / len(single.shards):.1f} ms per 50-image shard "
          f"({len(single.tensors)} tensors x {2 * DEFAULT_BINS} bins); statistics equal one process's bin for bin: "
          f"{same['statistics']}; comparison agreement equal: {same['comparison']}")


if __name__ == "__main__":
    main()
