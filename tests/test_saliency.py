"""Saliency (vanilla gradient, guided backprop, guided Grad-CAM) against hand-computed gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import assert_untouched, model_state
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import introspect
from introspect.analyzers.saliency import saliency_from_pass
from introspect.errors import UnknownMethodError
from introspect.inputs import prepare_inputs
from introspect.layers import LayerChoice


class _GuidedReLU(torch.autograd.Function):
    """Reference guided ReLU: forward max(x, 0); backward passes only positive gradients where x > 0."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


def relu_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def guided_reference(net: nn.Sequential, x: torch.Tensor, cls: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    h = x
    for layer in net:
        h = _GuidedReLU.apply(h) if isinstance(layer, nn.ReLU) else layer(h)
    (grad,) = torch.autograd.grad(h[:, cls].sum(), x)
    return grad


def test_vanilla_equals_autograd_input_gradient(tiny_cnn):
    model = tiny_cnn("small")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = model_state(model)
    results = introspect.saliency(model, x, "vanilla")
    assert_untouched(before, model)
    assert [r.image_name for r in results] == ["image0", "image1"]
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    top = logits.argmax(dim=1)
    (expected,) = torch.autograd.grad(logits[torch.arange(2), top].sum(), xr)
    for n, result in enumerate(results):
        (entry,) = result.maps
        assert entry.class_index == int(top[n])
        np.testing.assert_allclose(entry.gradient, expected[n].numpy(), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(entry.saliency, expected[n].abs().amax(dim=0).numpy(), rtol=1e-4, atol=1e-7)
        assert entry.image.dtype == np.uint8 and entry.image.shape == (32, 32, 3)
        assert result.image.dtype == np.uint8 and result.image.ndim == 3
    assert all(p.grad is None for p in model.parameters())


def test_guided_backprop_equals_hand_computed_guided_gradient():
    net = relu_net()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    before = model_state(net)
    (result,) = introspect.saliency(net, x, "guided", targets=[2])
    assert_untouched(before, net)
    assert all(m.inplace for m in net if isinstance(m, nn.ReLU))  # switched off only for the scope
    expected = guided_reference(net, x, 2)[0]
    vanilla = torch.autograd.functional.vjp(lambda t: net(t)[:, 2].sum(), x)[1][0]
    assert not torch.allclose(expected, vanilla)  # the guided rule makes a difference here
    entry = result.maps[0]
    assert entry.class_index == 2
    np.testing.assert_allclose(entry.gradient, expected.numpy(), rtol=1e-4, atol=1e-7)
    assert (entry.gradient != 0).any()


def test_guided_gradcam_is_guided_times_gradcam_map(tiny_cnn):
    model = tiny_cnn("small")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = model_state(model)
    guided, combined = introspect.saliency(model, x, "guided,guidedgradcam", targets=[4, 7])
    assert_untouched(before, model)
    (cam,) = introspect.cam(model, x, "gradcam", targets=[4, 7])
    for j in range(2):
        assert combined.maps[j].class_index == cam.maps[j].class_index == [4, 7][j]
        expected = guided.maps[j].gradient * cam.maps[j].heatmap[None]
        np.testing.assert_allclose(combined.maps[j].gradient, expected, rtol=1e-4, atol=1e-6)


def test_saliency_from_pass_on_inplace_relu_resnet(tiny_cnn):
    model = tiny_cnn()  # torchvision ResNet: every ReLU is inplace=True
    batch = prepare_inputs(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)))  # layer4: 2x2
    before = model_state(model)
    results = saliency_from_pass(model, batch, ["vanilla", "guided", "guidedgradcam"],
                                  torch.tensor([[1], [2]]), [f"c{i}" for i in range(10)], LayerChoice("layer4"))
    assert_untouched(before, model)
    assert [(r.method, r.image_name) for r in results] == [
        (m, n) for m in ("vanilla", "guided", "guidedgradcam") for n in ("image0", "image1")]
    assert [r.maps[0].class_name for r in results[:2]] == ["c1", "c2"]
    assert all(np.isfinite(r.maps[0].gradient).all() and (r.maps[0].gradient != 0).any() for r in results)


def test_every_class_of_every_image_equals_autograd_taken_one_class_at_a_time():
    net = relu_net()  # in-place ReLUs; "2" is the conv an in-place ReLU then rewrites
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    classes = torch.tensor([[0, 2, 4], [3, 1, 2]])
    before = model_state(net)
    results = saliency_from_pass(net, prepare_inputs(x), ["vanilla", "guided", "guidedgradcam"], classes,
                                 [f"c{i}" for i in range(5)], LayerChoice("2"))
    assert_untouched(before, net)
    assert all(m.inplace for m in net if isinstance(m, nn.ReLU))
    plain = copy.deepcopy(net)
    for m in plain:
        if isinstance(m, nn.ReLU):
            m.inplace = False
    by_method = {(r.method, r.image_name): r for r in results}
    for n in range(2):
        for j in range(3):
            c = int(classes[n, j])
            xr = x[n:n + 1].clone().requires_grad_(True)
            activation = plain[:3](xr)
            score = plain[3:](activation)[0, c]
            d_input, d_activation = torch.autograd.grad(score, [xr, activation])
            weights = d_activation.mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((weights * activation).sum(dim=1))[0]
            for _ in range(2):  # pytorch-grad-cam scales once, resizes (here to the same size), scales again
                cam = cam - cam.min()
                cam = cam / (1e-7 + cam.max())
            post_relu = torch.relu((weights * torch.relu(activation)).sum(dim=1))[0]
            assert not torch.allclose(post_relu / post_relu.max(), cam, atol=1e-3)  # the capture must be pre-ReLU
            guided = guided_reference(net, x[n:n + 1], c)[0]
            expected = {"vanilla": d_input[0], "guided": guided, "guidedgradcam": guided * cam.detach()}
            for method, value in expected.items():
                entry = by_method[method, f"image{n}"].maps[j]
                assert entry.class_index == c
                np.testing.assert_allclose(entry.gradient, value.detach().numpy(), rtol=1e-5, atol=1e-9)


def test_guided_equals_pytorch_grad_cams_guided_backprop():
    from pytorch_grad_cam import GuidedBackpropReLUModel

    net = relu_net()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    (result,) = introspect.saliency(net, x, "guided", targets=[1, 3])
    for j, c in enumerate([1, 3]):
        expected = GuidedBackpropReLUModel(copy.deepcopy(net))(x.clone(), target_category=c)  # (H, W, 3)
        np.testing.assert_allclose(result.maps[j].gradient.transpose(1, 2, 0), expected, rtol=1e-5, atol=1e-9)
        assert (expected != 0).any()


def test_unknown_saliency_method_lists_the_valid_ones(tiny_cnn):
    with pytest.raises(UnknownMethodError, match="vanilla, guided, guidedgradcam"):
        introspect.saliency(tiny_cnn("small"), torch.zeros(1, 3, 32, 32), "smoothgrad")


def test_report_writes_saliency_tags(tiny_cnn, sample_cat, tmp_path):
    model = tiny_cnn("small")
    loaded = introspect.load_model(model, input_size=64)
    before = model_state(model)
    summary = introspect.report(loaded, [sample_cat], logdir=tmp_path, run_name="sal", sections="saliency")
    assert_untouched(before, model)
    acc = EventAccumulator(str(summary.run_dir), size_guidance={"images": 0})
    acc.Reload()
    tags = set(acc.Tags()["images"])
    assert {"saliency/vanilla/cat", "saliency/guided/cat", "saliency/guidedgradcam/cat"} <= tags
    assert not any(t.startswith("filters/") or t.startswith("cam/") for t in tags)
    assert summary.tags["saliency"] == 3
