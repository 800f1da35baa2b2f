"""Cut text-line crops from document pages with the FP32 PP-OCRv4 text detector, for the recogniser
and the direction classifier (their inputs are single lines, 48 px high).

Each connected region of the detector's probability map above 0.3 becomes one crop, padded a little,
cut from the original page. Usage:
python datasets/cut_text_lines.py --detector ch_PP-OCRv4_det_infer.onnx --pages DIR --out DIR [--limit 300]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

DETECTOR_SIZE = (960, 736)


def text_boxes(probability: np.ndarray, threshold: float = 0.3, min_height: int = 8) -> list[tuple[int, int, int, int]]:
    """Boxes (x1, y1, x2, y2) in map pixels of the line-shaped regions above ``threshold``."""
    labels, _ = ndimage.label(probability > threshold)
    boxes = []
    for rows, cols in ndimage.find_objects(labels):
        height, width = rows.stop - rows.start, cols.stop - cols.start
        if height >= min_height and width >= 2 * height:
            boxes.append((cols.start, rows.start, cols.stop, rows.stop))
    return boxes


def cut(detector: Path, pages: list[Path], out: Path, limit: int) -> int:
    """Write up to ``limit`` crops (PNG) into ``out``, a few from every page in turn; return the count."""
    import onnxruntime as ort

    from calibkit.data.preprocess import PRESETS, decode_image

    spec = PRESETS["paddle-ocr-det"].with_overrides(size=DETECTOR_SIZE)
    session = ort.InferenceSession(str(detector), providers=["CPUExecutionProvider"])
    out.mkdir(parents=True, exist_ok=True)
    per_page = max(1, -(-limit // max(len(pages), 1)))
    written = 0
    for page in pages:
        image = decode_image(page)
        prob = session.run(None, {session.get_inputs()[0].name: spec(image)[None]})[0][0, 0]
        scale_x, scale_y = image.width / DETECTOR_SIZE[1], image.height / DETECTOR_SIZE[0]
        for index, (x1, y1, x2, y2) in enumerate(text_boxes(prob)[:per_page]):
            pad = (y2 - y1) * 0.3
            box = (max(0, (x1 - pad) * scale_x), max(0, (y1 - pad) * scale_y),
                   min(image.width, (x2 + pad) * scale_x), min(image.height, (y2 + pad) * scale_y))
            image.crop(tuple(round(v) for v in box)).save(out / f"{page.stem}__line{index:02d}.png")
            written += 1
            if written >= limit:
                return written
    return written


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=Path, required=True)
    parser.add_argument("--pages", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=300)
    args = parser.parse_args()
    pages = sorted(p for p in args.pages.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    print(cut(args.detector, pages, args.out, args.limit), "lines written to", args.out)


if __name__ == "__main__":
    main()
