"""Every image classifier in the installed transformers' auto mapping, built tiny and random from its config,
saved with ``save_pretrained`` and run through the CLI as ``hf:FOLDER --weights none``: exit 0, a CAM image,
and the CAM layer read back from run/info is the right one for the architecture. For a sample of families the
maps equal pytorch-grad-cam's on the same layer (with the token reshape) to 1e-4."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from conftest import image, load_events, run_cli, text  # noqa: E402

from introspect.testing.hf_tiny import classification_architectures, save_tiny  # noqa: E402
from introspect.timm_hf import HF_NOT_APPLICABLE  # noqa: E402

CAT = Path(__file__).resolve().parents[1] / "sample_images" / "cat.png"

# the right CAM layer of each architecture (under HFClassifier's "model.", a regular expression where
# transformers 4.x and 5.x name it differently), and why
RIGHT_LAYER = {
    # class token read through attention: the last block's pre-attention norm (as timm ViTs)
    "ViTForImageClassification": r"vit\.(encoder\.layer|layers)\.1\.layernorm_before",
    "ViTMSNForImageClassification": r"vit\.(encoder\.layer|layers)\.1\.layernorm_before",
    "DeiTForImageClassification": r"deit\.(encoder\.layer|layers)\.1\.layernorm_before",
    "DeiTForImageClassificationWithTeacher": r"deit\.(encoder\.layer|layers)\.1\.layernorm_before",
    "CvtForImageClassification": "cvt.encoder.stages.2.layers.2.layernorm_before",  # cls token in the last stage
    "PvtForImageClassification": "pvt.encoder.block.3.0.layer_norm_1",  # cls token in the last stage
    # patch tokens averaged (with or without the class token): the last map they are averaged from
    "BeitForImageClassification": r"beit\.(encoder\.layer|layers)\.1",
    "Data2VecVisionForImageClassification": "data2vec_vision.encoder.layer.1",
    "CLIPForImageClassification": "vision_model.encoder.layers.1",
    "MetaClip2ForImageClassification": "vision_model.encoder.layers.1",
    "SiglipForImageClassification": "vision_model.post_layernorm",
    "Dinov2ForImageClassification": "dinov2.layernorm",  # class token + mean of the normed patch tokens
    "Dinov2WithRegistersForImageClassification": "dinov2_with_registers.layernorm",
    "IJepaForImageClassification": "ijepa.layernorm",
    "SwinForImageClassification": "swin.layernorm",
    "Swinv2ForImageClassification": "swinv2.layernorm",
    "DonutSwinForImageClassification": "donut.encoder.layers.3",
    "FocalNetForImageClassification": "focalnet.layernorm",
    "HieraForImageClassification": "hiera.encoder.stages.3",
    "PvtV2ForImageClassification": "pvt_v2.encoder.layers.3.layer_norm",
    "LevitForImageClassification": "levit.encoder.stages.1.layers.1",  # the last stage with a grid at 64 px
    "LevitForImageClassificationWithTeacher": "levit.encoder.stages.1.layers.1",
    # convolutional trunks: the last map before the pooling (never the wrapper that returns a ModelOutput)
    "BitForImageClassification": "bit.norm",
    "ConvNextForImageClassification": "convnext.encoder.stages.3",
    "ConvNextV2ForImageClassification": "convnextv2.encoder.stages.3",
    "EfficientNetForImageClassification": "efficientnet.encoder.top_activation",
    "HGNetV2ForImageClassification": "encoder.stages.3",
    "MobileNetV1ForImageClassification": "mobilenet_v1.layer.25",
    "MobileNetV2ForImageClassification": "mobilenet_v2.conv_1x1",
    "MobileViTForImageClassification": "mobilevit.conv_1x1_exp",
    "MobileViTV2ForImageClassification": "mobilevitv2.encoder.layer.4",
    "PoolFormerForImageClassification": "norm",
    "PPLCNetForImageClassification": "encoder.blocks.4",
    "RegNetForImageClassification": "regnet.encoder.stages.3",
    "ResNetForImageClassification": "resnet.encoder.stages.3",
    "SegformerForImageClassification": r"segformer\.(stages\.3|encoder\.layer_norm\.3)",  # 4.x: the last stage's norm
    "SwiftFormerForImageClassification": "norm",
    "TextNetForImageClassification": "textnet.encoder.stages.3",
    "VanForImageClassification": "van.encoder.stages.3",  # transformers 4.x only
    "EfficientFormerForImageClassification": "efficientformer.layernorm",
    "EfficientFormerForImageClassificationWithTeacher": "efficientformer.layernorm",
    # the image only enters through the cross-attention to the latents: its input tokens are the map
    "PerceiverForImageClassificationLearned": "perceiver.input_preprocessor",
    "PerceiverForImageClassificationFourier": "perceiver.input_preprocessor",
    "PerceiverForImageClassificationConvProcessing": "perceiver.input_preprocessor",
}

# transformers 4.40 writes config.json with model_type "vit-hybrid", which its own AutoConfig cannot read back
UNREADABLE = {"vit_hybrid": "transformers 4.x cannot read back the config it saves (model_type 'vit-hybrid')"}
ARCHITECTURES = classification_architectures()
RUNNABLE = [(t, c) for t, c in ARCHITECTURES if t not in HF_NOT_APPLICABLE and t not in UNREADABLE]


# a sample of families for the reference maps (those the installed transformers has): class token, registers,
# distillation token, windows, channels-first, class token inside a stage, pooled tokens, a hybrid
SAMPLE = [pair for pair in [
    ("vit", "ViTForImageClassification"), ("dinov2_with_registers", "Dinov2WithRegistersForImageClassification"),
    ("deit", "DeiTForImageClassificationWithTeacher"), ("swin", "SwinForImageClassification"),
    ("convnext", "ConvNextForImageClassification"), ("cvt", "CvtForImageClassification"),
    ("pvt_v2", "PvtV2ForImageClassification"), ("mobilevit", "MobileViTForImageClassification"),
    ("beit", "BeitForImageClassification"),
] if pair in ARCHITECTURES]


def test_every_architecture_of_the_mapping_is_covered_or_says_why():
    missing = [c for t, c in RUNNABLE if c not in RIGHT_LAYER]
    assert not missing, f"new architectures in transformers' mapping: add their right layer: {missing}"
    for model_type, reason in HF_NOT_APPLICABLE.items():
        assert reason and "\n" not in reason and len(reason) < 160, model_type


@pytest.mark.slow
@pytest.mark.parametrize("model_type,class_name", RUNNABLE, ids=[c for _, c in RUNNABLE])
def test_cli_runs_every_hf_classifier_with_its_right_cam_layer(model_type, class_name, tmp_path):
    folder = save_tiny(model_type, class_name, tmp_path / class_name)
    code, out, err = run_cli([f"hf:{folder}", "--weights", "none", "--image", str(CAT), "--logdir",
                              str(tmp_path / "runs"), "--input-size", "64"])
    assert code == 0, err
    assert "WARNING: " not in err or "deprecated" not in err  # library notices stay off the console
    run_dir = next((tmp_path / "runs").iterdir())
    acc = load_events(run_dir)
    info = text(acc, "run/info").replace("\\_", "_")  # run/info escapes Markdown
    layer = next(line.split("|")[2].strip() for line in info.splitlines() if line.startswith("| cam layer |"))
    assert re.fullmatch(f"model\\.{RIGHT_LAYER[class_name]}", layer), layer
    assert "cam/gradcam/cat" in acc.Tags()["images"]
    panel = image(acc, "cam/gradcam/cat")
    assert panel.ndim == 3 and panel.std() > 0


@pytest.mark.slow
@pytest.mark.parametrize("model_type,class_name", SAMPLE, ids=[c for _, c in SAMPLE])
def test_hf_maps_equal_pytorch_grad_cam_on_the_same_layer(model_type, class_name, tmp_path):
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import introspect
    from introspect.inputs import prepare_inputs
    from introspect.layers import pick_cam_layer, resolve_layer

    folder = save_tiny(model_type, class_name, tmp_path / class_name, seed=1)
    loaded = introspect.load_model(f"hf:{folder}", input_size=64)
    choice = pick_cam_layer(loaded.model, input_size=64)
    assert re.fullmatch(f"model\\.{RIGHT_LAYER[class_name]}", choice.name), choice.name
    photo = Image.fromarray((np.random.RandomState(0).rand(72, 80, 3) * 255).astype(np.uint8))
    results = introspect.cam(loaded, photo, "gradcam", topk=2)
    x = prepare_inputs(photo, loaded).tensor
    outputs = []
    handle = resolve_layer(loaded.model, choice.name).register_forward_hook(lambda m, a, out: outputs.append(out))
    loaded.model(x)
    handle.remove()
    if not isinstance(outputs[0], torch.Tensor):  # BEiT's layers in transformers 4.x return a tuple
        pytest.skip("pytorch-grad-cam cannot take the gradient of a layer that returns a tuple")

    def reshape(t: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's ViT / Swin reshapes, from the layer's facts
        if choice.layout == "tokens":
            (gh, gw), p = choice.grid, choice.prefix
            return t[:, p:, :].reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)
        return t.permute(0, 3, 1, 2) if choice.layout == "nhwc" else t

    with GradCAM(model=loaded.model, target_layers=[resolve_layer(loaded.model, choice.name)],
                 reshape_transform=reshape) as reference:
        for entry in results[0].maps:
            expected = reference(input_tensor=x, targets=[ClassifierOutputTarget(entry.class_index)])[0]
            assert np.abs(entry.heatmap - expected).max() < 1e-4, entry.class_name
