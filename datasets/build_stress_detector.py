"""A random-weight detector of the size users deploy, to hold calibkit's memory and speed to account.

``python datasets/build_stress_detector.py --out models/`` writes ``stress-detector-960.onnx``: a
YOLOv8-style network (convolutions with SiLU, C2f-like stages of 3x3 bottlenecks with residual adds and
concatenations, a feature pyramid neck with upsampling, one detection layer per stride 8/16/32 and a
single ``[1, 4 + 11, 18900]`` output), static batch 1 at 960x960, 117 million parameters (469 MB of FP32
weights) and 141 convolutions. Weights are seeded (same file every time) and mean nothing:
this model is for memory and speed, never accuracy. Built with onnx alone, no framework.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 960
CLASSES = 11
WIDTHS = (80, 160, 320, 640, 896)  # stem and the four backbone stages
DEPTHS = (0, 4, 8, 10, 4)  # bottlenecks per stage


class Builder:
    """Nodes and seeded He-initialised weights of a float32 ONNX graph, named as an exporter would."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"/model.{self.count}/{kind}"

    def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, act: bool = True) -> str:
        base = self.name("conv")
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.01).astype(np.float32)
        self.weights += [numpy_helper.from_array(w, f"{base}.weight"), numpy_helper.from_array(b, f"{base}.bias")]
        out = f"{base}/Conv_output_0"
        self.nodes.append(helper.make_node("Conv", [x, f"{base}.weight", f"{base}.bias"], [out], name=f"{base}/Conv",
                                           kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        if not act:
            return out
        sig, mul = f"{base}/Sigmoid_output_0", f"{base}/Mul_output_0"
        self.nodes += [helper.make_node("Sigmoid", [out], [sig], name=f"{base}/Sigmoid"),
                       helper.make_node("Mul", [out, sig], [mul], name=f"{base}/Mul")]
        return mul

    def op(self, kind: str, inputs: list[str], **attrs) -> str:
        base = self.name(kind.lower())
        out = f"{base}/{kind}_output_0"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=f"{base}/{kind}", **attrs))
        return out

    def constant(self, name: str, values: list, dtype=np.int64) -> str:
        self.weights.append(numpy_helper.from_array(np.array(values, dtype=dtype), name))
        return name

    def c2f(self, x: str, cin: int, cout: int, depth: int, residual: bool = True) -> str:
        """Ultralytics' C2f: split in two, ``depth`` 3x3 bottlenecks on one half, every half concatenated."""
        half = cout // 2
        y = self.conv(x, cin, cout)
        parts = [y]
        current = self.op("Slice", [y, self.constant(f"{y}.start", [half]), self.constant(f"{y}.end", [cout]),
                                    self.constant(f"{y}.axes", [1])])
        for _ in range(depth):
            z = self.conv(self.conv(current, half, half, 3), half, half, 3)
            current = self.op("Add", [current, z]) if residual else z
            parts.append(current)
        return self.conv(self.op("Concat", parts, axis=1), cout + depth * half, cout)


def build(seed: int = 0, size: int = SIZE, widths: tuple[int, ...] = WIDTHS,
          depths: tuple[int, ...] = DEPTHS) -> onnx.ModelProto:
    """The detector at ``size`` px (a multiple of 32) with ``widths`` channels and ``depths`` bottlenecks
    per stage (the tests build a narrow, small one of the same architecture)."""
    g = Builder(seed)
    x = g.conv("images", 3, widths[0], 3, 2)
    features = []
    for i in range(1, len(widths)):
        x = g.c2f(g.conv(x, widths[i - 1], widths[i], 3, 2), widths[i], widths[i], depths[i])
        features.append((x, widths[i]))
    (p3, c3), (p4, c4), (p5, c5) = features[1:]
    scale = g.constant("upsample.scales", [1.0, 1.0, 2.0, 2.0], np.float32)
    up = g.op("Resize", [p5, "", scale], mode="nearest")
    n4 = g.c2f(g.op("Concat", [up, p4], axis=1), c5 + c4, c4, 6, residual=False)
    up = g.op("Resize", [n4, "", scale], mode="nearest")
    n3 = g.c2f(g.op("Concat", [up, p3], axis=1), c4 + c3, c3, 6, residual=False)
    d4 = g.c2f(g.op("Concat", [g.conv(n3, c3, c3, 3, 2), n4], axis=1), c3 + c4, c4, 6, residual=False)
    d5 = g.c2f(g.op("Concat", [g.conv(d4, c4, c4, 3, 2), p5], axis=1), c4 + c5, c5, 6, residual=False)
    heads = []
    for level, (feature, width) in enumerate(((n3, c3), (d4, c4), (d5, c5))):
        box = g.conv(g.conv(g.conv(feature, width, 64, 3), 64, 64, 3), 64, 4, act=False)
        cls = g.conv(g.conv(g.conv(feature, width, 160, 3), 160, 160, 3), 160, CLASSES, act=False)
        side = size // (8 << level)
        flat = g.constant(f"head.{level}.shape", [1, 4 + CLASSES, side * side])
        heads.append(g.op("Reshape", [g.op("Concat", [box, g.op("Sigmoid", [cls])], axis=1), flat]))
    g.nodes.append(helper.make_node("Concat", heads, ["output0"], name="/model.head/Concat", axis=2))
    anchors = sum((size // s) ** 2 for s in (8, 16, 32))
    graph = helper.make_graph(
        g.nodes, "stress_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + CLASSES, anchors])], g.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="calibkit-stress")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = build(args.seed)
    path = args.out / f"stress-detector-{SIZE}.onnx"
    onnx.save(model, str(path))
    params = sum(int(np.prod(w.dims)) for w in model.graph.initializer)
    convs = sum(node.op_type == "Conv" for node in model.graph.node)
    print(f"{path}: {params / 1e6:.0f} M parameters, {convs} convolutions, {path.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
