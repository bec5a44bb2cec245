"""Boxes for the audit: three formats read to the same boxes, and the mapping through resize + centre crop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from introspect.audit.boxes import Box, Geometry, input_geometry, map_boxes, read_boxes
from introspect.errors import UsageError
from introspect.models import imagenet_transform

BOXES = {"cat/a.jpg": [(10, 20, 50, 60, "cat"), (0, 0, 5, 7, "dog")], "dog/b.jpg": [(3, 4, 100, 80, "dog")]}


def write_coco(path) -> None:
    names = ["cat", "dog"]
    images = [{"id": i, "file_name": f} for i, f in enumerate(BOXES)]
    annotations = [{"id": k, "image_id": i, "category_id": names.index(label), "bbox": [x0, y0, x1 - x0, y1 - y0]}
                   for i, f in enumerate(BOXES) for k, (x0, y0, x1, y1, label) in enumerate(BOXES[f])]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i, "name": n} for i, n in enumerate(names)]}))


def write_voc(folder) -> None:
    folder.mkdir()
    for i, (file, boxes) in enumerate(BOXES.items()):
        objects = "".join(f"<object><name>{label}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                          f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                          for x0, y0, x1, y1, label in boxes)  # VOC: 1-based, inclusive
        (folder / f"{i}.xml").write_text(f"<annotation><filename>{file.split('/')[1]}</filename>{objects}"
                                         "</annotation>")


def write_csv(path) -> None:
    lines = ["file,x0,y0,x1,y1,label"] + [f"{f},{x0},{y0},{x1},{y1},{label}"
                                          for f, boxes in BOXES.items() for x0, y0, x1, y1, label in boxes]
    path.write_text("\n".join(lines) + "\n")


def test_coco_voc_and_csv_give_the_same_boxes(tmp_path) -> None:
    write_coco(tmp_path / "boxes.json")
    write_voc(tmp_path / "voc")
    write_csv(tmp_path / "boxes.csv")
    expected = {f: tuple(Box(*b) for b in boxes) for f, boxes in BOXES.items()}
    for source, kind in ((tmp_path / "boxes.json", "coco"), (tmp_path / "voc", "voc"), (tmp_path / "boxes.csv", "csv")):
        table = read_boxes(source)
        assert table.source == kind
        for file, boxes in expected.items():
            assert table.lookup(file) == boxes, kind  # VOC keys are base names: looked up by the file's name
    assert read_boxes(tmp_path / "boxes.csv").lookup("elsewhere.jpg") == ()


def test_bad_box_sources_are_usage_errors(tmp_path) -> None:
    (tmp_path / "bad.json").write_text("{}")
    (tmp_path / "bad.csv").write_text("name,a,b\n")
    for source in (tmp_path / "bad.json", tmp_path / "bad.csv", tmp_path / "missing.json", tmp_path):
        with pytest.raises(UsageError):
            read_boxes(source)


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (500, 500), (300, 200), (97, 301)])
def test_boxes_follow_the_transform(size) -> None:
    """A white rectangle drawn on a photo lands, after the model's transform, where map_boxes puts its box."""
    transform = imagenet_transform(112)  # resize the shorter side to 128, centre crop 112
    geometry = input_geometry(transform)
    assert geometry == Geometry(128, (112, 112))
    width, height = size
    rng = np.random.default_rng(width * height)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(30, width - x0 + 1)), y0 + int(rng.integers(30, height - y0 + 1))
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        canvas[y0:y1, x0:x1] = 255
        tensor = transform(Image.fromarray(canvas))
        assert tuple(tensor.shape[-2:]) == geometry.output_size(width, height)
        inside = (tensor[0] * 0.229 + 0.485) > 0.5
        mapped = map_boxes([Box(x0, y0, x1, y1)], geometry, width, height)
        if not inside.any():
            assert mapped == []
            continue
        rows, cols = torch.nonzero(inside, as_tuple=True)
        seen = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        (box,) = mapped
        assert all(abs(a - b) <= 1 for a, b in zip(box, seen)), (box, seen)


def test_identity_geometry_keeps_boxes() -> None:
    assert map_boxes([Box(3, 4, 20, 30)], Geometry(64, (64, 64)), 64, 64) == [(3, 4, 20, 30)]
    assert map_boxes([Box(0, 0, 10, 10)], Geometry(64, (32, 32)), 64, 64) == []  # cut away by the crop


def test_unknown_transform_cannot_carry_boxes() -> None:
    with pytest.raises(UsageError, match="cannot map boxes"):
        input_geometry(lambda image: image)
