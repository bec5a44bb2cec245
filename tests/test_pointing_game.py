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


def test_hits_agree_with_points_in_boxes() -> None:
    rng = np.random.default_rng(0)
    peaks = rng.integers(0, 64, size=(1, 500, 2))
    corner = rng.integers(0, 48, size=(500, 2))
    boxes = np.concatenate([corner, corner + rng.integers(4, 17, size=(500, 2))], axis=1)
    game = PointingGame(methods=("m",), peaks=peaks, boxes=boxes)
    for margin in (0, 2, 5):
        expected = synthetic.points_in_boxes(peaks[0], boxes, margin=margin)
        assert np.array_equal(game.hits("m", margin), expected)
        assert game.fraction("m", margin) == pytest.approx(expected.mean())
    assert 0 < expected.sum() < 500


def test_markdown_table(game: PointingGame) -> None:
    lines = game.to_markdown((0, 2)).splitlines()
    assert lines[0] == "| method | peak in box | peak in box ±2 px |"
    assert len(lines) == 2 + len(game.methods)
    assert lines[2].startswith("| gradcam | ") and lines[2].endswith(f"{game.fraction('gradcam', 2):.1%} |")


def test_mismatched_lengths_are_refused(trained_synthetic) -> None:
    model, test_set = trained_synthetic
    with pytest.raises(ValueError, match="one of each"):
        pointing_game(model, synthetic.normalize(test_set.images[:3]), test_set.labels[:2], test_set.boxes[:3])
