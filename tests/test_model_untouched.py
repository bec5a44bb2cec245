"""Every public analyzer, and the whole report, hands the caller's model back exactly as given.

Each model starts in a MIXED state (some modules in train mode, some in eval mode, one
frozen parameter, one parameter holding a gradient of known values, the rest without one,
and a hook of the caller's own) and must come back identical: no hooks added or removed,
the same training flag per module, the same requires_grad, the same .grad objects with the
same values, the same device and dtype, parameters and buffers bit for bit. The same holds
when the call fails midway (an error or Ctrl-C inside the model, a failing reporter).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import assert_untouched, hook_total, model_state
from torch import nn

import introspect

# Model name -> (input size load_model takes, size of the tensors fed to the analyzers): as small as
# each model allows (torchvision's min_size; ViT takes only 224; Swin runs on 64 but load_model wants 224).
FAMILIES = {
    "resnet18": (32, 32),
    "vgg11": (32, 32),
    "densenet121": (32, 32),
    "mobilenet_v2": (32, 32),
    "mobilenet_v3_small": (32, 32),
    "efficientnet_b0": (32, 32),
    "convnext_tiny": (32, 32),
    "regnet_x_400mf": (32, 32),
    "squeezenet1_1": (32, 32),
    "shufflenet_v2_x0_5": (32, 32),
    "googlenet": (32, 32),
    "inception_v3": (75, 75),
    "vit_b_16": (224, 224),
    "swin_t": (224, 64),
}

GRADIENT_METHODS = "gradcam,gradcam++"  # computed from introspect's own forward pass
DELEGATED_METHOD = "finercam"  # pytorch-grad-cam: a full loss.backward() and model.zero_grad()


# -- the mixed state ---------------------------------------------------------------


def _noop_hook(module: nn.Module, args: tuple, output: object) -> None:
    return None


def set_mixed_state(model: nn.Module) -> torch.Tensor:
    """Half the modules in train mode, the first parameter frozen, the last one with a known .grad,
    and a forward hook of the caller's own on the root; returns that .grad tensor."""
    for index, module in enumerate(model.modules()):
        module.training = index % 2 == 0
    for module in model.modules():
        for key in [k for k, hook in module._forward_hooks.items() if hook is _noop_hook]:
            del module._forward_hooks[key]
    model.register_forward_hook(_noop_hook)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    params[0].requires_grad_(False)
    last = params[-1]
    last.grad = torch.linspace(-1.0, 1.0, last.numel(), dtype=last.dtype).reshape(last.shape)
    return last.grad


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Set the mixed state, run the block, and assert the model is as it was (also when the block raises)."""
    grad = set_mixed_state(model)
    before = model_state(model)
    try:
        yield
    finally:
        assert_untouched(before, model)
        assert hook_total(model) == 1  # the caller's own hook, nothing else
        assert list(model.parameters())[-1].grad is grad
        assert all(p.grad is None for p in list(model.parameters())[:-1])


@contextmanager
def raising_forward(module: nn.Module, error: BaseException, after: int = 0) -> Iterator[dict]:
    """Make ``module`` raise ``error`` on every call after the first ``after`` calls."""
    original = module.forward
    calls = {"count": 0}

    def forward(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] > after:
            raise error
        return original(*args, **kwargs)

    module.forward = forward
    try:
        yield calls
    finally:
        del module.forward  # the class's forward again, nothing left in the instance's __dict__


# -- models, shared per family -------------------------------------------------------


@pytest.fixture(scope="module")
def loaded_models() -> Callable[[str], introspect.LoadedModel]:
    """Build each family once (random weights) for every test of this module."""
    cache: dict[str, introspect.LoadedModel] = {}

    def get(name: str) -> introspect.LoadedModel:
        if name not in cache:
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[name] = introspect.load_model(name, weights="none", input_size=FAMILIES[name][0])
        return cache[name]

    return get


def _inputs(name: str) -> torch.Tensor:
    size = FAMILIES[name][1]
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


# The report calls summarize, kernel_grids and parameter_summary itself (and the same one-pass
# engine as feature_maps, predict and cam); the standalone calls of those three run on the small
# model below, so each family pays for its layer table, graph trace and histograms once.
ANALYZERS: dict[str, Callable] = {
    "feature_maps": lambda loaded, x, tmp_path, cat: introspect.feature_maps(loaded, x),
    "predict": lambda loaded, x, tmp_path, cat: introspect.predict(loaded, x),
    "cam": lambda loaded, x, tmp_path, cat: introspect.cam(loaded, x, f"{GRADIENT_METHODS},{DELEGATED_METHOD}",
                                                           topk=1),
    "report": lambda loaded, x, tmp_path, cat: introspect.report(loaded, [cat], logdir=tmp_path,
                                                                 cam=introspect.CamOptions(methods="gradcam,eigencam")),
}


@pytest.mark.parametrize("analyzer", list(ANALYZERS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_analyzer_leaves_model_untouched(family, analyzer, loaded_models, tmp_path, sample_cat):
    loaded = loaded_models(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with untouched(loaded.model):
            result = ANALYZERS[analyzer](loaded, _inputs(family), tmp_path, sample_cat)
    if analyzer == "report":
        assert (tmp_path / result.run_dir.name).is_dir()
        assert {"structure", "graph", "kernels", "parameters", "features", "cam"} <= set(result.tags)
    elif analyzer == "cam":
        assert [r.method for r in result] == ["gradcam", "gradcam++", DELEGATED_METHOD]
    else:
        assert len(result) >= 1


@pytest.fixture
def small_model(tiny_cnn) -> nn.Module:
    return tiny_cnn("small")


@pytest.fixture
def tiny_resnet(tiny_cnn) -> nn.Module:
    return tiny_cnn("resnet")


STANDALONE = {
    "summarize": lambda model, x: introspect.summarize(model, input_size=64),
    "kernel_grids": lambda model, x: introspect.kernel_grids(model),
    "parameter_summary": lambda model, x: introspect.parameter_summary(model),
    "feature_maps": lambda model, x: introspect.feature_maps(model, x),
    "predict": lambda model, x: introspect.predict(model, x),
    "cam": lambda model, x: introspect.cam(model, x, "gradcam,hirescam,eigencam,fem", topk=2),
}


@pytest.mark.parametrize("analyzer", list(STANDALONE))
def test_standalone_analyzer_leaves_tiny_resnet_untouched(analyzer, tiny_resnet):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with untouched(tiny_resnet):
            result = STANDALONE[analyzer](tiny_resnet, x)
    assert result


# -- the many-pass methods, on a small model --------------------------------------------


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "fullgrad", "shapleycam", "randomcam", "kpcacam"])
def test_delegated_methods_leave_small_model_untouched(method, small_model):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with untouched(small_model):
            results = introspect.cam(small_model, x, method, topk=2)
    assert len(results) == 2 and all(len(r.maps) == 2 for r in results)


# -- failures midway ---------------------------------------------------------------------


def test_error_inside_the_model_during_gradient_cam(small_model):
    x = torch.randn(2, 3, 64, 64)
    grad_enabled = torch.is_grad_enabled()
    with untouched(small_model), raising_forward(small_model.fc, RuntimeError("boom in fc")):
        with pytest.raises(RuntimeError, match="boom in fc"):
            introspect.cam(small_model, x, "gradcam")
    assert torch.is_grad_enabled() == grad_enabled


def test_ctrl_c_inside_the_model_during_feature_maps(small_model):
    with untouched(small_model), raising_forward(small_model.features[3], KeyboardInterrupt()):
        with pytest.raises(KeyboardInterrupt):
            introspect.feature_maps(small_model, torch.randn(1, 3, 64, 64))


def test_error_after_the_forward_pass(small_model, monkeypatch):
    import introspect.engine.cam as cam_module

    def failing(*args, **kwargs):
        raise ValueError("normalisation failed")

    monkeypatch.setattr(cam_module, "normalize_maps", failing)
    with untouched(small_model):
        with pytest.raises(ValueError, match="normalisation failed"):
            introspect.cam(small_model, torch.randn(1, 3, 64, 64), "layercam")


@pytest.mark.parametrize("after", [2, 3])
def test_error_inside_ablation_cam_passes(small_model, after):
    """Ablation-CAM swaps the target layer for an ablation layer and hooks it: both must be undone
    when the model raises (after=2: in its first own forward; after=3: during the ablation passes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with untouched(small_model), raising_forward(small_model.fc, KeyboardInterrupt(), after=after) as calls:
            with pytest.raises(KeyboardInterrupt):
                introspect.cam(small_model, torch.randn(1, 3, 64, 64), "ablationcam", topk=1)
    assert calls["count"] == after + 1
    assert type(small_model.features).__name__ == "Sequential"


def test_error_inside_score_cam_passes(small_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with untouched(small_model), raising_forward(small_model.fc, RuntimeError("boom"), after=2):
            with pytest.raises(RuntimeError, match="boom"):
                introspect.cam(small_model, torch.randn(1, 3, 64, 64), "scorecam", topk=1)


def test_error_inside_the_layer_table(small_model):
    with untouched(small_model), raising_forward(small_model.features[0], RuntimeError("boom in conv")):
        with pytest.raises(RuntimeError):  # torchinfo wraps the error: "Failed to run torchinfo ..."
            introspect.summarize(small_model, input_size=64)


@pytest.mark.parametrize("section", ["cams", "features", "graph"])
def test_failing_reporter_leaves_model_untouched(section, loaded_models, tmp_path, sample_cat, monkeypatch):
    from introspect.tensorboard import Reporter

    def failing(self, *args, **kwargs):
        raise OSError(f"disk full while writing {section}")

    monkeypatch.setattr(Reporter, section, failing)
    loaded = loaded_models("resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with untouched(loaded.model):
            with pytest.raises(OSError, match="disk full"):
                introspect.report(loaded, [sample_cat], logdir=tmp_path, cam=introspect.CamOptions(methods="gradcam,eigencam"))


def test_error_inside_the_model_during_report(loaded_models, tmp_path, sample_cat):
    """layer3 runs for the layer table, the graph trace, then the image pass: that third call raises."""
    loaded = loaded_models("resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with untouched(loaded.model), raising_forward(loaded.model.layer3, RuntimeError("boom in layer3"), after=2):
            with pytest.raises(Exception, match="boom in layer3"):
                introspect.report(loaded, [sample_cat], logdir=tmp_path, cam=introspect.CamOptions(methods="gradcam"))
