"""Find the images of a folder and their labels: flat, ImageFolder (class per subfolder) or labels.csv."""

from __future__ import annotations

import csv
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from calibkit.errors import CalibkitError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


@dataclass(frozen=True)
class ImageItem:
    """One image file and its class index (``None`` when the folder carries no labels); ``origin`` says
    where the label came from (``labels.csv:7``, a class subfolder), for messages that name it."""

    path: Path
    label: int | None = None
    origin: str | None = field(default=None, compare=False)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_labels_csv(csv_path: Path, root: Path) -> list[ImageItem]:
    """Read ``file,class_index`` rows; ``file`` is relative to ``root``. A byte-order mark (as spreadsheet
    programs write it) is accepted; a missing image, a class index that is not a non-negative integer and
    an image listed twice are refused naming the row."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise CalibkitError(f"{csv_path}: cannot read labels ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise CalibkitError(f"{csv_path}: labels file is not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from exc
    if not rows or not {"file", "class_index"} <= set(rows[0]):
        raise CalibkitError(f"{csv_path}: labels file needs a header with columns 'file,class_index'")
    items, seen = [], {}
    for line_no, row in enumerate(rows, start=2):
        where = f"{csv_path}:{line_no}"
        path = root / (row["file"] or "")
        if not path.is_file():
            raise CalibkitError(f"{where}: listed image {path} does not exist; fix or remove the row")
        resolved = path.resolve()
        if resolved in seen:
            raise CalibkitError(f"{where}: {row['file']} is listed again (first at line {seen[resolved]}), "
                                "so it would count twice; remove one of the rows")
        seen[resolved] = line_no
        text = (row["class_index"] or "").strip()
        if not (text.isascii() and text.isdigit()):
            raise CalibkitError(f"{where}: class_index {row['class_index']!r} is not a class number (0, 1, 2, ...); "
                                "fix the row")
        items.append(ImageItem(path, int(text), where))
    return sorted(items, key=lambda item: str(item.path))


def discover_images(root: Path, labels: Path | None = None) -> list[ImageItem]:
    """List the images under ``root`` in a stable order, with labels when the layout provides them.

    Precedence: an explicit ``labels`` CSV, then ``root/labels.csv``, then class-per-subfolder
    (classes numbered in sorted folder order, like torchvision's ImageFolder), then a flat folder. A folder
    with images both at the top level and in subfolders is refused rather than half read.
    """
    root = Path(root)
    if not root.exists():
        raise CalibkitError(f"{root}: image folder does not exist; pass an existing folder to --images")
    if not root.is_dir():
        raise CalibkitError(f"{root}: --images must be a folder of images, not a file")
    try:
        items = _listed_images(root, labels)
    except OSError as exc:
        raise CalibkitError(f"{exc.filename or root}: cannot read the image folder ({exc.strerror}); make it "
                            "readable or pass another --images") from exc
    if not items:
        raise CalibkitError(
            f"{root}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "point --images at a folder of photos"
        )
    return items


def _listed_images(root: Path, labels: Path | None) -> list[ImageItem]:
    csv_path = Path(labels) if labels else root / "labels.csv"
    if labels or csv_path.is_file():
        items = read_labels_csv(csv_path, root)
    else:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        folder_items = [
            ImageItem(path, index, f"{sub} (class {index})")
            for index, sub in enumerate(subdirs)
            for path in sorted(sub.rglob("*"))
            if _is_image(path)
        ]
        flat = [ImageItem(path) for path in sorted(root.iterdir()) if _is_image(path)]
        if folder_items and flat:
            with_images = [sub.name for sub in subdirs if any(_is_image(p) for p in sub.rglob("*"))]
            raise CalibkitError(
                f"{root}: {len(flat)} image(s) at the top level and {len(folder_items)} in subfolders "
                f"({', '.join(with_images[:3])}{', ...' if len(with_images) > 3 else ''}); use one layout: only "
                "images, only class subfolders, or a labels.csv listing the files to use")
        items = folder_items or flat
    broken = [p for p in root.rglob("*") if p.is_symlink() and not p.exists() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if broken:
        warnings.warn(f"{root}: {len(broken)} image link(s) point nowhere and were left out (first: {broken[0]})",
                      stacklevel=3)
    return items


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_list_hash(items: Sequence[ImageItem], digests: Sequence[str] | None = None) -> str:
    """SHA-256 over each file's name, label and content digest (:func:`file_digest`, computed here
    unless given): identifies a calibration set in provenance, so two folders with the same names but
    different pixels differ, and parts of a set hashed on different machines combine."""
    digests = list(digests) if digests is not None else [file_digest(item.path) for item in items]
    combined = hashlib.sha256()
    for item, digest in zip(items, digests):
        combined.update(f"{item.path.name}\t{item.label}\t{digest}\n".encode())
    return combined.hexdigest()