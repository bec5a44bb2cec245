"""The structure probe and the layer choices made from it (no timm or transformers needed)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import assert_untouched, model_state
from torch import nn

import introspect
from introspect.errors import LayerError, UnknownLayerError
from introspect.layers import LayerChoice, default_feature_layers, layer_table, pick_cam_layer, to_nchw
from introspect.probe import patch_gradients, probe


class TinyViT(nn.Module):
    """A ViT of a class no table knows: ``prefix`` learned tokens before a 4x4 grid of 8-pixel patches."""

    def __init__(self, prefix: int = 1, dim: int = 16, depth: int = 2, pool: str = "token") -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.prefix_tokens = nn.Parameter(torch.randn(1, prefix, dim) * 0.1) if prefix else None
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.ModuleList([layer] + [nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True,
                                                                          norm_first=True) for _ in range(depth - 1)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        if self.prefix_tokens is not None:
            x = torch.cat([self.prefix_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0] if self.pool == "token" else x.mean(dim=1))


class PrefixSoup(nn.Module):
    """A patch embedding followed by 20 extra tokens: more than any known prefix, so not a map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 8, stride=8)
        self.extra = nn.Parameter(torch.zeros(1, 20, 8))
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.mix(torch.cat([self.extra.expand(x.shape[0], -1, -1), x], dim=1))
        return self.head(x.mean(dim=1))


def test_probe_records_layouts_in_execution_order():
    model = torchvision.models.resnet18(num_classes=10).eval()
    found = probe(model, 64)
    assert found.mode == "meta"  # no arithmetic on the real weights
    layer4, fc = found.get("layer4"), found.get("fc")
    assert layer4.shape == (1, 512, 2, 2) and layer4.layout == "nchw" and layer4.grid == (2, 2)
    assert found.get("avgpool").layout == "other" and fc.shape == (1, 10)
    ends = [layer.end for layer in found.layers]
    assert ends == sorted(ends) and found.get("layer1").end < found.get("layer4").end < fc.end
    assert found.get("relu").calls == 1 and found.get("layer1.0.relu").calls == 2
    assert probe(model, 64) is found  # cached: one probe per model and size


def test_probe_classifies_nhwc_and_tokens():
    swin = torchvision.models.swin_t(num_classes=3).eval()
    found = probe(swin, 224)
    assert found.get("norm").layout == "nhwc" and found.get("norm").grid == (7, 7)
    assert found.get("features.0").layout == "nhwc" and found.get("features.0").grid == (56, 56)
    vit = TinyViT(prefix=3)
    found = probe(vit, 32)
    block = found.get("blocks.1")
    assert (block.layout, block.prefix, block.grid) == ("tokens", 3, (4, 4))
    assert found.get("head").layout == "other"


def test_probe_leaves_the_model_untouched():
    model = TinyViT(prefix=1).train()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    calls = []
    model.norm.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    before = model_state(model)
    probe(model, 32)
    patch_gradients(model, ["blocks.1", "norm"], 32)
    pick_cam_layer(model, input_size=32)
    assert_untouched(before, model)
    assert calls == []  # the caller's own hooks do not see the probe's passes
    model(torch.randn(1, 3, 32, 32))
    assert calls == [(1, 17, 16)]


@pytest.mark.parametrize("name, expected", [
    ("resnet18", "layer4"), ("vgg11", "features.20"), ("densenet121", "features.norm5"),
    ("mobilenet_v3_small", "features.12"), ("efficientnet_b0", "features.8"), ("convnext_tiny", "features.7"),
    ("regnet_y_400mf", "trunk_output"), ("shufflenet_v2_x0_5", "conv5"), ("swin_t", "norm"),
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1"),
])
def test_torchvision_families_keep_their_layers(name, expected):
    try:
        with torch.device("meta"):  # built without weights: the probe runs on the meta device as it is
            model = torchvision.models.get_model(name, weights=None).eval()
    except NotImplementedError:  # RegNet's builder computes with tensors
        model = torchvision.models.get_model(name, weights=None).eval()
    choice = pick_cam_layer(model)
    assert choice.name == expected
    if name == "swin_t":
        assert (choice.layout, choice.grid) == ("nhwc", (7, 7))
    if name == "vit_b_16":
        assert (choice.layout, choice.prefix, choice.grid) == ("tokens", 1, (14, 14))


def test_a_foreign_class_named_like_torchvision_gets_layers_from_structure():
    """A class called ResNet that is not torchvision's is not looked up in the table; the structure finds
    the same layers the table gives torchvision's ResNet."""
    from torchvision.models.resnet import BasicBlock
    from torchvision.models.resnet import ResNet as TorchvisionResNet

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            source = TorchvisionResNet(BasicBlock, [1, 1, 1, 1], num_classes=4)
            for name, child in source.named_children():
                setattr(self, name, child)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    model = ResNet().eval()
    assert pick_cam_layer(model, input_size=64) == LayerChoice("layer4", grid=(2, 2))
    assert [c.name for c in default_feature_layers(model, input_size=64)] == \
        ["relu", "layer1", "layer2", "layer3", "layer4"]


def test_unknown_class_with_a_class_token_gets_the_last_blocks_input_norm():
    model = TinyViT(prefix=1)
    choice = pick_cam_layer(model, input_size=32)
    # the final norm's patch tokens never reach the head (it reads token 0): the last block's input is used
    assert choice == LayerChoice("blocks.1", layout="tokens", prefix=1, grid=(4, 4)) or \
        choice.name.startswith("blocks.1.")
    assert (choice.layout, choice.prefix, choice.grid) == ("tokens", 1, (4, 4))
    assert patch_gradients(model, ["norm", choice.name], 32) == {"norm": False, choice.name: True}


def test_unknown_class_with_average_pooling_gets_the_final_norm():
    choice = pick_cam_layer(TinyViT(prefix=0, pool="mean"), input_size=32)
    assert choice == LayerChoice("norm", layout="tokens", prefix=0, grid=(4, 4))


def test_cam_of_an_unknown_vit_with_registers_equals_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = TinyViT(prefix=5).eval()  # 1 class + 4 register tokens
    x = torch.randn(1, 3, 32, 32)
    choice = pick_cam_layer(model, input_size=32)
    assert choice.prefix == 5 and choice.grid == (4, 4)
    layer = dict(model.named_modules())[choice.name]

    def reshape(t):  # written out here, independent of to_nchw
        return t[:, 5:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    ours = introspect.cam(model, x, "gradcam", targets=[0, 3])
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as reference:
        for entry in ours[0].maps:
            expected = reference(input_tensor=x, targets=[ClassifierOutputTarget(entry.class_index)])[0]
            assert abs(entry.heatmap - expected).max() < 1e-4
    assert ours[0].layer == choice.name


def test_only_an_early_map_is_refused_not_guessed():
    with pytest.raises(UnknownLayerError, match="layer="):
        pick_cam_layer(PrefixSoup(), input_size=32)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(UnknownLayerError, match="layer="):
        pick_cam_layer(mlp, input_size=8)
    assert pick_cam_layer(PrefixSoup(), "stem", input_size=32) == LayerChoice("stem", grid=(4, 4))


def test_a_layer_asked_for_gets_its_probed_layout():
    swin = torchvision.models.swin_t(num_classes=3).eval()
    assert pick_cam_layer(swin, "features.5").layout == "nhwc"
    assert pick_cam_layer(swin, "features.5.1").grid == (14, 14)
    with pytest.raises(UnknownLayerError, match="closest"):
        pick_cam_layer(swin, "features.55")


def test_to_nchw_drops_the_prefix_and_folds_the_grid():
    n, prefix, gh, gw, c = 2, 5, 3, 4, 6
    grid = torch.arange(n * gh * gw * c, dtype=torch.float32).reshape(n, gh, gw, c)
    tokens = torch.cat([torch.full((n, prefix, c), -1.0), grid.reshape(n, gh * gw, c)], dim=1)
    choice = LayerChoice("x", layout="tokens", prefix=prefix, grid=(gh, gw))
    out = to_nchw(tokens, choice)
    assert out.shape == (n, c, gh, gw) and torch.equal(out, grid.permute(0, 3, 1, 2))
    # cls + distillation token, a square grid of a different size than the probe's
    square = torch.randn(1, 2 + 25, c)
    assert torch.equal(to_nchw(square, LayerChoice("x", layout="tokens", prefix=2, grid=(4, 4))),
                       square[:, 2:].reshape(1, 5, 5, c).permute(0, 3, 1, 2))
    nhwc = torch.randn(1, 7, 7, 3)
    assert torch.equal(to_nchw(nhwc, LayerChoice("x", layout="nhwc")), nhwc.permute(0, 3, 1, 2))
    with pytest.raises(LayerError, match="prefix"):
        to_nchw(torch.randn(1, 30, c), LayerChoice("x", layout="tokens", prefix=1, grid=(4, 4)))


def test_default_feature_layers_are_the_stages_of_an_unknown_cnn():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
            self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, 2 if i else 1, 1), nn.ReLU())
                                        for i in range(4)])
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

        def forward(self, x):
            return self.head(self.body(self.stem(x)))

    names = [c.name for c in default_feature_layers(Net(), input_size=64)]
    assert names == ["body.0", "body.1", "body.2", "body.3"]  # 32, 16, 8 and 4 pixels


def test_layer_table_shows_shapes_and_marks_the_picks():
    rows = {row.name: row for row in layer_table(torchvision.models.resnet18().eval(), 224)}
    assert rows["layer4"].cam and rows["layer4"].features and rows["layer4"].shape == (1, 512, 7, 7)
    assert rows["layer4"].output == "(1, 512, 7, 7) nchw"
    assert rows["layer1"].features and not rows["layer1"].cam and not rows["fc"].features
    assert rows["fc"].output == "(1, 1000)"


def test_list_layers_cli_prints_shapes(capsys):
    from introspect.cli import main

    assert main(["resnet18", "--weights", "none", "--list-layers"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "(1, 512, 7, 7) nchw [features] [cam]" in lines["layer4"]
    assert "(1, 64, 56, 56) nchw [features]" in lines["layer1"]
