"""Experiment: does the sampler matter? INT8 top-1 agreement with FP32 for random vs kmeans subsets.

Run on demand: ``python benchmarks/exp_sampler_agreement.py [--sizes 100,500] [--seeds 0,1,2]``.
Calibrates the demo model on subsets of the shared photos, exports the ONNX Runtime Q/DQ model for
each calibrator, and scores all photos (the subsets come from the same pool: a coverage set, not a
held-out benchmark). Also reports the sampler's own cost, next to the statistics pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    os.environ.setdefault("CALIBKIT_QUIET", "1")
    import warnings

    from calibkit.artifacts.method_files import qdq_paths
    from calibkit.bench.table import format_table
    from calibkit.data.images import discover_images
    from calibkit.demo_assets import SHARED_IMAGES, demo_model
    from calibkit.sensitivity.budget import task_loss
    from calibkit.workflow import calibrate, image_cache, model_preprocess, model_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500")
    parser.add_argument("--samplers", default="random,kmeans")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="entropy2,percentile:99.99")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    model = demo_model()
    pool = discover_images(SHARED_IMAGES)
    spec = model_preprocess(model)
    cache = image_cache(pool, spec)
    task = model_task(model, spec, "classification", items=pool)
    reference = [task.decode(out, batch) for batch, out in cache.run(model)]

    def metrics(path: Path) -> dict:
        return task_loss(task, reference, cache.run(path), "agreement")[2]

    rows = []
    for sampler in args.samplers.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                with tempfile.TemporaryDirectory() as tmp:
                    run = calibrate(model, pool, Path(tmp), methods=args.methods, samples=n, sampler=sampler,
                                    seed=seed, preprocess=spec, shard_size=None)
                    for label in run.calibrators:
                        int8 = metrics(qdq_paths(Path(tmp), label)["onnxruntime"])
                        rows.append({
                            "sampler": sampler, "N": n, "seed": seed, "method": label,
                            "agreement_pct": int8["agreement"], "top1_pct": int8["top1"],
                            "sampling_s": run.timings["sampling_s"], "statistics_s": run.timings["statistics_s"],
                        })
                print(format_table(rows[-len(run.calibrators):], list(rows[-1])), flush=True)
    print()
    print(f"FP32 top-1 on the pool: {metrics(model)['top1']:.2f}%")
    print(format_table(rows, ["sampler", "N", "seed", "method", "agreement_pct", "top1_pct", "sampling_s",
                              "statistics_s"]))
    summary = {}
    for row in rows:
        summary.setdefault((row["sampler"], row["N"], row["method"]), []).append(row["agreement_pct"])
    print()
    print(format_table([{"sampler": k[0], "N": k[1], "method": k[2], "mean_agreement_pct": sum(v) / len(v),
                         "min": min(v), "max": max(v)} for k, v in summary.items()],
                       ["sampler", "N", "method", "mean_agreement_pct", "min", "max"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
