"""Peak RSS and wall time of ``calibrate`` and ``compare`` for every real model, as a user runs them.

Run on demand (several minutes): ``python benchmarks/bench_memory.py [--only yolo]``. The models, pages and
options are those of ``tests/test_real_models.py`` (calibrate on 6 document pages, compare on 4 others,
or on 12 text lines cut from them; EfficientNet-Lite0 on 100 + 100 photos); each command runs as the real
CLI in its own process, its peak read from the kernel (``calibkit.memory.peak_rss_gb``). Prints one
table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "datasets"))

from bench_pipeline import run_cli  # noqa: E402

from calibkit.demo_assets import SHARED_IMAGES, demo_model  # noqa: E402
from calibkit.fileio import cache_dir  # noqa: E402

PAGES = ROOT.parent / "shared" / "data" / "doc-pages"


def linked(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True)
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder


def cases(tmp: Path) -> list[tuple[str, Path, Path, Path, list[str], str, list[str]]]:
    """(name, model, calibration folder, evaluation folder, preprocess options, methods, compare options)."""
    from cut_text_lines import cut

    pages = sorted(PAGES.glob("*.jpg"))
    calib, evaluate = linked(tmp / "calib", pages[0:60:10]), linked(tmp / "eval", pages[5:65:15])
    paddle = cache_dir() / "paddle-models"
    lines = {}
    for name, folder in (("calib", calib), ("eval", evaluate)):
        cut(paddle / "ch_PP-OCRv4_det_infer.onnx", sorted(folder.iterdir()), tmp / f"lines-{name}", 24)
        lines[name] = tmp / f"lines-{name}"
    photos = sorted(SHARED_IMAGES.glob("*.jpg"))
    return [
        ("EfficientNet-Lite0", demo_model(), linked(tmp / "photos-calib", photos[0:200:2]),
         linked(tmp / "photos-eval", photos[1:200:2]), [], "entropy2,percentile:99.99,minmax", []),
        ("YOLOv8n-DocLayNet 1024", cache_dir() / "yolo-models" / "yolov8n-doclaynet.onnx", calib, evaluate, [],
         "mse,entropy2", ["--task-opt", "score=0.3"]),
        ("PP-PicoDet layout", paddle / "layout_cdla.onnx", calib, evaluate, ["--preset", "paddle-det"],
         "entropy2,percentile:99.99", []),
        ("PP-OCRv4 det 640", paddle / "ch_PP-OCRv4_det_infer.onnx", calib, evaluate,
         ["--preset", "paddle-ocr-det", "--size", "640x640"], "percentile:99.99", ["--task-opt", "threshold=0.3"]),
        ("PP-OCRv4 rec", paddle / "ch_PP-OCRv4_rec_infer.onnx", lines["calib"], lines["eval"],
         ["--preset", "paddle-ocr-rec", "--size", "48x320", "--task", "ocr-ctc"], "percentile:99.99", []),
        ("PP-OCR direction cls", paddle / "ch_ppocr_mobile_v2.0_cls_infer.onnx", lines["calib"], lines["eval"],
         ["--preset", "paddle-ocr-rec", "--size", "48x192"], "percentile:99.99", []),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the models whose name contains this")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="calibkit-memory-") as tmp:
        for name, model, calib, evaluate, preprocess, methods, extra in cases(Path(tmp)):
            if args.only and args.only.lower() not in name.lower():
                continue
            run = Path(tmp) / f"run-{len(rows)}"
            cal_s, cal_gb, _ = run_cli(["calibrate", "--model", str(model), "--images", str(calib), "--out", str(run),
                                        "--samples", "0", "--method", methods, "--no-engine-check", *preprocess])
            cmp_s, cmp_gb, _ = run_cli(["compare", "--model", str(model), "--images", str(evaluate), "--candidates",
                                        f"int8:{run},fp16", "--out", str(Path(tmp) / f"report-{len(rows)}"),
                                        "--no-bench", "--no-engine-check", *preprocess, *extra])
            rows.append((name, cal_s, cal_gb, cmp_s, cmp_gb))
            print(f"  {name}: calibrate {cal_gb:.2f} GB, compare {cmp_gb:.2f} GB", file=sys.stderr, flush=True)
    print(f"{'model':<26} {'calibrate s':>12} {'peak GB':>8} {'compare s':>10} {'peak GB':>8}")
    for name, cal_s, cal_gb, cmp_s, cmp_gb in rows:
        print(f"{name:<26} {cal_s:12.1f} {cal_gb:8.2f} {cmp_s:10.1f} {cmp_gb:8.2f}")


if __name__ == "__main__":
    main()
