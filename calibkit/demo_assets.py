"""Where the demo's model and images come from: a cached export of EfficientNet-Lite0 and shared photos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from calibkit.errors import CalibkitError
from calibkit.fileio import cache_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPORT_SCRIPT = REPO_ROOT / "datasets" / "export_efficientnet_lite0.py"
SHARED_IMAGES = REPO_ROOT.parent / "shared" / "data" / "imagenet-sample-320"


def demo_model() -> Path:
    """Path of the exported EfficientNet-Lite0 ONNX model, exporting it on first use."""
    path = cache_dir() / "efficientnet_lite0.onnx"
    if path.is_file():
        return path
    if not EXPORT_SCRIPT.is_file():
        raise CalibkitError(f"{path}: demo model missing and {EXPORT_SCRIPT} not found; run from a calibkit checkout")
    print(f"exporting the demo model to {path} (once) ...", file=sys.stderr)
    done = subprocess.run([sys.executable, str(EXPORT_SCRIPT), "--out", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CalibkitError(
            f"{EXPORT_SCRIPT}: export failed ({tail[0]}); install its needs with pip install -e '.[export]'"
        )
    return path


def demo_images() -> Path:
    """The 1000 shared ImageNet photos when present, else scikit-learn's two bundled sample photos."""
    if (SHARED_IMAGES / "labels.csv").is_file():
        return SHARED_IMAGES
    fallback = cache_dir() / "sample-images"
    if not any(fallback.glob("*.jpg")):
        from sklearn.datasets import load_sample_images

        fallback.mkdir(parents=True, exist_ok=True)
        bunch = load_sample_images()
        for name, pixels in zip(bunch.filenames, bunch.images):
            Image.fromarray(np.asarray(pixels)).save(fallback / Path(name).name, quality=95)
    print(f"{SHARED_IMAGES} not found: using {fallback} (2 unlabelled photos)", file=sys.stderr)
    return fallback
