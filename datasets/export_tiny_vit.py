"""Export a small random-weight vision transformer to ONNX: the robustness case for transformer graphs.

The weights are random (seeded), so its predictions mean nothing; what matters is the graph a real ViT
export has: a patch-embedding Conv, LayerNormalization, attention as MatMul -> Softmax -> MatMul, GELU
(Erf), residual Adds and a classification head. Needs torch (``pip install -e '.[export]'``).
Usage: python datasets/export_tiny_vit.py --out models/tiny_vit.onnx
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def build(size: int = 96, patch: int = 16, dim: int = 96, depth: int = 4, heads: int = 4, classes: int = 10,
          seed: int = 0):
    """A ViT with explicit attention (so the export shows MatMul and Softmax, not a fused op)."""
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            n, t, _ = x.shape
            q, k, v = self.qkv(x).reshape(n, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            weights = torch.softmax(q @ k.transpose(-2, -1) * (dim // heads) ** -0.5, dim=-1)
            return self.proj((weights @ v).transpose(1, 2).reshape(n, t, dim))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.attn = Attention()
            self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class TinyViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, dim, patch, stride=patch)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            return self.head(self.norm(self.blocks(x))[:, 0])

    torch.manual_seed(seed)
    return TinyViT().eval()


def export(out: Path, size: int = 96, opset: int = 17, seed: int = 0) -> Path:
    """Write the model with a dynamic batch axis; ONNX Runtime must agree with PyTorch to 1e-4."""
    import onnxruntime as ort
    import torch

    model = build(size=size, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / "staged.onnx"
        torch.onnx.export(model, torch.zeros(1, 3, size, size), str(staged), opset_version=opset, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        x = np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        err = float(np.abs(got - expected).max())
        if err > 1e-4:
            raise RuntimeError(f"ONNX Runtime differs from PyTorch by {err:.2e}")
        os.replace(staged, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(export(args.out, size=args.size, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
