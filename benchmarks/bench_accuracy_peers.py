"""calibkit's INT8 models against the peers' on EfficientNet-Lite0, from the same calibration images.

Run on demand (tens of minutes; installs the peers once): ``python benchmarks/bench_accuracy_peers.py``.

1. ``calibkit calibrate --method all --sampler random --seed 0`` picks the calibration images and writes
   calibkit's TensorRT-target Q/DQ models.
2. Those images, preprocessed once by calibkit (``imagenet-tf``), are saved as one array and handed to
   each peer in its own virtual environment (``$CALIBKIT_HOME/peer-venvs/<tool>``, made on first use):
   ONNX Runtime's ``quantize_static`` (per-channel symmetric, MinMax and Percentile 99.99; and its
   defaults), NNCF's ``nncf.quantize`` (ONNX backend, defaults) and NVIDIA Model Optimizer's ONNX PTQ
   (int8, entropy and max). A tool that fails to install or to run is reported, not hidden.
3. Every model runs here, in ONNX Runtime on the CPU, on all shared photos: top-1 and top-5 against the
   labels, agreement with FP32's top-1 on all images and on those not used for calibration, mean KL of
   the softmax against FP32's; with each tool's quantization wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calibkit.backends.onnxruntime import OrtSession  # noqa: E402
from calibkit.data.images import discover_images  # noqa: E402
from calibkit.data.loader import iter_batches  # noqa: E402
from calibkit.demo_assets import SHARED_IMAGES, demo_model  # noqa: E402
from calibkit.fileio import cache_dir  # noqa: E402
from calibkit.workflow import model_preprocess  # noqa: E402

# The peers, each with what its venv installs and the worker code that quantizes (reads CALIB, MODEL,
# OUT and the method from argv; writes OUT).
PEERS = {
    "onnxruntime": {
        "install": ["onnxruntime", "onnx"],
        "methods": ["minmax-per-channel-symmetric", "percentile-99.99-per-channel-symmetric", "defaults"],
        "code": '''
import sys, numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
calib, model, out, method = sys.argv[1:5]
data = np.load(calib, mmap_mode="r")[: int(sys.argv[5])]
class Reader(CalibrationDataReader):
    def __init__(self):
        self.rows = iter(range(len(data)))
    def get_next(self):
        i = next(self.rows, None)
        return None if i is None else {INPUT: np.ascontiguousarray(data[i : i + 1])}
import onnx
INPUT = onnx.load(model).graph.input[0].name
if method == "defaults":
    quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ)
else:
    calibrate = CalibrationMethod.MinMax if method.startswith("minmax") else CalibrationMethod.Percentile
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if calibrate == CalibrationMethod.Percentile:
        extra["CalibPercentile"] = 99.99
    quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate,
                    extra_options=extra)
''',
    },
    "nncf": {
        "install": ["nncf", "onnx", "onnxruntime"],
        "methods": ["defaults"],
        "code": '''
import sys, numpy as np, onnx, nncf
calib, model, out, method = sys.argv[1:5]
data = np.load(calib, mmap_mode="r")
graph = onnx.load(model)
name = graph.graph.input[0].name
dataset = nncf.Dataset(range(len(data)), lambda i: {name: np.ascontiguousarray(data[i : i + 1])})
options = {}
if method == "yolov8-ignored-scope":
    # NNCF's own YOLOv8 recipe (examples/post_training_quantization/onnx/yolov8_quantize_with_accuracy_control):
    # elementwise and sigmoid ops, and the head's box decoding from its Concats to the output, stay float
    nodes = {n.name for n in graph.graph.node}
    head = [n for n in ("/model.22/Concat", "/model.22/Concat_1", "/model.22/Concat_2") if n in nodes]
    options = {"preset": nncf.QuantizationPreset.MIXED, "ignored_scope": nncf.IgnoredScope(
        types=["Mul", "Sub", "Sigmoid"], subgraphs=[nncf.Subgraph(inputs=head, outputs=[graph.graph.node[-1].name])])}
onnx.save(nncf.quantize(graph, dataset, subset_size=len(data), **options), out)
''',
    },
    "modelopt": {
        "install": ["nvidia-modelopt[onnx]"],
        "methods": ["entropy", "max"],
        "code": '''
import sys, numpy as np
from modelopt.onnx.quantization import quantize
calib, model, out, method = sys.argv[1:5]
# FP32 I/O and float layers: its default (high_precision_dtype="fp16") casts the rest of the graph to FP16,
# which ONNX Runtime's CPU provider runs with top-1 0.1 % here.
quantize(model, quantize_mode="int8", calibration_data=np.load(calib), calibration_method=method, output_path=out,
         calibration_eps=["cpu"], high_precision_dtype="fp32")
''',
    },
}


def peer_python(tool: str, venvs: Path) -> Path:
    """The tool's own interpreter, creating its venv and installing the tool on first use."""
    venv = venvs / tool
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[tool]["install"]],
                              capture_output=True, text=True)
        if done.returncode != 0:
            python.unlink()
            raise RuntimeError(f"pip install {' '.join(PEERS[tool]['install'])} failed: {done.stderr.strip()[-300:]}")
    return python


def run_peer(python: Path, code: str, args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one quantization in the peer's interpreter."""
    # The kernel's high-water mark of the peer's own memory: ru_maxrss would include this process's, which
    # Linux carries over into the child across exec.
    wrapper = ("import sys\ntry:\n    exec(compile(open(sys.argv.pop(1)).read(), 'peer', 'exec'))\n"
               "finally:\n    print('PEAK_RSS_KB', next(int(line.split()[1]) for line in open('/proc/self/status')\n"
               "                              if line.startswith('VmHWM:')), file=sys.stderr)")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(code)
    start = time.perf_counter()
    done = subprocess.run([str(python), "-c", wrapper, fh.name, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    Path(fh.name).unlink()
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "no output")
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    return wall, int(peak[-1].split()[1]) / (1 << 20)


def quantize_with_peers(tools: list[str], venvs: Path, calib: Path, model: Path, tmp: Path,
                        count: Callable[[str], int],
                        methods: Mapping[str, list[str]] | None = None) -> tuple[list[tuple], dict[str, str]]:
    """Each peer of ``tools`` quantizes ``model`` from the first ``count(tool)`` rows of ``calib`` into
    ``tmp`` with each of its methods (``methods[tool]`` where given, else its own in :data:`PEERS`):
    ``(tool, method, model path, wall s, peak GB)`` per model, and what failed to install or run."""
    models, failures = [], {}
    for tool in (t for t in tools if t in PEERS):
        try:
            python = peer_python(tool, venvs)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            failures[tool] = str(exc)
            continue
        for method in (methods or {}).get(tool, PEERS[tool]["methods"]):
            out = tmp / f"{tool}-{method}.onnx"
            # Each peer reads its own copy: Model Optimizer 0.47 writes its shape-inferred graph over the
            # model it is given, which would change the user's (here the cached) model for every later run.
            given = shutil.copy(model, tmp / f"{tool}-{method}-input.onnx")
            try:
                wall, peak = run_peer(python, PEERS[tool]["code"],
                                      [str(calib), str(given), str(out), method, str(count(tool))])
            except RuntimeError as exc:
                failures[f"{tool} {method}"] = str(exc)
                continue
            models.append((tool, method, out, wall, peak))
    return models, failures


def report_failures(failures: Mapping[str, str], rows: list[dict], json_path: Path | None) -> None:
    """Print what was not measured, and write the rows and failures as JSON where asked."""
    for tool, why in failures.items():
        print(f"not measured: {tool}: {why}")
    if json_path:
        json_path.write_text(json.dumps({"rows": rows, "failures": dict(failures)}, indent=1) + "\n")


def evaluate(model: Path, batches: list) -> np.ndarray:
    """Logits of ``model`` over every batch (ONNX Runtime CPU)."""
    session = OrtSession(model, ["CPUExecutionProvider"])
    return np.concatenate([next(iter(session.run(batch).values())) for batch in batches])


def scores(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray, held_out: np.ndarray) -> dict:
    top5 = np.argsort(-logits, axis=1)[:, :5]
    agree = logits.argmax(1) == reference.argmax(1)

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, q = softmax(reference.astype(np.float64)), softmax(logits.astype(np.float64))
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))
    return {"top1": 100 * float(np.mean(top5[:, 0] == labels)),
            "top5": 100 * float(np.mean((top5 == labels[:, None]).any(1))),
            "agreement": 100 * float(np.mean(agree)), "agreement_held_out": 100 * float(np.mean(agree[held_out])),
            "kl": kl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--ort-images", type=int, default=260,
                        help="calibration images for quantize_static (it holds every activation of every image)")
    parser.add_argument("--tools", default="calibkit,onnxruntime,nncf,modelopt")
    parser.add_argument("--venvs", type=Path, default=cache_dir() / "peer-venvs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tools = args.tools.split(",")
    model = demo_model()
    spec = model_preprocess(model)
    items = discover_images(args.images)
    rows = []
    with tempfile.TemporaryDirectory(prefix="calibkit-peers-") as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "calibkit.cli", "calibrate", "--model", str(model), "--images",
                        str(args.images), "--out", str(run), "--method", "all", "--samples", str(args.samples),
                        "--sampler", "random", "--seed", "0", "--quiet"], check=True, cwd=ROOT, capture_output=True)
        calibkit_s = time.perf_counter() - start
        chosen = {Path(line).resolve() for line in (run / "images.txt").read_text().splitlines() if line}
        calib_items = [item for item in items if item.path.resolve() in chosen]
        calib = tmp / "calib.npy"
        np.save(calib, np.concatenate([b.array for b in iter_batches(calib_items, spec, 16)]))
        batches = [b.array for b in iter_batches(items, spec, 16)]
        labels = np.array([item.label for item in items])
        held_out = np.array([item.path.resolve() not in chosen for item in items])
        reference = evaluate(model, batches)
        models = [("fp32", "-", model, 0.0, float("nan"))]
        if "calibkit" in tools:
            summary = json.loads((run / "summary.json").read_text())
            for label in summary["methods"]:
                models.append(("calibkit (.qdq.onnx)", label, run / f"{label}.qdq.onnx", calibkit_s, float("nan")))
        peers, failures = quantize_with_peers(tools, args.venvs, calib, model, tmp,
                                              lambda tool: args.ort_images if tool == "onnxruntime" else args.samples)
        models += peers
        for tool, method, path, wall, peak in models:
            rows.append({"tool": tool, "method": method, **scores(evaluate(path, batches), reference, labels,
                                                                   held_out), "quantize_s": wall, "peak_gb": peak})
    header = f"{'tool':<22} {'method':<40} {'top1':>6} {'top5':>6} {'agree':>6} {'agree held-out':>15} " \
             f"{'mean KL':>8} {'quant s':>8} {'peak GB':>8}"
    print(header)
    for r in rows:
        print(f"{r['tool']:<22} {r['method']:<40} {r['top1']:6.1f} {r['top5']:6.1f} {r['agreement']:6.1f} "
              f"{r['agreement_held_out']:15.1f} {r['kl']:8.4f} {r['quantize_s']:8.1f} {r['peak_gb']:8.2f}")
    print(f"calibration: {args.samples} images (random, seed 0), the same array for every tool "
          f"(quantize_static: the first {args.ort_images}); evaluation: {len(items)} images, "
          f"{int(held_out.sum())} not used for calibration. calibkit's time is its whole calibrate --method all.")
    for tool, why in failures.items():
        print(f"not measured: {tool}: {why}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "failures": failures}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
