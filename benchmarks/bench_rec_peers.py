"""calibkit's INT8 PP-OCRv4 recogniser against the peers', from the same calibration text lines.

Run on demand (about 10 minutes once the peers' venvs exist): ``python benchmarks/bench_rec_peers.py``.

1. Text lines are cut from the shared document pages by the FP32 PP-OCRv4 detector
   (``datasets/cut_text_lines.py``): the even-numbered pages (sorted by name) give the calibration lines,
   one per page; the odd-numbered pages give the evaluation lines, ``--eval-lines-per-page`` per page.
2. ``calibkit calibrate --method mse,percentile:99.99`` on the calibration lines writes calibkit's
   TensorRT-target Q/DQ models.
3. The same lines, preprocessed once by calibkit (``paddle-ocr-rec``, 48x320), go as one array to each
   peer of ``bench_accuracy_peers.py`` in its own venv (ONNX Runtime's ``quantize_static``, NNCF, NVIDIA
   Model Optimizer), each given its own copy of the model.
4. Every model runs here, in ONNX Runtime on the CPU, on the evaluation lines: character error rate and
   lines read exactly, both against FP32's greedy CTC reading (no ground-truth text is needed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "datasets"))

from bench_accuracy_peers import quantize_with_peers, report_failures  # noqa: E402
from cut_text_lines import cut  # noqa: E402
from fetch_paddle_models import fetch  # noqa: E402

from calibkit.backends.onnxruntime import OrtSession  # noqa: E402
from calibkit.data.images import discover_images  # noqa: E402
from calibkit.data.loader import iter_batches  # noqa: E402
from calibkit.fileio import cache_dir  # noqa: E402
from calibkit.tasks.ocr_ctc import ctc_greedy, edit_distance  # noqa: E402
from calibkit.workflow import model_preprocess  # noqa: E402

PAGES = ROOT.parent / "shared" / "data" / "doc-pages"
PRESET = ["--preset", "paddle-ocr-rec", "--size", "48x320"]


def readings(model: Path, batches: list[np.ndarray], as_written: bool) -> list[tuple[int, ...]]:
    """Greedy CTC reading of every line; a Q/DQ model runs as its graph is written, as calibkit compares it."""
    session = OrtSession(model, ["CPUExecutionProvider"], qdq_as_written=as_written)
    return [text for batch in batches for text in ctc_greedy(next(iter(session.run(batch).values())))]


def scores(reference: list[tuple[int, ...]], candidate: list[tuple[int, ...]]) -> dict:
    errors = sum(edit_distance(r, c) for r, c in zip(reference, candidate))
    return {"cer": 100 * errors / max(sum(len(r) for r in reference), 1),
            "exact": 100 * float(np.mean([r == c for r, c in zip(reference, candidate)]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=Path, default=PAGES)
    parser.add_argument("--eval-lines-per-page", type=int, default=1)
    parser.add_argument("--tools", default="calibkit,onnxruntime,nncf,modelopt")
    parser.add_argument("--venvs", type=Path, default=cache_dir() / "peer-venvs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tools = args.tools.split(",")
    models = fetch(cache_dir() / "paddle-models")
    model, detector = models / "ch_PP-OCRv4_rec_infer.onnx", models / "ch_PP-OCRv4_det_infer.onnx"
    pages = sorted(p for p in args.pages.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    spec = model_preprocess(model, "paddle-ocr-rec", (48, 320))
    rows = []
    with tempfile.TemporaryDirectory(prefix="calibkit-rec-peers-") as tmp:
        tmp = Path(tmp)
        calib_lines = cut(detector, pages[0::2], tmp / "calib", len(pages[0::2]))
        eval_lines = cut(detector, pages[1::2], tmp / "eval", args.eval_lines_per_page * len(pages[1::2]))
        calib = tmp / "calib.npy"
        np.save(calib, np.concatenate([b.array for b in iter_batches(discover_images(tmp / "calib"), spec, 8)]))
        batches = [b.array for b in iter_batches(discover_images(tmp / "eval"), spec, 8)]
        reference = readings(model, batches, False)
        candidates = []
        if "calibkit" in tools:
            run, start = tmp / "run", time.perf_counter()
            subprocess.run([sys.executable, "-m", "calibkit.cli", "calibrate", "--model", str(model), "--images",
                            str(tmp / "calib"), "--out", str(run), "--method", "mse,percentile:99.99", "--samples", "0",
                            "--quiet", *PRESET], check=True, cwd=ROOT, capture_output=True)
            wall = time.perf_counter() - start
            for label in json.loads((run / "summary.json").read_text())["methods"]:
                candidates.append(("calibkit (.qdq.onnx)", label, run / f"{label}.qdq.onnx", wall))
        peers, failures = quantize_with_peers(tools, args.venvs, calib, model, tmp, lambda tool: calib_lines)
        candidates += [(tool, method, path, wall) for tool, method, path, wall, _ in peers]
        for tool, method, path, wall in candidates:
            rows.append({"tool": tool, "method": method, **scores(reference, readings(path, batches, True)),
                         "quantize_s": wall})
    print(f"{'tool':<22} {'method':<40} {'CER %':>7} {'exact %':>8} {'quant s':>8}")
    for r in rows:
        print(f"{r['tool']:<22} {r['method']:<40} {r['cer']:7.2f} {r['exact']:8.1f} {r['quantize_s']:8.1f}")
    print(f"calibration: {calib_lines} lines (one per even page), the same array for every tool; evaluation: "
          f"{eval_lines} lines from the odd pages; CER and exact lines against FP32's reading.")
    report_failures(failures, rows, args.json)


if __name__ == "__main__":
    main()
