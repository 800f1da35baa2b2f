"""The statistics pass in one process against Ray tasks on a local instance of 1 and 2 workers.

Run on demand: ``python benchmarks/bench_ray.py [--samples 500]`` (needs ``pip install 'calibkit[ray]'``).
Prints images/s of each, the driver's merge cost per 50-image shard (merging is all the driver computes),
and whether the merged statistics equal one process's bin for bin.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibkit import distributed  # noqa: E402
from calibkit.data.images import discover_images  # noqa: E402
from calibkit.demo_assets import SHARED_IMAGES, demo_model  # noqa: E402
from calibkit.samplers.registry import sample  # noqa: E402
from calibkit.stats.collect import collect_statistics, merge_shards  # noqa: E402
from calibkit.stats.histogram import DEFAULT_BINS  # noqa: E402
from calibkit.workflow import model_preprocess  # noqa: E402


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    model = demo_model()
    spec = model_preprocess(model)
    items = sample(discover_images(args.images), args.samples, "random", 0)
    rows = []
    start = time.perf_counter()
    single = collect_statistics(model, items, spec, shard_size=50)
    rows.append(("one process (inference + binning threads)", len(items) / (time.perf_counter() - start)))
    same = True
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter()
        split = distributed.sharded_statistics(model, items, spec, 1, DEFAULT_BINS, shard_size=50)
        rows.append((f"Ray, {workers} local worker(s)",
                     len(items) / (time.perf_counter() - start)))
        ray.shutdown()
        same &= all(np.array_equal(split.tensors[n].signed, single.tensors[n].signed) for n in single.tensors)
    start = time.perf_counter()
    merge_shards(single.shards)
    merge_ms = (time.perf_counter() - start) * 1000 / len(single.shards)
    print(f"{'statistics pass, EfficientNet-Lite0, ' + str(len(items)) + ' images':<52} {'images/s':>9}")
    for name, rate in rows:
        print(f"{name:<52} {rate:9.1f}")
    print(f"driver merge: {merge_ms:.1f} ms per 50-image shard ({len(single.tensors)} tensors x {2 * DEFAULT_BINS} bins); "
          f"merged statistics equal one process's bin for bin: {same}")


if __name__ == "__main__":
    main()
