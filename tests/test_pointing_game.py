"""The pointing game on the synthetic task: each gradient-family CAM of the true class peaks on the object.

The reference model of :mod:`introspect.testing.synthetic` is trained once per test process
(tests/synthetic_reference.py); its held-out set has 200 images whose deciding
object's box is known. A hit is a map peak inside the box (no margin).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_untouched, model_state

from introspect import pointing_game
from introspect.testing import synthetic
from introspect.analyzers.pointing import GRADIENT_METHODS, COMPUTED_METHODS
from introspect.records import PointingGame

GOOD_METHODS = GRADIENT_METHODS


@pytest.fixture(scope="module")
def game(trained_synthetic) -> PointingGame:
    model, test_set = trained_synthetic
    before = model_state(model)
    result = pointing_game(model, synthetic.normalize(test_set.images), test_set.labels, test_set.boxes,
                           COMPUTED_METHODS, batch_size=64)
    assert_untouched(before, model)
    return result


def test_every_single_pass_method_is_played(game: PointingGame) -> None:
    assert set(GRADIENT_METHODS) < set(game.methods) == set(COMPUTED_METHODS)
    assert {"eigencam", "fem"} <= set(game.methods)
    assert game.count == 200 and game.peaks.shape == (len(game.methods), 200, 2)
    assert game.peaks.min() >= 0 and game.peaks.max() < 64


@pytest.mark.parametrize("method", GOOD_METHODS)
def test_gradient_family_points_at_the_object(game: PointingGame, method: str) -> None:
    fraction = game.fraction(method)
    assert fraction >= 0.90, f"{method}: peak in the box for {fraction:.1%} of held-out images"
    assert game.fraction(method, margin=2) >= fraction


def layer4_maps(model: torch.nn.Module, test_set: synthetic.SyntheticDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """By hand: ``layer4``'s activation and the gradient of each image's true-class score with respect to it."""
    acts: list[torch.Tensor] = []
    handle = model.layer4.register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        scores = model(synthetic.normalize(test_set.images))
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(scores.gather(1, test_set.labels[:, None]).sum(), acts[0])
    return acts[0].detach(), grads


def peaks_of(raw: torch.Tensor) -> np.ndarray:
    """(row, column) of the maximum of each ReLU'd (N, h, w) map upsampled to 64 x 64 as pytorch-grad-cam does."""
    up = F.interpolate(torch.relu(raw)[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    flat = up.flatten(1).argmax(dim=1)
    return torch.stack([flat // 64, flat % 64], dim=1).numpy()


def test_eigengradcam_sign_is_set_by_the_class_evidence(trained_synthetic, game: PointingGame) -> None:
    """EigenGradCAM projects gradient x activation on its first principal component, whose sign the SVD
    picks at random (pytorch-grad-cam keeps it; after the ReLU a flipped map lights up everything but the
    object). introspect orients it to agree with gradient x activation: its peaks are the oriented
    projection's, and the orientation matters on this task (many raw projections come out flipped)."""
    model, test_set = trained_synthetic
    activation, grads = layer4_maps(model, test_set)
    product = (grads * activation).double()
    flat = product.flatten(2).transpose(1, 2)
    flat = flat - flat.mean(dim=1, keepdim=True)
    _, _, vt = torch.linalg.svd(flat, full_matrices=False)
    projection = (flat @ vt[:, 0, :, None])[..., 0]
    agree = torch.sign((projection * product.sum(dim=1).flatten(1)).sum(dim=1, keepdim=True))
    shape = (-1, *activation.shape[-2:])
    oriented = peaks_of((projection * agree).reshape(shape).float())
    ours = game.peaks[game.methods.index("eigengradcam")]
    assert (ours == oriented).all(axis=1).mean() >= 0.95
    assert float((agree < 0).double().mean()) > 0.1  # without the orientation that many maps are inverted
    assert game.fraction("eigengradcam") >= 0.90


def test_gradcam_peaks_equal_a_hand_made_grad_cam(trained_synthetic, game: PointingGame) -> None:
    model, test_set = trained_synthetic
    activation, grads = layer4_maps(model, test_set)
    hand = peaks_of((grads.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1))
    ours = game.peaks[game.methods.index("gradcam")]
    assert (ours == hand).all(axis=1).mean() >= 0.98  # ties between equal maxima may resolve differently
    assert game.fraction("gradcam") == pytest.approx(synthetic.points_in_boxes(hand, test_set.boxes).mean(),
                                                     abs=0.02)


def test_untrained_model_does_not_point_at_the_object(trained_synthetic) -> None:
    """The 90 % is earned: the same architecture with random weights points near chance."""
    _, test_set = trained_synthetic
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        untrained = synthetic.build_model(len(test_set.class_names)).eval()
    game = pointing_game(untrained, synthetic.normalize(test_set.images), test_set.labels, test_set.boxes,
                         "gradcam")
    assert game.fraction("gradcam") < 0.5


def hand_hit(row: int, col: int, box, margin: int = 0, tolerance: float | None = None) -> bool:
    """The hit test by plain loops over pixels: the box holds columns x0 .. x1 - 1 and rows y0 .. y1 - 1
    (x1, y1 exclusive). With ``margin``: the point is one of the pixels of the box grown by ``margin`` on each
    side. With ``tolerance``: some pixel of the (ungrown) box lies within ``tolerance`` of the point."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if tolerance is None:
        return any((row, col) == (r, c) for r in range(y0 - margin, y1 + margin)
                   for c in range(x0 - margin, x1 + margin))
    return any((row - r) ** 2 + (col - c) ** 2 <= tolerance ** 2 for r in range(y0, y1) for c in range(x0, x1))


# Boxes (x0, y0, x1, y1) in a 20 x 20 grid: ordinary, one pixel wide, one row high, a single pixel,
# empty (x1 == x0), touching the grid's edges.
HAND_BOXES = [(5, 4, 11, 9), (7, 3, 8, 12), (2, 10, 9, 11), (12, 12, 13, 13), (6, 6, 6, 10), (0, 0, 4, 20)]


def test_hits_agree_with_a_hand_made_hit_test() -> None:
    """Every pixel of a 20 x 20 grid against each box, so every edge, corner, one-past-the-edge and
    tolerance boundary is visited, for the margin rule and the tolerance rule."""
    grid = np.array([(r, c) for r in range(20) for c in range(20)])
    for box in HAND_BOXES:
        boxes = np.tile(box, (len(grid), 1))
        game = PointingGame(methods=("m",), peaks=grid[None], boxes=boxes)
        for margin in (0, 1, 3):
            expected = np.array([hand_hit(r, c, box, margin=margin) for r, c in grid])
            assert np.array_equal(game.hits("m", margin), expected), (box, margin)
            assert np.array_equal(synthetic.points_in_boxes(grid, boxes, margin=margin), expected), (box, margin)
            assert game.fraction("m", margin) == pytest.approx(expected.mean())
        for tolerance in (0, 1, 1.5, 2, 2.9, 15):
            expected = np.array([hand_hit(r, c, box, tolerance=tolerance) for r, c in grid])
            assert np.array_equal(game.hits("m", tolerance=tolerance), expected), (box, tolerance)
            if tolerance == 2:  # some pixels hit, some miss; the empty box is hit by nothing
                assert 0 < expected.sum() < len(grid) or (box[0] == box[2] and not expected.any())


def test_hits_on_and_past_the_edges() -> None:
    """The half-open convention spelled out on box (5, 4, 11, 9): columns 5..10, rows 4..8."""
    box = (5, 4, 11, 9)
    cases = {  # (row, col): (margin 0, margin 1, tolerance 0, tolerance 1, tolerance 2)
        (4, 5): (True, True, True, True, True),  # top-left pixel (y0, x0)
        (8, 10): (True, True, True, True, True),  # bottom-right pixel (y1 - 1, x1 - 1)
        (6, 11): (False, True, False, True, True),  # column x1: one past the right edge
        (9, 7): (False, True, False, True, True),  # row y1: one past the bottom edge
        (6, 4): (False, True, False, True, True),  # column x0 - 1
        (3, 7): (False, True, False, True, True),  # row y0 - 1
        (9, 11): (False, True, False, False, True),  # one past the corner diagonally: distance sqrt(2)
        (6, 12): (False, False, False, False, True),  # column x1 + 1: distance 2
        (6, 13): (False, False, False, False, False),  # column x1 + 2: distance 3
        (10, 7): (False, False, False, False, True),  # row y1 + 1: distance 2 from row y1 - 1
        (11, 7): (False, False, False, False, False),  # row y1 + 2: distance 3
        (11, 12): (False, False, False, False, False),  # distance sqrt(8) from the corner pixel (8, 10)
    }
    peaks = np.array(list(cases))[None]
    game = PointingGame(methods=("m",), peaks=peaks, boxes=np.tile(box, (len(cases), 1)))
    columns = [game.hits("m", 0), game.hits("m", 1), game.hits("m", tolerance=0), game.hits("m", tolerance=1),
               game.hits("m", tolerance=2)]
    assert [tuple(bool(c[i]) for c in columns) for i in range(len(cases))] == list(cases.values())
    assert [hand_hit(r, c, box, tolerance=2) for r, c in cases] == [v[4] for v in cases.values()]


def test_markdown_table(game: PointingGame) -> None:
    lines = game.to_markdown((0, 2)).splitlines()
    assert lines[0] == "| method | peak in box | peak in box ±2 px |"
    assert len(lines) == 2 + len(game.methods)
    assert lines[2].startswith("| gradcam | ") and lines[2].endswith(f"{game.fraction('gradcam', 2):.1%} |")


def test_mismatched_lengths_are_refused(trained_synthetic) -> None:
    model, test_set = trained_synthetic
    with pytest.raises(ValueError, match="one of each"):
        pointing_game(model, synthetic.normalize(test_set.images[:3]), test_set.labels[:2], test_set.boxes[:3])
