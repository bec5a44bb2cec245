"""The audit's figures on a hand-made set, against numbers worked out by hand.

Eleven 24 x 24 "images" go through the audit's own aggregation (``batch_stats`` then
``Aggregates.update``, in two batches, as ``introspect.audit.run`` feeds them): unlabelled ones,
labelled ones without a box, and boxed ones whose map peaks sit on a box's edge pixels, one pixel
past an edge, and just inside and just outside the pointing tolerance. Each map is 0 except its
peak (1.0) and one other pixel (0.25), so its energy in the boxes is 0, 0.2 (= 0.25 / 1.25),
0.8 (= 1 / 1.25) or 1. Every expected figure below is written out by hand from the table of
images, never computed by the code under test.

Boxes are (x0, y0, x1, y1) with x1 and y1 exclusive; peaks are (row, column). The pointing rule
(TorchRay's): a hit when the peak lies within ``tolerance`` px (Euclidean) of the box's nearest
pixel, i.e. with dx = max(x0 - col, col - (x1 - 1), 0) and dy likewise, dx^2 + dy^2 <= tolerance^2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from introspect.audit.aggregate import Aggregates, batch_stats
from introspect.audit.table import table_rows

SIZE = 24  # maps and inputs are SIZE x SIZE; the centre baseline's peak is (12, 12)
METHODS = ("gradcam", "layercam")  # "A" and "B" in the comments
NAMES = ("ant", "bee", "cow")

B = (8, 6, 14, 10)  # columns 8..13, rows 6..9
B2 = (2, 16, 6, 20)  # columns 2..5, rows 16..19
B3 = (10, 10, 16, 16)  # columns 10..15, rows 10..15: holds the centre (12, 12)
FAR = (0, 0)  # a pixel outside every box

# index, label (-1: none), predicted class, boxes, (A's peak, A's 0.25 pixel), (B's peak, B's 0.25 pixel).
# The comments give dx, dy to the nearest box pixel and the verdict at tolerance 2 | tolerance 0.
IMAGES = [
    (0, -1, 1, [], ((5, 5), FAR), ((5, 5), FAR)),  # unlabelled, no box
    (1, 0, 0, [], ((5, 5), FAR), ((5, 5), FAR)),  # labelled, no box
    (2, 1, 1, [], ((5, 5), FAR), ((5, 5), FAR)),  # labelled, no box
    # A: the box's top-left pixel (x0, y0): inside, hit | hit. Energy 1/1.25 = 0.8.
    # B: column 16 = x1 + 2: dx = 16 - 13 = 3 > 2, miss | miss. The 0.25 pixel (7, 9) is inside: 0.2.
    (3, 0, 1, [B], ((6, 8), FAR), ((8, 16), (7, 9))),
    # A: column 15 = x1 + 1: dx = 15 - 13 = 2, 4 <= 4, hit | miss. Energy 0.
    # B: row 10 = y1, one past the bottom edge: dy = 1, hit | miss. Its 0.25 pixel (9, 13), the box's
    #    bottom-right pixel, is inside; the peak on row y1 is not: energy 0.2.
    (4, 0, 0, [B], ((8, 15), FAR), ((10, 10), (9, 13))),
    # A: row 12 = y1 + 2: dy = 12 - 9 = 3, miss | miss. Its 0.25 pixel (6, 13) is inside: 0.2.
    # B: row 4 = y0 - 2: dy = 2, hit | miss. Energy 0.
    (5, 1, 1, [B], ((12, 10), (6, 13)), ((4, 8), FAR)),
    # -- second batch --
    # Two boxes. A: (17, 3) is inside B2 (not B): hit | hit. Its 0.25 pixel (7, 10) is inside B: 1.0.
    # B: (11, 15) is past B's bottom-right corner: dx = 2, dy = 2, 8 > 4, miss | miss (B2 is far).
    #    Its 0.25 pixel (19, 5), B2's bottom-right pixel, is inside: 0.2.
    (6, 1, 2, [B, B2], ((17, 3), (7, 10)), ((11, 15), (19, 5))),
    # A: column 7 = x0 - 3: dx = 3, miss | miss. Its 0.25 pixel (15, 15), B3's last pixel, is inside: 0.2.
    # B: column 8 = x0 - 2: dx = 2, hit | miss. Its 0.25 pixel (16, 16) is one past the corner: 0.
    (7, 2, 2, [B3], ((12, 7), (15, 15)), ((12, 8), (16, 16))),
    # Unlabelled but boxed: counted as boxed, hit, but in no pointing or per-class figure.
    # A: B's bottom-right pixel (x1 - 1, y1 - 1): hit | hit, energy 0.8. B: the same peak, 0.25 pixel (6, 8)
    # inside too: energy 1.0.
    (8, -1, 0, [B], ((9, 13), FAR), ((9, 13), (6, 8))),
    # A: row 16 = y1 of B3: dy = 1, hit | miss. Its 0.25 pixel (10, 10) is inside: 0.2.
    # B: row 18 = y1 + 2: dy = 18 - 15 = 3, miss | miss. Energy 0.
    (9, 2, 0, [B3], ((16, 12), (10, 10)), ((18, 12), FAR)),
    (10, 2, 1, [], ((5, 5), FAR), ((5, 5), FAR)),  # labelled, no box
]
BATCHES = (slice(0, 6), slice(6, 11))

# Per image, per tolerance: (A hit, B hit) on boxed images, None on the others (from the comments above).
HITS = {
    2: {3: (True, False), 4: (True, True), 5: (False, True), 6: (True, False), 7: (False, True),
        8: (True, True), 9: (True, False)},
    0: {3: (True, False), 4: (False, False), 5: (False, False), 6: (True, False), 7: (False, False),
        8: (True, True), 9: (False, False)},
}
# Energy in the boxes of each boxed image (A, B), tolerance-free.
ENERGY = {3: (0.8, 0.2), 4: (0.0, 0.2), 5: (0.2, 0.0), 6: (1.0, 0.2), 7: (0.2, 0.0), 8: (0.8, 1.0), 9: (0.2, 0.0)}
# Centre (12, 12): B's rows are 6..9 (dy = 3, a miss at either tolerance), B2 is far (dx = 7), B3 holds it.
CENTRE = {3: False, 4: False, 5: False, 6: False, 7: True, 8: False, 9: True}


def hand_map(peak: tuple[int, int], other: tuple[int, int]) -> torch.Tensor:
    image = torch.zeros(SIZE, SIZE)
    image[other] = 0.25
    image[peak] = 1.0
    return image


def batch(rows: list, tolerance: float):
    indices = [r[0] for r in rows]
    labels = torch.tensor([r[1] for r in rows])
    probs = torch.full((len(rows), len(NAMES)), 0.1)
    probs[torch.arange(len(rows)), torch.tensor([r[2] for r in rows])] = 0.8
    cam_class = torch.where(labels >= 0, labels, probs.argmax(dim=1))
    maps = {m: torch.stack([hand_map(*r[4 + i]) for r in rows]) for i, m in enumerate(METHODS)}
    boxes = [r[3] for r in rows]
    stats = batch_stats(indices, labels, probs, cam_class, maps, boxes, tolerance)
    return stats, probs, maps


def run_audit(tolerance: float):
    aggregates = Aggregates(len(NAMES), METHODS, map_size=8, gallery_size=3, thumbnail=8)
    every = []
    for part in BATCHES:
        rows = IMAGES[part]
        stats, probs, maps = batch(rows, tolerance)
        aggregates.update(stats, probs, maps, torch.zeros(len(rows), 3, SIZE, SIZE), [f"{r[0]}.png" for r in rows])
        every.append(stats)
    return aggregates, every


@pytest.mark.parametrize("tolerance", [2, 0])
def test_per_image_hits_energy_and_centre(tolerance) -> None:
    _, every = run_audit(tolerance)
    for stats, part in zip(every, BATCHES):
        for j, row in enumerate(IMAGES[part]):
            i = row[0]
            assert int(stats.indices[j]) == i
            assert tuple(stats.peaks[:, j].tolist()) == (list(row[4][0]), list(row[5][0])), i
            assert bool(stats.boxed[j]) == (i in HITS[tolerance]), i
            if i in HITS[tolerance]:
                assert tuple(stats.hits[:, j].tolist()) == HITS[tolerance][i], i
                assert stats.energy[:, j] == pytest.approx(ENERGY[i], abs=1e-12), i
                assert bool(stats.centre[j]) == CENTRE[i], i
            else:
                assert not stats.hits[:, j].any() and np.isnan(stats.energy[:, j]).all(), i
        rows = table_rows(stats, [f"{r[0]}.png" for r in IMAGES[part]], NAMES, METHODS, True)
        assert rows["gradcam_hit"] == [HITS[tolerance][r[0]][0] if r[0] in HITS[tolerance] else None
                                       for r in IMAGES[part]]


# Labelled boxed images: 3, 4 (ant), 5, 6 (bee), 7, 9 (cow): 6. Image 8 is boxed but unlabelled.
# Overall pointing at tolerance 2: A hits 3, 4, 6, 9 -> 4 / 6; B hits 4, 5, 7 -> 3 / 6.
#                     at tolerance 0: A hits 3, 6 -> 2 / 6; B hits none -> 0 / 6.
# Centre baseline: 7 and 9 (the B3 images) -> 2 / 6 at either tolerance.
# Mean energy: A (0.8 + 0.0 + 0.2 + 1.0 + 0.2 + 0.2) / 6 = 2.4 / 6 = 0.4;
#              B (0.2 + 0.2 + 0.0 + 0.2 + 0.0 + 0.0) / 6 = 0.6 / 6 = 0.1.
POINTING = {2: {"gradcam": 4 / 6, "layercam": 3 / 6}, 0: {"gradcam": 2 / 6, "layercam": 0 / 6}}


@pytest.mark.parametrize("tolerance", [2, 0])
def test_overall_figures(tolerance) -> None:
    aggregates, _ = run_audit(tolerance)
    # 11 images; labelled: all but 0 and 8 -> 9; boxed: 3, 4, 5, 6, 7, 8, 9 -> 7 (8 is unlabelled).
    # Top-1 right: 1, 2, 4, 5, 7 -> 5 of 9 (3 said bee, 6 cow, 9 ant, 10 bee); top-5 of 3 classes: all 9.
    assert [aggregates.count(c) for c in ("images", "labelled", "top1", "top5", "boxed", "skipped")] == \
        [11, 9, 5, 9, 7, 0]
    pointing, centre, energy = aggregates.pointing()
    assert pointing == pytest.approx(POINTING[tolerance], abs=1e-12)
    assert centre == pytest.approx(2 / 6, abs=1e-12)
    assert energy == pytest.approx({"gradcam": 0.4, "layercam": 0.1}, abs=1e-12)


# Per class (images = labelled images of the class; boxed = those with a box):
#   ant: images 1, 3, 4 -> 3; right 1, 4 -> 2; boxed 3, 4 -> 2
#        tolerance 2: A hits 3, 4 -> 2; B hits 4 -> 1.  tolerance 0: A hits 3 -> 1; B 0.
#        energy A (0.8 + 0.0) / 2 = 0.4; B (0.2 + 0.2) / 2 = 0.2; centre hits 0
#   bee: images 2, 5, 6 -> 3; right 2, 5 -> 2; boxed 5, 6 -> 2
#        tolerance 2: A hits 6 -> 1; B hits 5 -> 1.  tolerance 0: A hits 6 -> 1; B 0.
#        energy A (0.2 + 1.0) / 2 = 0.6; B (0.0 + 0.2) / 2 = 0.1; centre hits 0
#   cow: images 7, 9, 10 -> 3; right 7 -> 1; boxed 7, 9 -> 2
#        tolerance 2: A hits 9 -> 1; B hits 7 -> 1.  tolerance 0: none.
#        energy A (0.2 + 0.2) / 2 = 0.2; B (0.0 + 0.0) / 2 = 0.0; centre hits 7, 9 -> 2
CLASSES = {  # name: (images, correct, boxed, hits at tolerance 2, hits at tolerance 0, centre hits, energy)
    "ant": (3, 2, 2, (2, 1), (1, 0), 0, (0.4, 0.2)),
    "bee": (3, 2, 2, (1, 1), (1, 0), 0, (0.6, 0.1)),
    "cow": (3, 1, 2, (1, 1), (0, 0), 2, (0.2, 0.0)),
}


@pytest.mark.parametrize("tolerance", [2, 0])
def test_per_class_figures(tolerance) -> None:
    aggregates, _ = run_audit(tolerance)
    rows = aggregates.class_rows(NAMES)
    assert [(r.index, r.name) for r in rows] == [(0, "ant"), (1, "bee"), (2, "cow")]
    for row in rows:
        images, correct, boxed, hits2, hits0, centre, energy = CLASSES[row.name]
        assert (row.images, row.correct, row.boxed, row.centre_hits) == (images, correct, boxed, centre), row.name
        assert row.hits == (hits2 if tolerance == 2 else hits0), row.name
        assert row.energy == pytest.approx(energy, abs=1e-12), row.name
        assert row.accuracy == pytest.approx(correct / 3)


def test_classes_without_boxes_have_no_energy() -> None:
    aggregates = Aggregates(len(NAMES), METHODS, map_size=8, gallery_size=3, thumbnail=8)
    rows = [r for r in IMAGES if not r[3]]  # 0 (unlabelled), 1 (ant), 2 (bee), 10 (cow)
    stats, probs, maps = batch(rows, 2)
    aggregates.update(stats, probs, maps, torch.zeros(len(rows), 3, SIZE, SIZE), [f"{r[0]}.png" for r in rows])
    pointing, centre, energy = aggregates.pointing()
    assert pointing == {} and energy == {} and math.isnan(centre)
    for row in aggregates.class_rows(NAMES):
        assert row.images == 1 and row.boxed == 0 and row.hits == (0, 0)
        assert all(math.isnan(e) for e in row.energy)


def test_lowest_energy_gallery() -> None:
    # First method's energy of the boxed images, by (energy, index): 4 (0.0), 5 (0.2), 7 (0.2), 9 (0.2),
    # 3 (0.8), 8 (0.8), 6 (1.0); unlabelled 8 takes part. A gallery of 3 keeps 4, 5, 7.
    aggregates, _ = run_audit(2)
    assert [e["index"] for e in aggregates.lowest] == [4, 5, 7]
    assert [e["energy"] for e in aggregates.lowest] == pytest.approx([0.0, 0.2, 0.2], abs=1e-12)
    assert [e["hit"] for e in aggregates.lowest] == [True, False, False]  # A at tolerance 2
