"""timm and Hugging Face models: the CAM layer found from their structure, maps equal to pytorch-grad-cam's,
and loading by ``timm:NAME`` / ``hf:PATH`` with the models' own class names and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import introspect
from introspect.errors import UnknownModelError
from introspect.inputs import prepare_inputs
from introspect.layers import pick_cam_layer, resolve_layer

timm = pytest.importorskip("timm")


def _timm(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _grid_tokens(prefix: int, grid: tuple[int, int]):
    """pytorch-grad-cam's reshape for ViTs, written out from the model's own facts."""
    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:, :].reshape(t.shape[0], grid[0], grid[1], t.shape[2]).permute(0, 3, 1, 2)
    return reshape


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def _vit_facts(model) -> tuple[int, tuple[int, int]]:
    return model.num_prefix_tokens, tuple(model.patch_embed.grid_size)


# name, create_model kwargs, input side, expected layer (from the model), pytorch-grad-cam reshape
CASES = {
    "resnet18": ({}, 64, lambda m: "layer4", lambda m: None),
    "convnext_atto": ({}, 64, lambda m: f"stages.{len(m.stages) - 1}", lambda m: None),
    "efficientnet_b0": ({}, 64, lambda m: "bn2", lambda m: None),  # conv_head + bn2: the last map before pooling
    "regnety_002": ({}, 64, lambda m: "s4", lambda m: None),
    "mobilevit_xxs": ({}, 64, lambda m: "final_conv", lambda m: None),
    "swin_tiny_patch4_window7_224": ({}, 224, lambda m: "norm", lambda m: _nhwc),
    # class-token models: the final norm's patch tokens never reach the head, so the last block's norm1
    "vit_tiny_patch16_224": ({"img_size": 64}, 64, lambda m: f"blocks.{len(m.blocks) - 1}.norm1",
                             lambda m: _grid_tokens(*_vit_facts(m))),
    "vit_tiny_reg4": ({"img_size": 64, "reg_tokens": 4}, 64, lambda m: f"blocks.{len(m.blocks) - 1}.norm1",
                      lambda m: _grid_tokens(*_vit_facts(m))),
    "deit_tiny_distilled_patch16_224": ({"img_size": 64}, 64, lambda m: f"blocks.{len(m.blocks) - 1}.norm1",
                                        lambda m: _grid_tokens(*_vit_facts(m))),
    # average-pooled patch tokens: the last block's output itself
    "eva02_tiny_patch14_224": ({"img_size": 56}, 56, lambda m: f"blocks.{len(m.blocks) - 1}",
                               lambda m: _grid_tokens(*_vit_facts(m))),
}


def _build(case: str) -> torch.nn.Module:
    kwargs = CASES[case][0]
    name = "vit_tiny_patch16_224" if case == "vit_tiny_reg4" else case
    return _timm(name, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_timm_cam_layer_is_the_last_spatial_stage_and_maps_equal_pytorch_grad_cam(case):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _, side, expected, reshape_of = CASES[case]
    model = _build(case)
    choice = pick_cam_layer(model, input_size=side)
    assert choice.name == expected(model) or (
        expected(model) == "blocks.11" and choice.name == "blocks"), choice
    if choice.layout == "tokens":
        prefix, grid = _vit_facts(model)
        assert (choice.prefix, choice.grid) == (prefix, grid)
        assert prefix == {"vit_tiny_reg4": 5, "deit_tiny_distilled_patch16_224": 2}.get(case, 1)

    torch.manual_seed(1)
    x = torch.randn(1, 3, side, side)
    results = introspect.cam(model, x, "gradcam", topk=2)
    assert results[0].layer == choice.name
    with GradCAM(model=model, target_layers=[resolve_layer(model, choice.name)],
                 reshape_transform=reshape_of(model)) as reference:
        for entry in results[0].maps:
            expected_map = reference(input_tensor=x, targets=[ClassifierOutputTarget(entry.class_index)])[0]
            assert np.abs(entry.heatmap - expected_map).max() < 1e-4
            assert entry.heatmap.max() > 0  # a map, not a blank


@pytest.mark.parametrize("name, kwargs, side", [
    ("convnext_tiny", {}, 64), ("efficientnet_b0", {}, 64), ("vit_small_patch16_224", {"img_size": 64}, 64),
    ("deit_tiny_patch16_224", {"img_size": 64}, 64), ("regnety_002", {}, 64),
    ("eva02_tiny_patch14_224", {"img_size": 56}, 56),
])
def test_the_models_that_failed_in_issue_9_now_explain_an_image(name, kwargs, side):
    model = _timm(name, **kwargs)
    results = introspect.cam(model, torch.rand(1, 3, side, side), "gradcam,layercam", topk=1)
    assert [r.method for r in results] == ["gradcam", "layercam"]
    assert all(not r.layer.startswith(("patch_embed", "stem")) for r in results)
    assert results[0].maps[0].heatmap.shape == (side, side) and results[0].maps[0].heatmap.max() > 0


def test_a_timm_module_wrapped_as_given_takes_its_own_size_and_class_names(sample_cat):
    loaded = introspect.load_model(_timm("deit_tiny_patch16_224", img_size=64))
    assert loaded.input_size == 64 and loaded.categories[281] == "tabby"
    result = introspect.cam(loaded, sample_cat, topk=1)[0]
    assert result.layer == "blocks.11.norm1" and result.maps[0].heatmap.shape == (64, 64)


def test_load_timm_by_name_random_weights_and_metadata(sample_cat):
    with pytest.warns(introspect.IntrospectWarning, match="RANDOM WEIGHTS"):
        loaded = introspect.load_model("timm:resnet18")  # offline, nothing cached: random, loudly
    assert loaded.weights == "random" and loaded.name == "timm:resnet18"
    assert loaded.categories[281] == "tabby" and len(loaded.categories) == 1000  # timm's ImageNet label info
    assert loaded.input_size == 224 and tuple(loaded.transform.mean) == (0.485, 0.456, 0.406)
    quiet = introspect.load_model("timm:mobilevit_xxs", weights="none")
    assert quiet.warnings == [] and quiet.input_size == 256
    assert tuple(quiet.transform.mean) == (0.0, 0.0, 0.0)  # mobilevit is trained on unnormalised pixels
    result = introspect.cam(quiet, sample_cat, topk=1)[0]
    assert result.layer == "final_conv" and result.maps[0].heatmap.shape == (256, 256)


def test_load_timm_errors():
    with pytest.raises(UnknownModelError, match="timm"):
        introspect.load_model("timm:resnet_nonexistent", weights="none")
    with pytest.raises(introspect.IntrospectError, match="pretrained"):
        introspect.load_model("timm:resnet18", weights="pretrained")  # offline and nothing cached


def test_load_timm_state_dict_file(tmp_path):
    model = _timm("resnet18", num_classes=1000)
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    loaded = introspect.load_model("timm:resnet18", weights=str(path))
    assert loaded.weights == "r18.pth"
    assert torch.equal(loaded.model.fc.weight, model.fc.weight)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=4,
                                    id2label={0: "apple", 1: "pear", 2: "plum", 3: "fig"},
                                    label2id={"apple": 0, "pear": 1, "plum": 2, "fig": 3})
    folder = tmp_path_factory.mktemp("hf_vit")
    transformers.ViTForImageClassification(config).eval().save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def test_hf_vit_from_a_folder_right_layer_and_maps_equal_pytorch_grad_cam(hf_folder):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    loaded = introspect.load_model(f"hf:{hf_folder}")
    assert loaded.name == f"hf:{hf_folder.name}"  # no "/": it names the run folder
    assert loaded.categories == ("apple", "pear", "plum", "fig")
    assert loaded.input_size == 32 and tuple(round(v, 3) for v in loaded.transform.mean) == (0.4, 0.5, 0.6)
    model = loaded.model
    blocks = [n for n, m in model.named_modules() if n.startswith("model.vit.") and n.split(".")[-1].isdigit()
              and hasattr(m, "layernorm_before")]  # model.vit.layers.N (transformers 5), .encoder.layer.N (4)
    choice = pick_cam_layer(model, input_size=32)
    # the last block's input norm (its output feeds the attention that the class token reads)
    assert choice.name == f"{blocks[-1]}.layernorm_before"
    assert (choice.layout, choice.prefix, choice.grid) == ("tokens", 1, (4, 4))

    image = Image.fromarray((np.random.RandomState(0).rand(48, 40, 3) * 255).astype(np.uint8))
    results = introspect.cam(loaded, image, "gradcam", topk=2)
    assert {m.class_name for m in results[0].maps} <= set(loaded.categories)
    x = prepare_inputs(image, loaded).tensor
    with GradCAM(model=model, target_layers=[resolve_layer(model, choice.name)],
                 reshape_transform=_grid_tokens(1, (4, 4))) as reference:
        for entry in results[0].maps:
            expected = reference(input_tensor=x, targets=[ClassifierOutputTarget(entry.class_index)])[0]
            assert np.abs(entry.heatmap - expected).max() < 1e-4
    random = introspect.load_model(f"hf:{hf_folder}", weights="none")
    assert random.weights == "random" and random.categories == loaded.categories


def test_a_timm_vit_built_on_the_meta_device_gets_its_layer_without_running():
    with torch.device("meta"):  # no weights: the probe runs on meta, the token check cannot, the structure decides
        model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).eval()
    choice = pick_cam_layer(model)
    assert (choice.name, choice.layout, choice.prefix, choice.grid) == ("blocks.11.norm1", "tokens", 2, (14, 14))


def test_crossvit_and_cait_layers_are_a_block_input_norm_not_a_projection_inside_attention():
    model = _timm("crossvit_tiny_240")
    choice = pick_cam_layer(model)
    # the last block that runs: the last fusion block (branch 1's class token attends to branch 0's 20 x 20
    # patches, 240 / 12); its pre-attention norm, not the value projection inside its cross-attention
    assert (choice.name, choice.layout, choice.prefix, choice.grid) == ("blocks.2.fusion.1.norm1", "tokens", 1,
                                                                        (20, 20))
    choice = pick_cam_layer(_timm("cait_xxs24_224"))  # a class-attention block is a block (it has norms), not attn
    assert (choice.name, choice.prefix, choice.grid) == ("blocks_token_only.1.norm1", 1, (14, 14))
