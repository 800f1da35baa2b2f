"""The GPU path against the CPU on the same machine: statistics pass, ranges, accuracy and latency.

Run on a machine with an NVIDIA GPU, onnxruntime-gpu and CuPy (``pip install 'calibkit[gpu]'``):
``python benchmarks/bench_gpu.py --images IMAGENET_DIR --efficientnet M.onnx --pages PAGES_DIR
--picodet layout_cdla.onnx --out WORK_DIR --json out.json [--stages efficientnet,picodet,compare]``

1. Statistics pass, CPU (ONNX Runtime CPU provider, histograms on the host) and GPU (CUDA provider,
   histograms in device memory) on the same images: images/s each, and the largest relative difference
   of every calibrator's amax between the two (the statistics themselves merge exactly; the activations
   differ by the providers' convolution algorithms). EfficientNet-Lite0 on the ImageNet sample; PP-PicoDet
   on document pages (the CPU pass on fewer pages: it is slow, and its rate is what is compared).
2. Comparison on the GPU: FP32, FP16 and INT8 (Q/DQ, TensorRT target for accuracy, ONNX Runtime target for
   speed) of EfficientNet-Lite0: top-1 and agreement on the GPU and on the CPU, latency at batch 1, 8 and
   32 (p50, p90, speedup with its spread), and the nodes the CUDA provider left on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibkit.calib.registry import compute_ranges, get_calibrator  # noqa: E402
from calibkit.data.images import discover_images  # noqa: E402
from calibkit.report.provenance import cpu_name, gpu_name  # noqa: E402
from calibkit.stats.collect import collect_statistics  # noqa: E402
from calibkit.workflow import model_preprocess  # noqa: E402

METHODS = ("entropy2", "minmax", "percentile:99.99", "mse")


def statistics_pass(model: Path, items, spec, batch_sizes: dict[str, int], cpu_items=None) -> dict:
    """Both passes, their rates and the amax differences of every method (on the images both saw)."""
    cpu_items = list(cpu_items or items)
    result = {"images_gpu": len(items), "images_cpu": len(cpu_items)}
    start = time.perf_counter()
    gpu_all = collect_statistics(model, items, spec, batch_size=batch_sizes["ort-cuda"], backend="ort-cuda")
    result["gpu_images_per_s"] = len(items) / (time.perf_counter() - start)
    start = time.perf_counter()
    cpu = collect_statistics(model, cpu_items, spec, batch_size=batch_sizes["ort-cpu"])
    result["cpu_images_per_s"] = len(cpu_items) / (time.perf_counter() - start)
    gpu = gpu_all if len(cpu_items) == len(items) else collect_statistics(
        model, cpu_items, spec, batch_size=batch_sizes["ort-cuda"], backend="ort-cuda")
    differences = {}
    for method in METHODS:
        calibrator = get_calibrator(method)
        a, b = compute_ranges(cpu.tensors, calibrator), compute_ranges(gpu.tensors, calibrator)
        relative = sorted(abs(a[n].amax - b[n].amax) / a[n].amax for n in a if a[n].amax > 0)
        differences[calibrator.label] = {"max": relative[-1], "median": relative[len(relative) // 2],
                                         "over_1e-3": sum(r > 1e-3 for r in relative), "tensors": len(relative)}
    result["amax_relative_difference"] = differences
    count_gap = max(abs(cpu.tensors[n].count - gpu.tensors[n].count) for n in cpu.tensors)
    result["largest_count_difference"] = int(count_gap)
    return result


def comparison_on_gpu(model: Path, images: Path, out: Path) -> dict:
    """calibrate on the GPU, then compare FP32/FP16/INT8 on the GPU and on the CPU."""
    from calibkit.cli import main

    run = out / "run"
    main(["calibrate", "--model", str(model), "--images", str(images), "--out", str(run), "--method", "mse,percentile:99.99",
          "--samples", "500", "--seed", "0", "--backend", "ort-cuda", "--quiet"])
    documents = {}
    for backend in ("ort-cuda", "ort-cpu"):
        report = out / f"compare-{backend}"
        main(["compare", "--model", str(model), "--images", str(images), "--candidates", f"int8:{run},fp16",
              "--out", str(report), "--backend", backend, "--exclude-calibration-images", "--quiet",
              *(["--no-bench"] if backend == "ort-cpu" else [])])
        documents[backend] = json.loads((report / "report.json").read_text())
    accuracy = {backend: {c["name"]: {k: c["metrics"].get(k) for k in ("top1", "agreement", "kl")}
                          for c in doc["comparison"]["candidates"]}
                for backend, doc in documents.items()}
    speed = [{k: row[k] for k in ("candidate", "batch", "p50_ms", "p90_ms", "speedup", "speedup_low", "speedup_high",
                                  "noisy")} for row in documents["ort-cuda"]["speed"]]
    placement = {name: {"nodes": p["nodes"], "on_cpu": [n["op"] for n in p["on_cpu"]]}
                 for name, p in documents["ort-cuda"]["comparison"].get("placement", {}).items()}
    return {"accuracy": accuracy, "speed": speed, "placement": placement,
            "reference_top1": {b: d["comparison"]["reference"]["metrics"].get("top1") for b, d in documents.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="the ImageNet sample (labels.csv)")
    parser.add_argument("--pages", type=Path, help="document pages")
    parser.add_argument("--picodet", type=Path, help="layout_cdla.onnx")
    parser.add_argument("--efficientnet", type=Path, help="EfficientNet-Lite0 ONNX")
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    parser.add_argument("--json", type=Path, required=True, help="results, updated after every stage")
    parser.add_argument("--stages", default="efficientnet,picodet,compare")
    parser.add_argument("--pages-gpu", type=int, default=200)
    parser.add_argument("--pages-cpu", type=int, default=40)
    args = parser.parse_args()
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    results.update(gpu=gpu_name(), cpu=cpu_name())
    for stage in args.stages.split(","):
        if stage == "efficientnet":
            results["efficientnet_statistics"] = statistics_pass(
                args.efficientnet, discover_images(args.images), model_preprocess(args.efficientnet),
                {"ort-cuda": 32, "ort-cpu": 1})
        elif stage == "picodet":
            pages = discover_images(args.pages)[: args.pages_gpu]
            results["picodet_statistics"] = statistics_pass(
                args.picodet, pages, model_preprocess(args.picodet, "paddle-det"), {"ort-cuda": 1, "ort-cpu": 1},
                pages[: args.pages_cpu])
        elif stage == "compare":
            results["efficientnet_comparison"] = comparison_on_gpu(args.efficientnet, args.images, args.out)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(stage, json.dumps(results, indent=1), flush=True)


if __name__ == "__main__":
    main()
