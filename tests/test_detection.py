"""Detection: records, drawing, CAMs equal to pytorch-grad-cam's, the model untouched, bad input, a trained detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_untouched, hook_total, model_state
from torch import nn

from introspect.drawing import enlarge
from introspect.errors import TargetError, UnknownMethodError, UsageError
from introspect.hooks import inspecting
from introspect.tasks.detection import DRAW_SIDE, coco_categories, detect, detection_cams

SIZE = 256  # the 320 px detector resizes 256 -> 320, a multiple of 32: no padding, so maps compare 1:1


def _randomised(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random-weight detectors give near-zero features and equal scores: spread BN statistics and class weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) * 0.5 + 0.3)
        if hasattr(model, "roi_heads"):
            model.roi_heads.box_predictor.cls_score.weight.mul_(20)
    return model.eval()


def _detector(name: str = "fasterrcnn_mobilenet_v3_large_320_fpn", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return _randomised(torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs))


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    return _detector(rpn_pre_nms_top_n_test=60, rpn_post_nms_top_n_test=40, box_detections_per_img=30)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def _reference_maps(model: nn.Module, image: torch.Tensor, maps, layers: list[nn.Module]) -> list[np.ndarray]:
    """pytorch-grad-cam's GradCAM with FasterRCNNBoxScoreTarget, one call per detection."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    out = []
    with inspecting(model) as scope:
        scope.set_attribute(model.roi_heads, "score_thresh", 0.0)
        with GradCAM(model=model, target_layers=layers) as explainer:
            for m in maps:
                target = FasterRCNNBoxScoreTarget(labels=[m.subject.index],
                                                  bounding_boxes=np.array([m.subject.box], dtype=np.float32))
                out.append(explainer(input_tensor=image[None], targets=[target])[0])
    return out


def test_detect_records_boxes_names_scores_and_drawing(detector, image):
    found = detect(detector, image, score_threshold=0.0, names=["noise"])
    assert len(found) == 1
    d = found[0]
    assert d.image_name == "noise" and d.image_size == (SIZE, SIZE)
    assert len(d) == detector.roi_heads.detections_per_img  # the model's own 0.05 cut-off was lowered to 0
    assert d.boxes.shape == (len(d), 4) and d.boxes.dtype == np.float32
    assert (d.boxes >= 0).all() and (d.boxes <= SIZE).all() and (d.boxes[:, 2:] >= d.boxes[:, :2]).all()
    assert (np.diff(d.scores) <= 0).all()
    coco = coco_categories()
    assert len(coco) == 91 and d.names == tuple(coco[label] for label in d.labels)
    assert d.masks is None and d.keypoints is None
    k = -(-DRAW_SIDE // SIZE)  # drawn enlarged by a whole factor, for crisp labels
    assert d.image.shape == (SIZE * k, SIZE * k, 3) and d.image.dtype == np.uint8
    photo = enlarge((image.permute(1, 2, 0) * 255).round().byte().numpy(), SIZE * k)
    assert (d.image != photo).any()
    assert d.to_markdown().splitlines()[4].startswith(f"| 1 | {d.names[0]} | {d.labels[0]} | {d.scores[0]:.4f} |")
    assert detector.roi_heads.score_thresh == 0.05
    none = detect(detector, image, score_threshold=0.9)[0]
    assert len(none) == 0 and "no detection scored 0.9" in none.to_markdown()
    assert (none.image == photo).all()


def test_drawn_box_lands_on_the_detection(detector, image):
    best = detect(detector, image, score_threshold=0.0)[0]
    cut = float(best.scores[0] + best.scores[1]) / 2
    only = detect(detector, image, score_threshold=cut)[0]  # the best detection alone
    assert len(only) == 1 and np.array_equal(only.boxes[0], best.boxes[0])
    k = -(-DRAW_SIDE // SIZE)
    photo = enlarge((image.permute(1, 2, 0) * 255).round().byte().numpy(), SIZE * k)
    changed = (only.image != photo).any(axis=2)
    x0, y0, x1, y1 = (int(round(v * k)) for v in only.boxes[0])
    rows, cols = np.nonzero(changed)
    # nothing is drawn left of or above the box, nor below it (the label sits inside, from its top-left corner)
    assert cols.min() >= x0 - 1 and rows.min() >= y0 - 1 and rows.max() <= y1 + 1
    # and its outline is drawn: the left and bottom edges, where no label text reaches
    assert changed[y0 + 2:y1 - 2, max(x0, 0)].mean() > 0.8
    assert changed[min(y1, SIZE * k) - 1, x0 + 2:x1 - 2].mean() > 0.8


@pytest.mark.parametrize("restrict_to_rois", [True, False], ids=["roi-fast-path", "whole-graph"])
def test_detection_gradcam_equals_pytorch_grad_cam(detector, image, restrict_to_rois):
    results = detection_cams(detector, image, topk=4, score_threshold=0.0, restrict_to_rois=restrict_to_rois)
    assert len(results) == 1
    result = results[0]
    assert result.layer == "backbone" and result.levels == ("0", "1", "pool")
    assert len(result.maps) == 4
    found = result.prediction
    for j, m in enumerate(result.maps):
        subject = m.subject
        assert subject.kind == "box" and subject.detection == j and subject.index == found.labels[j]
        assert subject.score == pytest.approx(float(found.scores[j])) and subject.name == found.names[j]
        assert subject.box == tuple(float(v) for v in found.boxes[j]) and m.class_index == subject.index
        assert m.probability is None  # a detection score is no probability
        assert m.heatmap.shape == (SIZE, SIZE) and m.heatmap.max() == pytest.approx(1.0, abs=1e-5)
    # the box head reads levels '0' and '1' (FPN output convs); 'pool' feeds only the RPN (no gradient)
    reference = _reference_maps(detector, image, result.maps, list(detector.backbone.fpn.layer_blocks))
    for theirs, m in zip(reference, result.maps):
        assert np.abs(theirs - m.heatmap).max() < 1e-4
    assert result.image.shape[1] > 4 * SIZE  # one labelled panel per detection


def test_detection_cam_on_one_named_level_equals_pytorch_grad_cam(detector, image):
    result = detection_cams(detector, image, topk=3, score_threshold=0.0, layer="backbone.fpn.layer_blocks.0",
                            methods="gradcam")[0]
    assert result.layer == "backbone.fpn.layer_blocks.0" and result.levels == ("",)
    reference = _reference_maps(detector, image, result.maps, [detector.backbone.fpn.layer_blocks[0]])
    for theirs, m in zip(reference, result.maps):
        assert np.abs(theirs - m.heatmap).max() < 1e-4


def test_several_methods_share_one_pass_and_eigencam_needs_no_gradient(detector, image):
    results = detection_cams(detector, image, topk=2, score_threshold=0.0, methods="gradcam,hirescam,eigencam")
    assert [r.method for r in results] == ["gradcam", "hirescam", "eigencam"]
    assert all(r.prediction is results[0].prediction for r in results)
    eigen = results[2].maps
    assert np.array_equal(eigen[0].heatmap, eigen[1].heatmap)  # class-agnostic
    assert not np.array_equal(results[0].maps[0].heatmap, eigen[0].heatmap)


def test_targets_pick_classes_and_an_unknown_class_is_one_line(detector, image):
    found = detect(detector, image, score_threshold=0.0)[0]
    wanted = found.names[-1]
    result = detection_cams(detector, image, topk=3, score_threshold=0.0, targets=[wanted])[0]
    assert result.maps and all(m.subject.name == wanted for m in result.maps)
    with pytest.raises(TargetError) as error:
        detection_cams(detector, image, score_threshold=0.0, targets=["tabby"])
    assert isinstance(error.value, UsageError) and error.value.exit_code == 2
    message = str(error.value)
    assert "\n" not in message and "'tabby'" in message and "targets=" in message and "person" in message
    with pytest.raises(TargetError, match="label 500 is out of range"):
        detection_cams(detector, image, targets=[500])


def test_bad_arguments_are_one_line_usage_errors(detector, image):
    with pytest.raises(UnknownMethodError, match="scorecam.*not offered for detection"):
        detection_cams(detector, image, methods="scorecam")
    with pytest.raises(UsageError, match=r"score_threshold=1.5"):
        detect(detector, image, score_threshold=1.5)
    with pytest.raises(UsageError, match="topk=0"):
        detection_cams(detector, image, topk=0)
    classifier = torchvision.models.get_model("resnet18", weights=None).eval()
    with pytest.raises(UsageError):
        detect(classifier, image)


def test_no_detection_gives_empty_maps_and_a_warning(detector, image):
    with pytest.warns(UserWarning, match="nothing to explain"):
        result = detection_cams(detector, image, score_threshold=0.99)[0]
    assert result.maps == () and len(result.prediction) == 0


@pytest.mark.parametrize("training", [True, False], ids=["train-mode", "eval-mode"])
def test_detector_comes_back_untouched(training):
    model = _detector(rpn_post_nms_top_n_test=40, box_detections_per_img=30)
    model.train(training)
    model.backbone.body.requires_grad_(False)
    for p in model.roi_heads.parameters():
        p.grad = torch.full_like(p, 0.5)
    image = torch.rand(3, 200, 240, generator=torch.Generator().manual_seed(3))  # padded inside the model
    before = model_state(model)
    hooks = hook_total(model)
    detect(model, image, score_threshold=0.0)
    detection_cams(model, [image, image.flip(-1)], topk=2, score_threshold=0.0, methods="gradcam,eigencam")
    detection_cams(model, image, topk=2, score_threshold=0.0, restrict_to_rois=False)
    detection_cams(model, image, topk=1, score_threshold=0.0, layer="backbone.fpn.layer_blocks.0")
    with pytest.raises(TargetError):
        detection_cams(model, image, score_threshold=0.0, targets=["tabby"])
    assert hook_total(model) == hooks
    assert_untouched(before, model)


def test_two_images_of_different_sizes_get_maps_of_their_own_size(detector):
    generator = torch.Generator().manual_seed(4)
    images = [torch.rand(3, 200, 300, generator=generator), torch.rand(3, 256, 256, generator=generator)]
    results = detection_cams(detector, images, topk=2, score_threshold=0.0, names=["wide", "square"])
    assert [r.image_name for r in results] == ["wide", "square"]
    assert results[0].maps[0].heatmap.shape == (200, 300) and results[1].maps[0].heatmap.shape == (256, 256)
    assert all(m.heatmap.max() == pytest.approx(1.0, abs=1e-5) for r in results for m in r.maps)
    found = detect(detector, images, score_threshold=0.0)
    for r, d in zip(results, found):
        assert np.array_equal(r.prediction.boxes, d.boxes) and r.prediction.names == d.names


def test_masks_and_keypoints_are_recorded_and_drawn():
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(3, 128, 160, generator=generator)
    torch.manual_seed(0)
    masker = torchvision.models.get_model("maskrcnn_resnet50_fpn", weights=None, weights_backbone=None,
                                          min_size=128, max_size=160, box_detections_per_img=5).eval()
    d = detect(masker, image, score_threshold=0.0)[0]
    assert len(d) == 5 and d.masks.shape == (5, 128, 160) and d.keypoints is None
    assert 0.0 <= d.masks.min() and d.masks.max() <= 1.0
    torch.manual_seed(0)
    posed = torchvision.models.get_model("keypointrcnn_resnet50_fpn", weights=None, weights_backbone=None,
                                         min_size=128, max_size=160, box_detections_per_img=3).eval()
    k = detect(posed, image, score_threshold=0.0)[0]
    assert len(k) == 3 and k.keypoints.shape == (3, 17, 3) and set(k.names) <= {"person"}


def test_ssdlite_dense_head_hirescam_peaks_inside_each_detection():
    torch.manual_seed(0)
    model = _randomised(torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None,
                                                     weights_backbone=None, detections_per_img=5))
    image = torch.rand(3, 160, 160, generator=torch.Generator().manual_seed(6))
    result = detection_cams(model, image, topk=3, score_threshold=0.0, methods="hirescam")[0]
    assert result.layer == "backbone" and len(result.levels) == 6  # SSD's six feature maps, the last ones 1x1
    assert len(result.maps) == 3
    for m in result.maps:
        assert m.heatmap.shape == (160, 160) and m.heatmap.max() == pytest.approx(1.0, abs=1e-5)
        # a dense head's score reads the feature cells under its anchor: the map peaks on the box
        # (grown by one cell of the finest map: stride 16 at 320 px = 8 px here)
        row, col = m.peak
        x0, y0, x1, y1 = m.subject.box
        assert x0 - 8 <= col <= x1 + 8 and y0 - 8 <= row <= y1 + 8, (m.peak, m.subject.box)


# -- a detector trained on the synthetic task: one object whose box is known -------------------------------


@pytest.fixture(scope="module")
def trained():
    from synthetic_detector import trained_detector

    return trained_detector()


@pytest.mark.slow
def test_trained_detector_box_and_cam_peak_land_on_the_known_object(trained):
    from synthetic_detector import CATEGORIES
    from torchvision.ops import box_iou

    model, images, boxes, _ = trained
    found = detect(model, images, score_threshold=0.5, categories=CATEGORIES)
    ious = np.array([float(box_iou(torch.from_numpy(d.boxes[:1]), b[None].float())[0, 0]) if len(d) else 0.0
                     for d, b in zip(found, boxes)])
    assert (ious > 0.5).mean() >= 0.8, f"IoU of the best detection with the true box: {np.round(ious, 2)}"
    assert all(d.names[0] == "object" for d in found if len(d))
    hits = {}
    for method in ("hirescam", "gradcam"):
        results = detection_cams(model, images, topk=1, score_threshold=0.5, methods=method, categories=CATEGORIES)
        inside = []
        for r, b in zip(results, boxes.tolist()):
            if not r.maps:
                inside.append(False)
                continue
            row, col = r.maps[0].peak
            inside.append(b[0] - 4 <= col < b[2] + 4 and b[1] - 4 <= row < b[3] + 4)
        hits[method] = float(np.mean(inside))
    # a random peak lands in the grown box about 15% of the time
    assert hits["hirescam"] >= 0.7 and hits["gradcam"] >= 0.35, hits


def test_a_loaded_model_brings_its_categories_and_inference_mode_is_refused(detector, image):
    from types import SimpleNamespace

    names = tuple(f"thing{i}" for i in range(91))
    loaded = SimpleNamespace(model=detector, categories=names)
    found = detect(loaded, image, score_threshold=0.0)[0]
    assert found.names == tuple(names[label] for label in found.labels)
    with torch.inference_mode(), pytest.raises(UsageError, match="inference_mode"):
        detection_cams(detector, image, score_threshold=0.0)
    with torch.inference_mode():  # activation-only methods need no graph
        assert detection_cams(detector, image, topk=1, score_threshold=0.0, methods="eigencam")[0].maps
