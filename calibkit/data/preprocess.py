"""Decode an image file and turn it into the float tensor a vision model expects."""

from __future__ import annotations

import ast
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from calibkit.errors import CalibkitError

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


RESIZE_MODES = {
    "crop": "centre-crop crop_fraction of the short side, then resize (ImageNet classifiers)",
    "stretch": "resize to the input size ignoring the aspect ratio (Paddle detectors, OCR detectors)",
    "letterbox": "keep the aspect ratio, fit inside the input, pad the borders evenly (YOLO)",
    "pad-right": "keep the aspect ratio up to the input width, scale to the input height, pad on the right "
                 "(CTC text recognisers)",
}


@dataclass(frozen=True)
class Preprocess:
    """Geometry (``resize`` mode to ``size``), channel order, then ``(x - mean) / std``.

    ``mean`` and ``std`` are per input channel, in the order the model is fed (``channel_order``), on
    the 0-255 pixel scale: plain ``/255`` scaling is mean 0, std 255. ``pad_value`` (0-255) fills the
    borders of ``letterbox`` and ``pad-right``. ``size`` is ``None`` until fitted to a model.
    """

    size: tuple[int, int] | None = None
    crop_fraction: float = 224 / 256
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    interpolation: str = "bicubic"
    layout: str = "NCHW"
    resize: str = "crop"
    channel_order: str = "RGB"
    pad_value: float = 0.0
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise CalibkitError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(_RESAMPLE)}")
        if self.layout not in ("NCHW", "NHWC"):
            raise CalibkitError(f"unknown layout {self.layout!r}; use NCHW or NHWC")
        if self.resize not in RESIZE_MODES:
            raise CalibkitError(f"unknown resize mode {self.resize!r}; use one of {', '.join(RESIZE_MODES)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise CalibkitError(f"unknown channel order {self.channel_order!r}; use RGB or BGR")
        if not 0 < self.crop_fraction <= 1:
            raise CalibkitError(f"crop fraction {self.crop_fraction} must be in (0, 1]")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise CalibkitError("--mean and --std need three values each, std > 0")

    def with_overrides(self, **changes: object) -> "Preprocess":
        """Copy with the non-``None`` entries of ``changes`` applied (CLI flags over a preset), named for
        what it is: the preset's name while nothing differs, ``<preset> with mean, std changed`` when some
        fields do, ``custom`` when every field given differs (provenance never names a preset not used)."""
        kept = {key: value for key, value in changes.items() if value is not None}
        changed = [key for key, value in kept.items() if getattr(self, key) != value]
        if not changed:
            return self
        name = "custom" if len(changed) == len(changes) else f"{self.name} with {', '.join(changed)} changed"
        return replace(self, **kept, name=name)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "size": list(self.size) if self.size else None,
            "resize": self.resize,
            "crop_fraction": self.crop_fraction,
            "channel_order": self.channel_order,
            "mean": list(self.mean),
            "std": list(self.std),
            "pad_value": self.pad_value,
            "interpolation": self.interpolation,
            "layout": self.layout,
        }

    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image, without the batch axis."""
        h, w = self.size
        return (3, h, w) if self.layout == "NCHW" else (h, w, 3)

    def describe(self) -> str:
        """One line for reports: what was done to every image, in order."""
        h, w = self.size or (0, 0)
        geometry = {"crop": f"centre crop {self.crop_fraction:.4g} of the short side, resize to {h}x{w}",
                    "stretch": f"stretch to {h}x{w}",
                    "letterbox": f"letterbox to {h}x{w} (pad {self.pad_value:g})",
                    "pad-right": f"scale to height {h}, width up to {w}, pad right ({self.pad_value:g})"}[self.resize]
        mean = ",".join(f"{v:g}" for v in self.mean)
        std = ",".join(f"{v:g}" for v in self.std)
        return (f"{self.name}: {geometry}, {self.interpolation}; {self.channel_order}; (x - [{mean}]) / [{std}]; "
                f"{self.layout}")

    def placement(self, image_size: tuple[int, int]) -> tuple[tuple[float, float, float, float], tuple[int, int],
                                                             tuple[int, int]]:
        """Where an image of ``image_size`` (w, h) lands in the input: the source box that is used, the
        size it is resized to, and its offset on the canvas; one place for every resize mode."""
        if self.size is None:
            raise CalibkitError("preprocessing has no input size; pass --size HxW for a model with a dynamic size")
        width, height = image_size
        target_h, target_w = self.size
        whole = (0.0, 0.0, float(width), float(height))
        if self.resize == "stretch":
            return whole, (target_w, target_h), (0, 0)
        if self.resize == "crop":
            scale = self.crop_fraction * min(width / target_w, height / target_h)
            crop_w, crop_h = min(target_w * scale, width), min(target_h * scale, height)
            left, top = max((width - crop_w) / 2, 0.0), max((height - crop_h) / 2, 0.0)
            return (left, top, left + crop_w, top + crop_h), (target_w, target_h), (0, 0)
        if self.resize == "letterbox":
            scale = min(target_w / width, target_h / height)
            new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
            return whole, (new_w, new_h), ((target_w - new_w) // 2, (target_h - new_h) // 2)
        new_w = max(1, min(target_w, math.ceil(target_h * width / height)))
        return whole, (new_w, target_h), (0, 0)

    def geometry(self, image: Image.Image) -> Image.Image:
        """``image`` resized (and cropped or padded) to ``size``: what the model sees, before normalising."""
        box, resized_size, offset = self.placement(image.size)
        resized = image.resize(resized_size, _RESAMPLE[self.interpolation], box=box)
        target_h, target_w = self.size
        if resized_size == (target_w, target_h):
            return resized
        canvas = Image.new("RGB", (target_w, target_h), (round(self.pad_value),) * 3)
        canvas.paste(resized, offset)
        return canvas

    def to_image_coords(self, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """Map xyxy ``boxes`` in model-input pixels back onto the decoded image of ``image_size`` (w, h)."""
        (left, top, right, bottom), (new_w, new_h), (dx, dy) = self.placement(image_size)
        scale = np.array([(right - left) / new_w, (bottom - top) / new_h])
        origin = np.array([left, top]) - np.array([dx, dy]) * scale
        return np.asarray(boxes, np.float64) * np.tile(scale, 2) + np.tile(origin, 2)

    def normalise(self, resized: Image.Image) -> np.ndarray:
        """Float32 array in ``layout`` without the batch axis, from the output of :meth:`geometry`."""
        array = np.asarray(resized, dtype=np.float32)
        if self.channel_order == "BGR":
            array = array[..., ::-1]
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Return a float32 array in ``layout`` without the batch axis."""
        return self.normalise(self.geometry(image))


_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

PRESETS: dict[str, Preprocess] = {
    "imagenet-tf": Preprocess(name="imagenet-tf"),
    "imagenet-torch": Preprocess(mean=_IMAGENET_MEAN, std=_IMAGENET_STD, interpolation="bilinear",
                                 name="imagenet-torch"),
    # PaddleDetection exports (PP-PicoDet, PP-YOLOE): cv2 BGR pixels, stretched, ImageNet mean/std as listed.
    "paddle-det": Preprocess(resize="stretch", channel_order="BGR", mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
                             interpolation="bilinear", name="paddle-det"),
    # PaddleOCR text detector: BGR, stretched to a multiple of 32, (x/255 - 0.5) / 0.5.
    "paddle-ocr-det": Preprocess(resize="stretch", channel_order="BGR", mean=(127.5,) * 3, std=(127.5,) * 3,
                                 interpolation="bilinear", name="paddle-ocr-det"),
    # PaddleOCR recogniser and direction classifier: height 48, aspect kept, padded right with zeros after
    # normalisation (pixel 127.5).
    "paddle-ocr-rec": Preprocess(resize="pad-right", channel_order="BGR", mean=(127.5,) * 3, std=(127.5,) * 3,
                                 pad_value=127.5, interpolation="bilinear", name="paddle-ocr-rec"),
    # Ultralytics YOLO: letterbox with grey 114, RGB, /255.
    "yolo": Preprocess(resize="letterbox", mean=(0.0,) * 3, std=(255.0,) * 3, pad_value=114.0,
                       interpolation="bilinear", name="yolo"),
}


# The preset a model's exporter implies, from its metadata_props: (key, value) -> preset, first match wins.
METADATA_PRESETS = (
    # Ultralytics writes author "Ultralytics" into every export; its models take letterboxed RGB / 255.
    (("author", "Ultralytics"), "yolo"),
)
DEFAULT_PRESET = "imagenet-tf"


def preset_for(metadata: Mapping[str, str]) -> str:
    """The preset a model's metadata implies (:data:`METADATA_PRESETS`), else :data:`DEFAULT_PRESET`."""
    return next((preset for (key, value), preset in METADATA_PRESETS if metadata.get(key) == value), DEFAULT_PRESET)


def metadata_size(metadata: Mapping[str, str]) -> tuple[int, int] | None:
    """The input size an exporter recorded (Ultralytics' ``imgsz``, ``[h, w]`` or one number), if any."""
    try:
        value = ast.literal_eval(metadata.get("imgsz", ""))
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        value = [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return value[0], value[1]
    return None


def get_preset(name: str) -> Preprocess:
    """Look up a preprocessing preset by name, listing the known ones on a miss."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CalibkitError(f"unknown preprocessing preset {name!r}; choose one of {sorted(PRESETS)}") from None


# What every unreadable-image error ends with; a warning about images already skipped leaves it out.
SKIP_ADVICE = "; remove it or pass --skip-bad"


def _warn_if_huge(path: Path, size: tuple[int, int]) -> None:
    """Pillow's decompression-bomb warning, with the file's name it lacks (the CLI silences Pillow's own)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and size[0] * size[1] > limit:
        warnings.warn(f"{path}: {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.0f} MP) is past Pillow's "
                      f"decompression-bomb limit of {limit / 1e6:.0f} MP; decoded anyway, check it is the image you "
                      "meant", stacklevel=2)


def decode_image(path: Path) -> Image.Image:
    """Open ``path`` fully, apply its EXIF orientation and convert it to 8-bit RGB.

    16-bit and 32-bit integer grayscale (``I;16``, ``I``) is scaled to 0-255 by its bit depth, not
    clipped (which turns a 16-bit photo white). Alpha is dropped and the colour of every pixel kept, as
    the model would see the image's RGB data; transparent pixels are not painted over."""
    try:
        with Image.open(path) as image:
            _warn_if_huge(path, image.size)
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I;16") or image.mode == "I":
                return Image.fromarray(_to_8bit(np.asarray(image)), "L").convert("RGB")
            if image.mode in ("P", "PA"):
                image = image.convert("RGBA")
            return image.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise CalibkitError(f"{path}: image larger than Pillow's safety limit ({exc}); shrink it{SKIP_ADVICE}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CalibkitError(f"{path}: not a readable image ({exc}){SKIP_ADVICE}") from exc


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Integer grayscale to uint8: 16-bit data divided by 257 (65535 -> 255), rounded."""
    scaled = np.asarray(values, dtype=np.float64) / 257.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def fit_to_model(
    preprocess: Preprocess,
    height: int | None,
    width: int | None,
    layout: str,
    model: str,
    requested_size: tuple[int, int] | None = None,
) -> Preprocess:
    """Take layout and any fixed spatial size from the model; a dynamic size needs ``requested_size``
    (or a preset that names one): never a silent default."""
    if height is not None and width is not None:
        if requested_size and requested_size != (height, width):
            raise CalibkitError(
                f"{model}: model input is {height}x{width} but --size asks for "
                f"{requested_size[0]}x{requested_size[1]}; drop --size or export the model with a dynamic size"
            )
        size = (height, width)
    else:
        size = requested_size or preprocess.size
        if size is None:
            raise CalibkitError(
                f"{model}: model input size is dynamic ({height or '?'}x{width or '?'}); pass --size HxW "
                "(the size the model is deployed at)"
            )
        if (height is not None and size[0] != height) or (width is not None and size[1] != width):
            raise CalibkitError(
                f"{model}: model input is {height or '?'}x{width or '?'} but --size asks for {size[0]}x{size[1]}"
            )
    return replace(preprocess, size=size, layout=layout)
