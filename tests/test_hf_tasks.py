"""Hugging Face dense-prediction models on the task path of torchvision's: a tiny SegFormer for semantic
segmentation, built from its config and saved with save_pretrained, runs through the CLI as ``hf:FOLDER``
and writes its mask (id2label names) and a CAM per present class on the map its classifier reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from conftest import image, load_events, run_cli, text  # noqa: E402

from introspect.testing.hf_tiny import save_tiny  # noqa: E402

CAT = Path(__file__).resolve().parents[1] / "sample_images" / "cat.png"


@pytest.fixture(scope="module")
def segformer(tmp_path_factory) -> Path:
    return save_tiny("segformer", "SegformerForSemanticSegmentation", tmp_path_factory.mktemp("segformer"),
                     num_labels=4)


def test_hf_segmenter_loads_as_a_segmentation_task_with_its_own_names_and_layers(segformer):
    import introspect
    from introspect.tasks import TASKS

    loaded = introspect.load_model(f"hf:{segformer}", weights="none", input_size=64)
    assert loaded.task == "hf_segmentation" and loaded.categories == ("thing0", "thing1", "thing2", "thing3")
    task = TASKS[loaded.task]
    # the decode head's fused map, the last map before its classifier (not a projection, not the wrapper)
    assert task.cam_layer_name(loaded) == "model.decode_head.activation"
    features = task.feature_layer_names(loaded)
    assert features and all(name.startswith("model.segformer.") for name in features)
    out = loaded.model(torch.zeros(1, 3, 96, 128))["out"]  # torchvision's contract: scores at the input's size
    assert out.shape == (1, 4, 96, 128)


@pytest.mark.slow
def test_cli_writes_an_hf_segmentation_and_its_class_cams(segformer, tmp_path):
    code, out, err = run_cli([f"hf:{segformer}", "--weights", "none", "--image", str(CAT), "--logdir", str(tmp_path),
                              "--input-size", "64", "--sections", "features,cam"])
    assert code == 0, err
    acc = load_events(next(tmp_path.iterdir()))
    tags = acc.Tags()["images"]
    assert {"segmentation/cat", "cam/gradcam/cat", "input/cat"} <= set(tags)
    info = text(acc, "run/info").replace("\\_", "_")  # run/info escapes Markdown
    assert "| cam layer | model.decode_head.activation |" in info
    assert any(t.startswith("features/model.segformer.") for t in tags)
    assert "thing" in out  # the classes present, by their id2label names
    panel = image(acc, "cam/gradcam/cat")
    assert panel.std() > 0 and np.isfinite(panel).all()


@pytest.fixture(scope="module")
def detr(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    backbone = transformers.ResNetConfig(hidden_sizes=[8, 8, 8, 16], embedding_size=8, depths=[1, 1, 1, 1],
                                         out_features=["stage4"])
    config = transformers.DetrConfig(use_timm_backbone=False, backbone=None, use_pretrained_backbone=False,
                                     backbone_config=backbone, d_model=16, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                                     decoder_ffn_dim=16, num_queries=4, num_labels=2,
                                     id2label={0: "apple", 1: "pear"}, label2id={"apple": 0, "pear": 1})
    folder = tmp_path_factory.mktemp("detr")
    transformers.DetrForObjectDetection(config).eval().save_pretrained(folder)
    return folder


def test_hf_detector_loads_as_a_detection_task_and_its_cams_equal_pytorch_grad_cam(detr):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    import introspect
    from introspect.layers import resolve_layer
    from introspect.tasks import TASKS
    from introspect.tasks.detection import detection_cams

    loaded = introspect.load_model(f"hf:{detr}", input_size=96)
    assert loaded.task == "hf_detection" and loaded.categories == ("apple", "pear")
    layer = TASKS[loaded.task].cam_layer_name(loaded)
    assert layer == "model.model.input_projection"  # the image map the transformer encoder reads
    photo = torch.rand(3, 80, 112, generator=torch.Generator().manual_seed(0))
    (result,) = detection_cams(loaded, photo, methods="gradcam", layer=layer, score_threshold=0.0, topk=2)
    found = result.prediction
    assert len(found.boxes) == 4 and set(found.names) <= {"apple", "pear"}  # a detection per query
    assert (found.boxes[:, 2] <= 112 + 1e-3).all() and (found.boxes[:, 3] <= 80 + 1e-3).all()  # image pixels
    loaded.model.score_thresh = 0.0  # the reference sees every query too (introspect lowers it for its own pass)
    with GradCAM(model=loaded.model, target_layers=[resolve_layer(loaded.model, layer)]) as reference:
        for entry in result.maps:
            target = FasterRCNNBoxScoreTarget(labels=[entry.subject.index],
                                              bounding_boxes=[np.array(entry.subject.box)])
            expected = reference(input_tensor=photo[None], targets=[target])[0]
            assert np.abs(entry.heatmap - expected).max() < 1e-4


@pytest.mark.slow
def test_cli_writes_hf_detections_and_a_cam_per_detection(detr, tmp_path):
    code, out, err = run_cli([f"hf:{detr}", "--weights", "none", "--image", str(CAT), "--logdir", str(tmp_path),
                              "--input-size", "96", "--score-threshold", "0", "--sections", "features,cam"])
    assert code == 0, err
    acc = load_events(next(tmp_path.iterdir()))
    tags = acc.Tags()["images"]
    assert {"detections/cat", "cam/gradcam/cat", "input/cat"} <= set(tags)
    assert "| cam layer | model.model.input_projection |" in text(acc, "run/info").replace("\\_", "_")
    assert any(t.startswith("features/model.model.backbone.") for t in tags)
    assert "4 detections" in out and ("apple" in out or "pear" in out)
    assert image(acc, "cam/gradcam/cat").std() > 0


# dense architectures of the auto mappings built tiny here, with the layer their CAM must explain (under
# "model."): the last map before the per-pixel classifier, or the image map DETR's transformer encoder reads
DENSE_LAYER = {
    "SegformerForSemanticSegmentation": "decode_head.activation",
    "BeitForSemanticSegmentation": "decode_head.fpn_bottleneck",
    "Data2VecVisionForSemanticSegmentation": "decode_head.fpn_bottleneck",
    "UperNetForSemanticSegmentation": "decode_head.fpn_bottleneck",
    "DPTForSemanticSegmentation": r"head.head.2",
    "MobileNetV2ForSemanticSegmentation": "segmentation_head.conv_projection",
    "MobileViTForSemanticSegmentation": "segmentation_head.aspp",
    "MobileViTV2ForSemanticSegmentation": "segmentation_head.aspp",
    "DetrForObjectDetection": "model.input_projection",
    "ConditionalDetrForObjectDetection": "model.input_projection",
    "TableTransformerForObjectDetection": "model.input_projection",
    "DeformableDetrForObjectDetection": r"model.input_proj.1",  # the last of its two levels
}


def _dense() -> list[tuple[str, str]]:
    from introspect.testing.hf_tiny import detection_architectures, segmentation_architectures

    return [pair for pair in segmentation_architectures() + detection_architectures() if pair[1] in DENSE_LAYER]


DENSE = _dense()


@pytest.mark.slow
@pytest.mark.parametrize("model_type,class_name", DENSE, ids=[c for _, c in DENSE])
def test_cli_runs_hf_segmenters_and_detectors_with_their_cam_layer(model_type, class_name, tmp_path):
    import re

    folder = save_tiny(model_type, class_name, tmp_path / class_name)
    code, out, err = run_cli([f"hf:{folder}", "--weights", "none", "--image", str(CAT), "--logdir",
                              str(tmp_path / "runs"), "--input-size", "64", "--score-threshold", "0",
                              "--sections", "features,cam"])
    assert code == 0, err
    acc = load_events(next((tmp_path / "runs").iterdir()))
    tags = set(acc.Tags()["images"])
    shown = "segmentation/cat" if "Segmentation" in class_name else "detections/cat"
    assert {shown, "cam/gradcam/cat"} <= tags and any(t.startswith("features/") for t in tags)
    info = text(acc, "run/info").replace("\\_", "_")  # run/info escapes Markdown
    layer = next(line.split("|")[2].strip() for line in info.splitlines() if line.startswith("| cam layer |"))
    assert re.fullmatch(f"model\\.{DENSE_LAYER[class_name]}", layer), layer
    assert image(acc, "cam/gradcam/cat").std() > 0


def test_an_uncached_hub_id_offline_says_how_to_get_it_in_one_line(tmp_path):
    code, out, err = run_cli(["hf:no-such-org/no-such-vit", "--weights", "none", "--image", str(CAT), "--logdir",
                              str(tmp_path / "runs")])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not in the local Hugging Face cache" in err and "huggingface-cli download no-such-org/no-such-vit" in err
    assert not (tmp_path / "runs").exists()


def test_an_architecture_that_needs_more_than_an_image_is_refused_with_its_reason(tmp_path):
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "ImageGPTForImageClassification"):
        pytest.skip("this transformers has no ImageGPT")
    config = transformers.ImageGPTConfig(n_embd=16, n_layer=1, n_head=2, n_positions=16, vocab_size=17,
                                         num_labels=2)
    folder = tmp_path / "imagegpt"
    transformers.ImageGPTForImageClassification(config).save_pretrained(folder)
    code, out, err = run_cli([f"hf:{folder}", "--weights", "none", "--image", str(CAT), "--logdir",
                              str(tmp_path / "runs")])
    assert code == 2 and "colour-cluster token ids" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_library_deprecation_notices_stay_off_the_console_unless_debug(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("the notice checked here (is_gradient_checkpointing) is transformers 5's")
    from introspect.notices import DEBUG_ENV

    folder = save_tiny("convnext", "ConvNextForImageClassification", tmp_path / "convnext")
    argv = [f"hf:{folder}", "--weights", "none", "--logdir", str(tmp_path / "runs"), "--input-size", "64",
            "--sections", "graph"]
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    code, out, err = run_cli(argv)
    assert code == 0, err
    assert "deprecated" not in err  # tracing reads a deprecated transformers property: its notice is not ours
    monkeypatch.setenv(DEBUG_ENV, "")  # put back after the test (--debug sets it)
    code, out, err = run_cli([*argv, "--debug"])
    assert code == 0, err
    assert "WARNING: `is_gradient_checkpointing` is deprecated" in err  # --debug shows it, once
    assert err.count("is_gradient_checkpointing") == 1


@pytest.mark.slow
def test_hf_detector_and_segmenter_take_the_dataset_audit(detr, segformer, tmp_path):
    """The audits are the one path's: an hf: detector gets COCO mAP from its boxes, an hf: segmenter mIoU from
    its masks, through the same CLI as torchvision's."""
    import json

    from PIL import Image

    from conftest import text

    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    entries, annotations = [], []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / f"im{i}.png")
        mask = rng.integers(0, 4, (64, 64), dtype=np.uint8)
        mask[:4] = 255  # ignored
        Image.fromarray(mask).save(masks / f"im{i}.png")
        entries.append({"id": i + 1, "file_name": f"im{i}.png", "width": 64, "height": 64})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [8, 8, 32, 24],
                            "area": 32 * 24, "iscrowd": 0})
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": entries, "annotations": annotations,
                                "categories": [{"id": 1, "name": "apple"}, {"id": 2, "name": "pear"}]}))
    logdir = tmp_path / "runs"
    for model, truth, run, scalar in ((detr, ["--boxes", str(coco)], "det", "audit/map/map"),
                                      (segformer, ["--masks", str(masks)], "seg", "audit/miou")):
        code, out, err = run_cli([f"hf:{model}", "--weights", "none", "--dataset", str(images), *truth,
                                  "--input-size", "64", "--workers", "0", "--batch-size", "2",
                                  "--logdir", str(logdir), "--run-name", run])
        assert code == 0, err
        assert "4 images audited" in out
        events = load_events(logdir / run)
        assert "| status | completed" in text(events, "run/info")
        assert scalar in events.Tags()["scalars"]
