"""Targets as objects: each one scores an image's output as its pytorch-grad-cam counterpart does, the (N, k)
scores pad with zeros, and the one gradient function gives every leaf a k axis (used or not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from introspect.errors import ArgumentError
from introspect.engine.forward import FEATURE_MAPS, gradients, run_forward
from introspect.engine.targets import BoxScore, ClassScore, FinerContrast, PixelClass, TrueLabel, target_scores


def test_targets_score_as_pytorch_grad_cams_do():
    from pytorch_grad_cam.utils.model_targets import (ClassifierOutputTarget, FasterRCNNBoxScoreTarget,
                                                      FinerWeightedTarget, SemanticSegmentationTarget)

    torch.manual_seed(0)
    logits = torch.randn(10)
    assert ClassScore(3)(logits) == ClassifierOutputTarget(3)(logits)
    torch.testing.assert_close(FinerContrast(3, (1, 4, 7))(logits), FinerWeightedTarget(3, [1, 4, 7], 1.0)(logits))
    nearest = FinerContrast.nearest(ClassScore(3), logits)
    assert nearest.index == 3 and len(nearest.comparisons) == 3 and 3 not in nearest.comparisons
    masks = torch.randn(5, 8, 8)
    mask = (masks.argmax(0) == 2).numpy().astype(np.float32)
    torch.testing.assert_close(PixelClass(2)(masks), SemanticSegmentationTarget(2, mask)(masks))
    torch.testing.assert_close(PixelClass(2, masks.argmax(0))(masks), SemanticSegmentationTarget(2, mask)(masks))
    detections = {"boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]]), "labels": torch.tensor([1, 2]),
                  "scores": torch.tensor([0.9, 0.6])}
    for box, label in [((0.0, 0.0, 10.0, 11.0), 1), ((5.0, 5.0, 20.0, 20.0), 2), ((5.0, 5.0, 20.0, 20.0), 1)]:
        ours = BoxScore(box, label)(detections)
        theirs = FasterRCNNBoxScoreTarget([label], np.array([box]))(detections)
        torch.testing.assert_close(ours.reshape(1), theirs)


def test_target_scores_pad_missing_targets_with_zeros_and_need_one_list_per_image():
    logits = torch.randn(2, 6, requires_grad=True)
    with torch.no_grad():  # the scores extend the graph even so
        scores = target_scores([[ClassScore(1), ClassScore(4)], [ClassScore(2)]], logits)
    assert scores.shape == (2, 2) and scores.requires_grad
    assert scores[1, 1] == 0 and scores[0, 1] == logits[0, 4]
    with pytest.raises(ArgumentError) as caught:
        target_scores([[ClassScore(1)]], logits)
    assert caught.value.parameter == "targets"


def test_true_label_takes_the_top_class_of_an_unlabelled_image():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert TrueLabel.per_image(torch.tensor([2, -1]), logits) == [[TrueLabel(2)], [TrueLabel(0)]]
    with pytest.raises(ArgumentError):
        TrueLabel.per_image([-1])


def test_a_new_target_is_one_class_and_runs_through_the_one_engine(tiny_cnn):
    class Probability:  # the softmax probability of a class, instead of its logit
        def __init__(self, index: int) -> None:
            self.index = index

        def __call__(self, output: torch.Tensor) -> torch.Tensor:
            return torch.softmax(output, dim=-1)[self.index]

    model = tiny_cnn()
    forward = run_forward(model, torch.randn(2, 3, 64, 64), capture=["layer4"], grad_layer="layer4")
    grads = forward.gradients([[Probability(1), Probability(2)], [Probability(0), Probability(3)]])[""]
    assert grads.shape == (2, *forward.leaves[""].shape) and grads.abs().amax() > 0
    forward.release()


def test_a_leaf_the_scores_do_not_reach_gets_zeros_with_the_k_axis():
    used, unused = torch.randn(3, 4, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    grads = gradients((used * 2)[:, :2], {"used": used, "unused": unused})
    assert grads["used"].shape == (2, 3, 4) and grads["unused"].shape == (2, 3, 5)
    assert not grads["unused"].any()
    torch.testing.assert_close(grads["used"][1, :, 1], torch.full((3,), 2.0))


def test_the_pass_explains_a_dict_of_maps_a_tuple_or_a_tensor():
    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            features = self.conv(x)
            return {"a": features, "b": features[..., ::2, ::2]}

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = Backbone()
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.backbone(x)["a"]).mean(dim=(-2, -1))

    model = Model().eval()
    forward = run_forward(model, torch.randn(2, 3, 8, 8), grad_layer=FEATURE_MAPS)
    assert forward.layer == "backbone" and forward.levels == ("a", "b")
    grads = forward.gradients(torch.tensor([[0, 1], [1, 0]]))
    assert grads["a"].abs().amax() > 0 and not grads["b"].any()  # "b" feeds nothing
    forward.release()
    single = run_forward(model, torch.randn(2, 3, 8, 8), grad_layer="backbone.conv")
    assert single.levels == ("",) and single.gradients(torch.tensor([[0], [1]]))[""].shape == (1, 2, 4, 8, 8)
