"""Object boxes for the audit: read COCO JSON, Pascal VOC XML or CSV, and map them into the model's input.

Every format is read into one convention: ``(x0, y0, x1, y1)`` in the original image's
pixels, ``x1``/``y1`` exclusive (a box covering only the first pixel is ``(0, 0, 1, 1)``):

- COCO: ``bbox = [x, y, w, h]`` -> ``(x, y, x + w, y + h)``; the label is the category's name.
- Pascal VOC: ``xmin..xmax`` are 1-based and inclusive (the VOC convention) -> ``(xmin - 1, ymin - 1, xmax, ymax)``.
- CSV: a header ``file,x0,y0,x1,y1,label`` (label may be empty), coordinates as in our convention.

The model sees a resized and centre-cropped image; :func:`input_geometry` reads that
geometry from the transform and :func:`map_boxes` moves boxes through it (the one place
that does, tested against the transform itself).
"""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["Box", "BoxTable", "Geometry", "read_boxes", "input_geometry", "map_boxes"]


@dataclass(frozen=True)
class Box:
    """One object box in original image pixels (x1, y1 exclusive) and its label (None when not given)."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str | None = None


@dataclass(frozen=True)
class BoxTable:
    """Boxes per image file, keyed by the file name as the annotation gives it."""

    boxes: dict[str, tuple[Box, ...]]
    source: str  # "coco", "voc" or "csv"

    def lookup(self, relative: str) -> tuple[Box, ...]:
        """Boxes of a dataset file given by its path relative to the dataset root (then its base name)."""
        found = self.boxes.get(relative)
        if found is None:
            found = self.boxes.get(relative.rsplit("/", 1)[-1], ())
        return found

    def __len__(self) -> int:
        return len(self.boxes)


def _coco(path: Path) -> dict[str, list[Box]]:
    try:
        data = json.loads(path.read_text())
        images = {int(i["id"]): str(i["file_name"]) for i in data["images"]}
        names = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        out: dict[str, list[Box]] = {name: [] for name in images.values()}
        for ann in data.get("annotations", []):
            x, y, w, h = (float(v) for v in ann["bbox"])
            label = names.get(int(ann["category_id"])) if "category_id" in ann else None
            out[images[int(ann["image_id"])]].append(Box(x, y, x + w, y + h, label))
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(f"{path} is not COCO JSON with images, annotations (bbox) and categories ({error!r}): "
                         "give boxes= a COCO file, a folder of VOC XML files or a CSV file,x0,y0,x1,y1,label") \
            from None
    return out


def _voc_file(path: Path) -> tuple[str, list[Box]]:
    try:
        tree = ElementTree.parse(path).getroot()
        filename = tree.findtext("filename") or path.with_suffix(".jpg").name
        boxes = []
        for obj in tree.iter("object"):
            bnd = obj.find("bndbox")
            coords = [float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            boxes.append(Box(coords[0] - 1, coords[1] - 1, coords[2], coords[3], obj.findtext("name")))
    except (ElementTree.ParseError, AttributeError, TypeError, ValueError) as error:
        raise UsageError(f"{path} is not a Pascal VOC annotation with object/bndbox xmin ymin xmax ymax "
                         f"({error}): fix or remove it") from None
    return filename, boxes


def _csv(path: Path) -> dict[str, list[Box]]:
    out: dict[str, list[Box]] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"file", "x0", "y0", "x1", "y1"}
        if not reader.fieldnames or not needed <= set(reader.fieldnames):
            raise UsageError(f"{path} needs a header file,x0,y0,x1,y1,label (got {reader.fieldnames}): "
                             "add it as the first line")
        for line, row in enumerate(reader, start=2):
            try:
                coords = [float(row[k]) for k in ("x0", "y0", "x1", "y1")]
            except (TypeError, ValueError):
                raise UsageError(f"{path} line {line}: coordinates must be numbers, got {row}") from None
            label = (row.get("label") or "").strip() or None
            out.setdefault(row["file"].strip(), []).append(Box(*coords, label))
    return out


def read_boxes(source: str | Path) -> BoxTable:
    """Boxes from a COCO JSON file, a folder of Pascal VOC XML files, or a CSV (``file,x0,y0,x1,y1,label``).

    Args:
        source: the file or folder.
    Returns:
        A :class:`BoxTable` in original pixels, ``x1``/``y1`` exclusive.
    """
    path = Path(source)
    if path.is_dir():
        files = sorted(path.rglob("*.xml"))
        if not files:
            raise UsageError(f"{path} holds no .xml files: boxes= takes a COCO JSON, a folder of VOC XML files or "
                             "a CSV file")
        table: dict[str, list[Box]] = {}
        for file in files:
            name, boxes = _voc_file(file)
            table.setdefault(name, []).extend(boxes)
        kind = "voc"
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            table, kind = _coco(path), "coco"
        elif suffix in {".csv", ".txt"}:
            table, kind = _csv(path), "csv"
        else:
            raise UsageError(f"{path}: unknown box format {suffix!r}: give a COCO .json, a .csv or a folder of VOC "
                             ".xml files")
    else:
        raise UsageError(f"boxes file or folder {path} does not exist: check boxes=")
    return BoxTable({name: tuple(boxes) for name, boxes in table.items()}, kind)


@dataclass(frozen=True)
class Geometry:
    """How the transform moves pixels: shorter side resized to ``resize`` (None: no resize), then a centre
    crop of ``crop`` = (height, width) (None: no crop)."""

    resize: int | None
    crop: tuple[int, int] | None

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the model input made from a ``width`` x ``height`` image."""
        new_w, new_h = self._resized(width, height)
        return self.crop if self.crop is not None else (new_h, new_w)

    def _resized(self, width: int, height: int) -> tuple[int, int]:
        if self.resize is None:
            return width, height
        # torchvision's rule (_compute_resized_output_size): the shorter side becomes `resize`, truncating.
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def mapping(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(scale_x, scale_y, offset_x, offset_y): input = original * scale - offset."""
        new_w, new_h = self._resized(width, height)
        sx, sy = new_w / width, new_h / height
        if self.crop is None:
            return sx, sy, 0.0, 0.0
        ch, cw = self.crop
        # torchvision's centre_crop: pad symmetrically (left = (cw - w) // 2) when too small, else round((w - cw) / 2)
        left = -((cw - new_w) // 2) if cw > new_w else int(round((new_w - cw) / 2.0))
        top = -((ch - new_h) // 2) if ch > new_h else int(round((new_h - ch) / 2.0))
        return sx, sy, float(left), float(top)


def _as_int(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if len(value) == 1 else None
    return int(value) if isinstance(value, int) else None


def input_geometry(transform: Any) -> Geometry:
    """The resize and centre crop a transform applies (a torchvision ImageClassification preset, or a Compose
    of Resize / CenterCrop and pixel-wise steps). Anything else cannot carry boxes: UsageError."""
    if hasattr(transform, "resize_size") and hasattr(transform, "crop_size"):
        crop = transform.crop_size
        crop = (crop[0], crop[-1]) if isinstance(crop, (list, tuple)) else (int(crop), int(crop))
        return Geometry(_as_int(transform.resize_size), crop)
    steps: Iterable[Any] | None = getattr(transform, "transforms", None)
    resize, crop = None, None
    import torchvision.transforms as T

    for step in steps if isinstance(steps, (list, tuple)) else [transform]:
        if isinstance(step, T.Resize):
            resize = _as_int(step.size)
            if resize is None:
                break
        elif isinstance(step, T.CenterCrop):
            crop = tuple(step.size) if len(step.size) == 2 else (step.size[0], step.size[0])
        elif isinstance(step, (T.ToTensor, T.Normalize, T.PILToTensor, T.ConvertImageDtype)):
            continue
        else:
            break
    else:
        return Geometry(resize, crop)
    raise UsageError(f"cannot map boxes through the transform {type(transform).__name__}: boxes need a resize of "
                     "the shorter side and a centre crop (torchvision's ImageClassification preset)")


def map_boxes(boxes: Sequence[Box], geometry: Geometry, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Boxes moved into the model input's pixels, rounded outwards to whole pixels and clipped to the input;
    boxes left empty by the crop are dropped.

    Args:
        boxes: boxes in the original ``width`` x ``height`` image.
        geometry: what the transform does (:func:`input_geometry`).
    Returns:
        ``(x0, y0, x1, y1)`` integer boxes, ``x1``/``y1`` exclusive.
    """
    sx, sy, ox, oy = geometry.mapping(width, height)
    out_h, out_w = geometry.output_size(width, height)
    mapped = []
    for box in boxes:
        x0 = max(0, math.floor(box.x0 * sx - ox + 1e-6))
        y0 = max(0, math.floor(box.y0 * sy - oy + 1e-6))
        x1 = min(out_w, math.ceil(box.x1 * sx - ox - 1e-6))
        y1 = min(out_h, math.ceil(box.y1 * sy - oy - 1e-6))
        if x1 > x0 and y1 > y0:
            mapped.append((x0, y0, x1, y1))
    return mapped
