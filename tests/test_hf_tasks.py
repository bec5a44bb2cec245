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

    loaded = introspect.load_model(f"hf:{segformer}", weights="none", input_size=512)
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
                              "--input-size", "512", "--sections", "features,cam"])
    assert code == 0, err
    acc = load_events(next(tmp_path.iterdir()))
    tags = acc.Tags()["images"]
    assert {"segmentation/cat", "cam/gradcam/cat", "input/cat"} <= set(tags)
    info = text(acc, "run/info")
    assert "| cam layer | model.decode_head.activation |" in info
    assert any(t.startswith("features/model.segformer.") for t in tags)
    assert "thing" in out  # the classes present, by their id2label names
    panel = image(acc, "cam/gradcam/cat")
    assert panel.std() > 0 and np.isfinite(panel).all()


def test_hf_detectors_are_refused_in_one_line_before_anything_is_written(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.DetrConfig(use_timm_backbone=False, backbone=None, use_pretrained_backbone=False,
                                     backbone_config=transformers.ResNetConfig(hidden_sizes=[8, 8, 8, 8],
                                                                               embedding_size=8, depths=[1, 1, 1, 1]),
                                     d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                     decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
                                     num_queries=5, num_labels=2)
    folder = tmp_path / "detr"
    transformers.DetrForObjectDetection(config).save_pretrained(folder)
    code, out, err = run_cli([f"hf:{folder}", "--weights", "none", "--image", str(CAT), "--logdir",
                              str(tmp_path / "runs")])
    assert code == 2 and "object detector" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
