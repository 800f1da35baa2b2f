"""Decode an image file and turn it into the float tensor a classification model expects."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from calibkit.errors import CalibkitError

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class Preprocess:
    """Centre-crop ``crop_fraction`` of the short side, resize to ``size``, then ``(x - mean) / std``.

    ``mean`` and ``std`` are per RGB channel on the 0-255 pixel scale. ``layout`` is ``NCHW`` or ``NHWC``.
    """

    size: tuple[int, int] = (224, 224)
    crop_fraction: float = 224 / 256
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    interpolation: str = "bicubic"
    layout: str = "NCHW"
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise CalibkitError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(_RESAMPLE)}")
        if self.layout not in ("NCHW", "NHWC"):
            raise CalibkitError(f"unknown layout {self.layout!r}; use NCHW or NHWC")
        if not 0 < self.crop_fraction <= 1:
            raise CalibkitError(f"crop fraction {self.crop_fraction} must be in (0, 1]")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise CalibkitError("--mean and --std need three values each, std > 0")

    def with_overrides(self, **changes: object) -> "Preprocess":
        """Copy with the non-``None`` entries of ``changes`` applied (CLI flags over a preset)."""
        kept = {key: value for key, value in changes.items() if value is not None}
        return replace(self, **kept) if kept else self

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "size": list(self.size),
            "crop_fraction": self.crop_fraction,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "layout": self.layout,
        }

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Return a float32 array in ``layout`` without the batch axis."""
        width, height = image.size
        target_h, target_w = self.size
        scale = self.crop_fraction * min(width / target_w, height / target_h)
        crop_w, crop_h = target_w * scale, target_h * scale
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        box = (left, top, left + crop_w, top + crop_h)
        resized = image.resize((target_w, target_h), _RESAMPLE[self.interpolation], box=box)
        array = np.asarray(resized, dtype=np.float32)
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array)


PRESETS: dict[str, Preprocess] = {
    "imagenet-tf": Preprocess(name="imagenet-tf"),
    "imagenet-torch": Preprocess(
        crop_fraction=224 / 256,
        mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
        std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
        interpolation="bilinear",
        name="imagenet-torch",
    ),
}


def get_preset(name: str) -> Preprocess:
    """Look up a preprocessing preset by name, listing the known ones on a miss."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CalibkitError(f"unknown preprocessing preset {name!r}; choose one of {sorted(PRESETS)}") from None


def decode_image(path: Path) -> Image.Image:
    """Open ``path`` fully, apply its EXIF orientation and convert grayscale/CMYK/RGBA/palette to RGB."""
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                background = Image.new("RGB", image.size, (255, 255, 255))
                background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
                return background
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CalibkitError(f"{path}: not a readable image ({exc}); remove it or pass --skip-bad") from exc



def fit_to_model(
    preprocess: Preprocess,
    height: int | None,
    width: int | None,
    layout: str,
    model: str,
    requested_size: tuple[int, int] | None = None,
) -> Preprocess:
    """Take layout and any fixed spatial size from the model; refuse a ``requested_size`` it cannot take."""
    size = requested_size or preprocess.size
    if height is not None and width is not None:
        if requested_size and requested_size != (height, width):
            raise CalibkitError(
                f"{model}: model input is {height}x{width} but --size asks for {size[0]}x{size[1]}; "
                "drop --size or export the model with a dynamic size"
            )
        size = (height, width)
    return replace(preprocess, size=size, layout=layout)
