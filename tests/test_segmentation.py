"""Segmentation: records, overlay and legend, CAMs equal to pytorch-grad-cam's, the model untouched, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_untouched, hook_total, model_state
from torch import nn

from introspect.errors import UnknownMethodError, UsageError
from introspect.hooks import inspecting
from introspect.tasks.segmentation import IMAGENET_MEAN, IMAGENET_STD, segment, segmentation_cams, voc_categories

SIZE = 96


class OutOnly(nn.Module):
    """pytorch-grad-cam's SegmentationModelOutputWrapper: the model's 'out' only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _segmenter(name: str, zero_head_bias: bool = False) -> nn.Module:
    """Random weights, BN statistics spread (and the classifier's last bias zeroed where asked) so that several
    classes are predicted, not one everywhere."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) * 0.5 + 0.3)
        if zero_head_bias:
            [m for m in model.classifier.modules() if isinstance(m, nn.Conv2d)][-1].bias.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _reference(model: nn.Module, images: torch.Tensor, results, layers: list[nn.Module]) -> list[list[np.ndarray]]:
    """pytorch-grad-cam's GradCAM with SemanticSegmentationTarget (mask: the pixels predicted as the class)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    x = _normalised(images).to(next(model.parameters()).dtype)
    out = []
    with inspecting(model):
        with GradCAM(model=OutOnly(model), target_layers=layers) as explainer:
            for n, result in enumerate(results):
                maps = []
                for m in result.maps:
                    mask = (result.prediction.class_map == m.class_index).astype(np.float32)
                    target = SemanticSegmentationTarget(m.class_index, mask)
                    maps.append(explainer(input_tensor=x[n:n + 1], targets=[target])[0])
                out.append(maps)
    return out


def test_segment_records_class_map_shares_and_legend(images):
    model = _segmenter("fcn_resnet50")
    found = segment(model, images, names=["a", "b"])
    assert [s.image_name for s in found] == ["a", "b"]
    with torch.no_grad():
        expected = model(_normalised(images))["out"].argmax(1).numpy()
    voc = voc_categories()
    assert len(voc) == 21 and voc[0] == "__background__"
    for seg, want in zip(found, expected):
        assert seg.class_map.shape == (SIZE, SIZE) and np.array_equal(seg.class_map, want)
        shares = [c.share for c in seg.classes]
        assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1.0)
        for c in seg.classes:
            assert c.pixels == int((want == c.index).sum()) and c.name == voc[c.index]
        assert seg.image.shape[0] > SIZE and seg.image.shape[1:] == (SIZE, 3)  # the legend is below the photo
        assert seg.to_markdown().splitlines()[2].startswith(f"| {seg.classes[0].name} | {seg.classes[0].index} |")


@pytest.mark.parametrize("name", [pytest.param("fcn_resnet50", marks=pytest.mark.slow), "deeplabv3_mobilenet_v3_large"])
def test_segmentation_gradcam_on_the_backbone_equals_pytorch_grad_cam_on_its_out_layer(images, name):
    # in float64: a random model's Grad-CAM sums cancel, and float32 rounding alone moves maps by ~1e-4
    model = _segmenter(name, zero_head_bias=name.startswith("deeplab")).double()
    results = segmentation_cams(model, images, max_classes=3, skip_background=False)
    assert len(results) == 2 and all(r.layer == "backbone" for r in results)
    assert "out" in results[0].levels
    assert all(len(r.maps) > 1 for r in results)  # several classes: one batched backward serves them all
    # the backbone's 'out' map is its stage that feeds the classifier; 'aux' feeds only the auxiliary head
    out_stage = next(key for key, value in model.backbone.return_layers.items() if value == "out")
    reference = _reference(model, images, results, [dict(model.backbone.named_children())[out_stage]])
    for result, theirs in zip(results, reference):
        for m, t in zip(result.maps, theirs):
            assert m.heatmap.shape == (SIZE, SIZE)
            assert np.abs(t - m.heatmap).max() < 1e-4


def test_lraspp_gradcam_on_a_named_layer_equals_pytorch_grad_cam(images):
    model = _segmenter("lraspp_mobilenet_v3_large").double()
    high = next(key for key, value in model.backbone.return_layers.items() if value == "high")
    results = segmentation_cams(model, images, layer=f"backbone.{high}", skip_background=False)
    assert results[0].layer == f"backbone.{high}" and results[0].levels == ("",)
    reference = _reference(model, images, results, [dict(model.backbone.named_children())[high]])
    for result, theirs in zip(results, reference):
        assert len(result.maps) == len(result.prediction.classes[:5])
        for m, t in zip(result.maps, theirs):
            assert np.abs(t - m.heatmap).max() < 1e-4
    default = segmentation_cams(model, images, methods="gradcam,eigencam")
    assert default[0].levels == ("low", "high") and [r.method for r in default] == ["gradcam"] * 2 + ["eigencam"] * 2


def test_background_is_skipped_unless_asked_and_max_classes_caps(images):
    model = _segmenter("fcn_resnet50")
    seg = segment(model, images[:1])[0]
    assert len(seg.classes) >= 2
    capped = segmentation_cams(model, images[:1], max_classes=1, skip_background=False)[0]
    assert [m.class_index for m in capped.maps] == [seg.classes[0].index]
    subject = capped.maps[0].subject
    assert subject.kind == "mask class" and subject.score == seg.classes[0].share and subject.caption.endswith("%")
    top = seg.classes[0].index
    names = ["zero"] + [f"c{i}" for i in range(1, 21)]
    names[top] = "__background__"  # the largest class is called background: skipped by default
    skipped = segmentation_cams(model, images[:1], categories=names)[0]
    assert [m.class_index for m in skipped.maps] == [c.index for c in seg.classes[1:6]]


def test_images_of_two_sizes_and_an_input_batch(images):
    from introspect.inputs import InputBatch

    model = _segmenter("lraspp_mobilenet_v3_large")
    other = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(2))
    results = segmentation_cams(model, [images[0], other], names=["square", "wide"])
    assert [r.image_name for r in results] == ["square", "wide"]
    assert results[0].maps[0].heatmap.shape == (SIZE, SIZE) and results[1].maps[0].heatmap.shape == (64, 80)
    batch = InputBatch(tensor=_normalised(images), photos=(images.permute(0, 2, 3, 1) * 255).round().byte().numpy(),
                       names=("p", "q"))
    from_batch = segment(model, batch)
    direct = segment(model, images)
    assert [s.image_name for s in from_batch] == ["p", "q"]
    assert all(np.array_equal(a.class_map, b.class_map) for a, b in zip(from_batch, direct))


def test_bad_input_is_a_one_line_usage_error(images):
    model = _segmenter("lraspp_mobilenet_v3_large")
    with pytest.raises(UnknownMethodError, match="not offered for segmentation"):
        segmentation_cams(model, images, methods="ablationcam")
    with pytest.raises(UsageError, match="max_classes=0"):
        segmentation_cams(model, images, max_classes=0)
    classifier = torchvision.models.get_model("resnet18", weights=None).eval()
    with pytest.raises(UsageError, match="per-pixel class scores"):
        segment(classifier, images)


def test_segmenter_comes_back_untouched(images):
    model = _segmenter("deeplabv3_mobilenet_v3_large")
    model.train()
    model.backbone.requires_grad_(False)
    for p in model.classifier.parameters():
        p.grad = torch.full_like(p, 0.25)
    before = model_state(model)
    hooks = hook_total(model)
    segment(model, images)
    segmentation_cams(model, images, methods="gradcam,layercam,eigencam")
    segmentation_cams(model, images, layer="backbone.16")
    with pytest.raises(UnknownMethodError):
        segmentation_cams(model, images, methods="scorecam")
    assert hook_total(model) == hooks
    assert_untouched(before, model)


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "fcn_resnet50"])
def test_pixel_class_gradients_through_the_head_equal_the_full_resolution_ones(images, name):
    """The fast path (targets taken on the head's low-resolution scores, weighted by the resize's adjoint of the
    mask) gives the gradients of the full-resolution targets, and is found on torchvision's segmenters."""
    from introspect.engine.forward import gradients
    from introspect.engine.targets import PixelClass
    from introspect.tasks.common import task_images
    from introspect.tasks.segmentation import _pixel_class_scores, _resized_head, segmentation_pass

    model = _segmenter(name).double()
    found = segmentation_pass(model, task_images(images.double()), methods=("gradcam",), categories=voc_categories())
    try:
        targets = [[PixelClass(c.index, found.class_maps[n]) for c in seg.classes[:3]]
                   for n, seg in enumerate(found.segmentations)]
        head = _resized_head(found.forward, found.logits)
        assert head is not None and head.shape[-1] < found.logits.shape[-1]
        fast = gradients(_pixel_class_scores(head, targets, tuple(found.logits.shape[-2:])), found.forward.leaves)
        full = found.forward.gradients(targets)
        assert set(fast) == set(full) and any(float(g.abs().max()) > 0 for g in full.values())
        for level in full:
            torch.testing.assert_close(fast[level], full[level], rtol=1e-7, atol=1e-9)
    finally:
        found.release()


def test_a_batch_unbound_from_one_tensor_is_not_copied_again():
    """An audit's batch arrives as the rows of one tensor: the forward pass takes that tensor itself; any other
    set of images (a subset, another order, views of a crop) is stacked, with the same values."""
    from introspect.tasks.segmentation import _batched

    x = torch.rand(4, 3, 8, 8)
    rows = x.unbind(0)
    assert _batched(rows) is x
    assert _batched(rows[:3]) is not x and torch.equal(_batched(rows[:3]), x[:3])
    assert torch.equal(_batched(tuple(reversed(rows))), x.flip(0))
    crop = x[:, :, :4]
    assert torch.equal(_batched(crop.unbind(0)), crop)
    turned = x.transpose(2, 3)  # square images: the same shapes and starts, other strides
    assert torch.equal(_batched(turned.unbind(0)), turned)
    single = torch.rand(3, 2, 2)
    assert torch.equal(_batched([single]), single[None])


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large"])
def test_maps_taken_one_target_at_a_time_equal_those_of_the_stacked_gradients(images, name):
    """score_maps takes each target's gradients and reduces them before the next (no (k, N, C, h, w) stack): the
    maps of every method, gradient or not, equal scaled_maps over the stacked gradients of the same scores."""
    from introspect.engine.cam import scaled_maps, score_maps
    from introspect.engine.forward import gradients
    from introspect.engine.targets import PixelClass
    from introspect.tasks.common import task_images
    from introspect.tasks.segmentation import _pixel_class_scores, _resized_head, segmentation_pass

    methods = ("gradcam", "gradcam++", "layercam", "eigengradcam", "eigencam")
    model = _segmenter(name).double()
    found = segmentation_pass(model, task_images(images.double()), methods=methods, categories=voc_categories())
    try:
        targets = [[PixelClass(c.index, found.class_maps[n]) for c in seg.classes[:2 if n == 0 else 1]]
                   for n, seg in enumerate(found.segmentations)]
        k = max(len(row) for row in targets)
        assert k == 2 and min(len(row) for row in targets) == 1  # rows of different lengths, one zero-padded
        head = _resized_head(found.forward, found.logits)
        scores = _pixel_class_scores(head, targets, tuple(found.logits.shape[-2:]))
        sizes = [tuple(p.shape[:2]) for p in found.batch.photos]
        ours = score_maps(methods, found.forward, scores, sizes)
        stacked = gradients(scores, found.forward.leaves)
        for method in methods:
            theirs = scaled_maps(method, found.forward, stacked, k, sizes)
            assert len(ours[method]) == len(theirs) == len(sizes)
            for mine, reference in zip(ours[method], theirs):
                assert mine.shape == reference.shape == (k, *sizes[0])
                torch.testing.assert_close(mine, reference, rtol=0, atol=1e-12)
            assert any(float(m.amax()) > 0 for m in ours[method])
    finally:
        found.release()
