"""calibkit's INT8 YOLOv8n-DocLayNet against the peers', from the same calibration pages and preprocessing.

Run on demand (about 20 minutes once the peers' venvs exist): ``python benchmarks/bench_detection_peers.py``.

1. The real trained YOLOv8n (``datasets/fetch_yolo_model.py``, 1024x1024) and the shared document pages,
   sorted by name: the first ``--calib-pages`` even-numbered pages calibrate, the first ``--eval-pages``
   odd-numbered ones judge.
2. ``calibkit calibrate`` with no preprocessing or task flag (both come from the model's metadata) writes
   calibkit's TensorRT-target Q/DQ models, timed with its peak RSS; ``calibkit compare --accuracy-budget``
   on the same calibration pages (never the held-back ones) writes the mixed model that meets ``--budget``
   F1 points against FP32 there.
3. The same pages, preprocessed once by calibkit (letterbox 114, RGB, /255), go as one array to each peer
   of ``bench_accuracy_peers.py`` in its own venv: ONNX Runtime's ``quantize_static``, NNCF (defaults, and
   its own YOLOv8 recipe: elementwise ops, sigmoids and the head's box decoding ignored), NVIDIA Model
   Optimizer (entropy, max).
4. Every model runs here, in ONNX Runtime on the CPU, on the held-back pages through calibkit's detection
   task: box precision, recall and F1 against FP32's own boxes (score 0.3, IoU 0.5), and AP50, AP50:95 of
   the candidate's boxes against FP32's (pycocotools).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "datasets"))

from bench_accuracy_peers import quantize_with_peers, report_failures, run_peer  # noqa: E402
from fetch_yolo_model import fetch  # noqa: E402

from calibkit.compare.run import Candidate, compare_models  # noqa: E402
from calibkit.data.images import ImageItem  # noqa: E402
from calibkit.data.loader import iter_batches  # noqa: E402
from calibkit.fileio import cache_dir  # noqa: E402
from calibkit.workflow import model_preprocess, model_task  # noqa: E402

PAGES = ROOT.parent / "shared" / "data" / "doc-pages"
METHODS = "mse,percentile:99.99,entropy2,minmax"
PEER_METHODS = {"nncf": ["defaults", "yolov8-ignored-scope"]}
CALIBKIT = "import sys\nfrom calibkit.cli import main\nsys.exit(main(sys.argv[1:]))"


def calibkit_models(model: Path, pages: list[Path], tmp: Path, budget: float) -> list[tuple]:
    """calibkit's Q/DQ models from ``pages``, with the accuracy budget's mixed model fitted on them:
    ``(tool, method, path, wall s, peak GB)`` each."""
    folder = tmp / "calib-pages"
    folder.mkdir()
    for page in pages:
        (folder / page.name).symlink_to(page)
    run = tmp / "run"
    wall, peak = run_peer(Path(sys.executable), CALIBKIT, ["calibrate", "--model", str(model), "--images", str(folder),
                                                         "--out", str(run), "--method", METHODS, "--samples", "0",
                                                         "--quiet", "--no-engine-check"])
    labels = json.loads((run / "summary.json").read_text())["methods"]
    models = [("calibkit (.qdq.onnx)", label, run / f"{label}.qdq.onnx", wall, peak) for label in labels]
    return models + budget_model(model, folder, run, tmp, budget, wall, peak)


def budget_model(model: Path, folder: Path, run: Path, tmp: Path, budget: float, wall: float, peak: float) -> list:
    """The mixed model of ``calibkit compare --accuracy-budget`` fitted on the calibration pages alone
    (against FP32's own boxes, no labels), so the held-back pages judge it as they judge every other model;
    timed together with the calibration it starts from. Empty when the plain INT8 models already meet it."""
    fit = tmp / "fit"
    fit_wall, fit_peak = run_peer(Path(sys.executable), CALIBKIT, [
        "compare", "--model", str(model), "--images", str(folder), "--candidates", f"int8:{run}", "--out", str(fit),
        "--accuracy-budget", str(budget), "--layer-images", "0", "--no-bench", "--no-engine-check", "--quiet"])
    sensitivity = json.loads((fit / "report.json").read_text())["comparison"]["sensitivity"]
    if not sensitivity["budget"]["models"]:
        return []
    method = f"{sensitivity['calibrator']} + budget {budget:g} ({len(sensitivity['budget']['kept_float'])} float)"
    return [("calibkit (.qdq.onnx)", method, Path(sensitivity["budget"]["models"]["tensorrt"]), wall + fit_wall,
             max(peak, fit_peak))]


def unloadable(path: Path) -> str | None:
    """Why ONNX Runtime refuses ``path`` (a peer's model invalid at the model's opset), or None."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any refusal is reported, never hidden
        return str(exc).splitlines()[0][-240:]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=Path, default=PAGES)
    parser.add_argument("--calib-pages", type=int, default=24)
    parser.add_argument("--eval-pages", type=int, default=12)
    parser.add_argument("--tools", default="calibkit,onnxruntime,nncf,modelopt")
    parser.add_argument("--venvs", type=Path, default=cache_dir() / "peer-venvs")
    parser.add_argument("--budget", type=float, default=2.0,
                        help="calibkit's accuracy budget in F1 points, fitted on the calibration pages")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tools = args.tools.split(",")
    model = fetch(cache_dir() / "yolo-models")
    pages = sorted(p for p in args.pages.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    calib_pages, eval_pages = pages[0::2][: args.calib_pages], pages[1::2][: args.eval_pages]
    spec = model_preprocess(model)
    task = model_task(model, spec, "auto", {"score": "0.3"})
    with tempfile.TemporaryDirectory(prefix="calibkit-detection-peers-") as tmp:
        tmp = Path(tmp)
        calib = tmp / "calib.npy"
        np.save(calib, np.concatenate([b.array for b in iter_batches([ImageItem(p) for p in calib_pages], spec, 1)]))
        models = calibkit_models(model, calib_pages, tmp, args.budget) if "calibkit" in tools else []
        peers, failures = quantize_with_peers(tools, args.venvs, calib, model, tmp, lambda tool: len(calib_pages),
                                              PEER_METHODS)
        models += peers
        for tool, method, path, _, _ in list(models):
            why = unloadable(path)
            if why:
                failures[f"{tool} {method}"] = f"its model does not load in ONNX Runtime: {why}"
                models = [m for m in models if m[2] != path]
        candidates = [Candidate(f"{tool} {method}", "int8", path) for tool, method, path, _, _ in models]
        comparison = compare_models(model, candidates, [ImageItem(p) for p in eval_pages], spec, task, batch_size=1,
                                    layer_images=0)
    rows = []
    for (tool, method, _, wall, peak), result in zip(models, comparison["candidates"]):
        m = result["metrics"]
        rows.append({"tool": tool, "method": method, **{k: m.get(k) for k in ("precision", "recall", "f1", "ap50",
                                                                                 "ap", "score_reach")},
                     "quantize_s": wall, "peak_gb": peak})
    print(f"{'tool':<22} {'method':<24} {'P':>6} {'R':>6} {'F1':>6} {'AP50':>6} {'AP50:95':>8} {'quant s':>8} {'GB':>5}")
    for r in rows:
        cells = [f"{r[k]:6.3f}" if r[k] is not None else f"{'-':>6}" for k in ("precision", "recall", "f1", "ap50")]
        ap = f"{r['ap']:8.3f}" if r["ap"] is not None else f"{'-':>8}"
        print(f"{r['tool']:<22} {r['method']:<24} {' '.join(cells)} {ap} {r['quantize_s']:8.1f} {r['peak_gb']:5.2f}")
    reference = comparison["reference"]["metrics"]["boxes_per_image"] * comparison["images"]
    print(f"calibration: {len(calib_pages)} even pages, the same array for every peer; evaluation: {len(eval_pages)} "
          f"odd pages, {reference:.0f} FP32 boxes at score 0.3; P/R/F1 at IoU 0.5 and AP against FP32's boxes.")
    report_failures(failures, rows, args.json)


if __name__ == "__main__":
    main()
