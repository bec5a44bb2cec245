"""Shared fixtures and helpers for the test suite.

Fixtures: ``set_offline`` (autouse: INTROSPECT_OFFLINE=1), ``tiny_cnn`` (a factory of
small seeded CNNs), ``sample_cat`` / ``sample_coffee`` (photo paths), ``shared_weights``
(the ImageNet mobilenet_v2 weights in ../shared, or a skip).

Helpers (import them with ``from conftest import model_state, assert_untouched``):
``model_state(model)`` snapshots everything an analyzer must leave as it found it,
``assert_untouched(before, model)`` fails with a list of what changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "sample_images"
SHARED_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"


# -- environment and files ----------------------------------------------------------


@pytest.fixture(autouse=True)
def set_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never try to download weights in a test."""
    monkeypatch.setenv("INTROSPECT_OFFLINE", "1")


@pytest.fixture(scope="session")
def sample_cat() -> Path:
    """sample_images/cat.png (skimage's 'chelsea')."""
    return SAMPLE_IMAGES / "cat.png"


@pytest.fixture(scope="session")
def sample_coffee() -> Path:
    """sample_images/coffee.png (skimage's 'coffee')."""
    return SAMPLE_IMAGES / "coffee.png"


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """The real ImageNet mobilenet_v2 state_dict in ../shared; the test is skipped where it is absent."""
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"shared weights not present at {SHARED_WEIGHTS}")
    return SHARED_WEIGHTS


# -- tiny models --------------------------------------------------------------------


class SmallConvNet(nn.Module):
    """A small CNN whose CAM target layer (``features``, the last child with a conv) has ``width`` channels."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics and affine terms, so eval-mode BN is not the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)


@pytest.fixture(scope="session")
def tiny_cnn() -> Callable[..., nn.Module]:
    """Factory of small seeded CNNs in eval mode, a fresh instance per call.

    ``tiny_cnn()`` is a torchvision ``ResNet(BasicBlock, [1, 1, 1, 1])`` with 10 classes
    (CAM target ``layer4``, 512 channels); ``tiny_cnn("small")`` is :class:`SmallConvNet`
    (target ``features``, 16 channels: cheap for Score-CAM / Ablation-CAM).
    """
    from torchvision.models.resnet import BasicBlock, ResNet

    def make(kind: str = "resnet", num_classes: int = 10, seed: int = 0, width: int = 16) -> nn.Module:
        torch.manual_seed(seed)
        if kind == "resnet":
            model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
        elif kind == "small":
            model = SmallConvNet(num_classes=num_classes, width=width)
        else:
            raise ValueError(f"unknown tiny model kind {kind!r}: resnet or small")
        _randomise_batchnorm(model, torch.Generator().manual_seed(seed + 1))
        return model.eval()

    return make


# -- the model state an analyzer must leave as it found it --------------------------

_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of the tensor's bytes (bit-identical comparison: NaN == NaN, -0.0 != 0.0)."""
    data = tensor.detach().cpu().reshape(-1).clone()
    return data.view(torch.uint8) if data.numel() else data


def _hook_counts(obj: Any) -> dict[str, int]:
    """Length of every ``*hooks*`` dict on a module (forward, pre, backward, full backward, state-dict ...)."""
    counts = {}
    for key, value in vars(obj).items():
        if "hook" in key and isinstance(value, dict):
            counts[key] = len(value)
    return counts


def _tensor_hooks(tensor: torch.Tensor) -> dict[str, int]:
    counts = {}
    for key in ("_backward_hooks", "_post_accumulate_grad_hooks"):
        value = getattr(tensor, key, None)
        counts[key] = 0 if value is None else len(value)
    return counts


@dataclass
class ModelState:
    """Everything about a model that an analyzer must restore (see :func:`model_state`)."""

    modules: dict[str, dict[str, Any]]
    parameters: dict[str, dict[str, Any]]
    buffers: dict[str, dict[str, Any]]
    global_state: dict[str, Any]


def model_state(model: nn.Module) -> ModelState:
    """Snapshot: per module its identity, type, children, training flag, hook counts and attribute names;
    per parameter its identity, requires_grad, device, dtype, bits, and ``.grad`` (identity, device, dtype,
    bits); per buffer its identity, device, dtype and bits; global module hooks and grad mode.
    """
    modules, parameters, buffers = {}, {}, {}
    for name, module in model.named_modules(remove_duplicate=False):
        key = name or "<root>"
        modules[key] = {
            "id": id(module),
            "type": type(module).__name__,
            "children": [(n, id(c)) for n, c in module._modules.items()],
            "training": module.training,
            "hooks": _hook_counts(module),
            "attributes": sorted(vars(module)),
        }
        for pname, p in module._parameters.items():
            entry: dict[str, Any] = {"id": None} if p is None else {
                "id": id(p),
                "requires_grad": p.requires_grad,
                "device": p.device,
                "dtype": p.dtype,
                "shape": tuple(p.shape),
                "bits": _bits(p),
                "tensor_hooks": _tensor_hooks(p),
                "grad_id": None if p.grad is None else id(p.grad),
                "grad": None if p.grad is None else (p.grad.device, p.grad.dtype, _bits(p.grad)),
            }
            parameters[f"{key}.{pname}"] = entry
        for bname, b in module._buffers.items():
            buffers[f"{key}.{bname}"] = {"id": None} if b is None else {
                "id": id(b), "device": b.device, "dtype": b.dtype, "shape": tuple(b.shape), "bits": _bits(b),
            }
    from torch.nn.modules import module as module_module

    global_state = {name: len(getattr(module_module, name)) for name in _GLOBAL_HOOK_DICTS
                    if isinstance(getattr(module_module, name, None), dict)}
    global_state["grad_enabled"] = torch.is_grad_enabled()
    global_state["inference_mode"] = torch.is_inference_mode_enabled()
    return ModelState(modules, parameters, buffers, global_state)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            torch.equal(a, b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def state_differences(before: ModelState, after: ModelState) -> list[str]:
    """Every way ``after`` differs from ``before``, one line each."""
    problems: list[str] = []
    for section in ("modules", "parameters", "buffers"):
        old, new = getattr(before, section), getattr(after, section)
        for key in old.keys() - new.keys():
            problems.append(f"{section}: {key} disappeared")
        for key in new.keys() - old.keys():
            problems.append(f"{section}: {key} appeared")
        for key in old.keys() & new.keys():
            for field_name, value in old[key].items():
                after_value = new[key].get(field_name)
                if not _same(value, after_value):
                    if field_name in {"bits", "grad"}:
                        shown = "values differ"
                    elif isinstance(value, dict) and isinstance(after_value, dict):
                        shown = ", ".join(f"{k}: {value.get(k)} -> {after_value.get(k)}"
                                          for k in sorted(value.keys() | after_value.keys())
                                          if value.get(k) != after_value.get(k))
                    else:
                        shown = f"{value!r} -> {after_value!r}"
                    problems.append(f"{section}: {key} {field_name}: {shown}")
    for key, value in before.global_state.items():
        if after.global_state.get(key) != value:
            problems.append(f"global: {key}: {value!r} -> {after.global_state.get(key)!r}")
    return sorted(problems)


def assert_untouched(before: ModelState, model: nn.Module) -> None:
    """Fail, listing what changed, unless ``model`` is exactly as ``before`` recorded it."""
    problems = state_differences(before, model_state(model))
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        pytest.fail(f"the model was changed ({len(problems)} differences):\n  {shown}{more}")


MODULE_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def hook_total(model: nn.Module) -> int:
    """Number of forward, forward-pre, backward (incl. full backward) and backward-pre hooks on every module."""
    return sum(len(getattr(m, name, None) or {}) for m in model.modules() for name in MODULE_HOOK_DICTS)


@pytest.fixture(scope="session")
def trained_synthetic():
    """The synthetic task's reference model (eval mode) and its 200 held-out samples, trained once per run."""
    from synthetic_reference import reference_model

    return reference_model()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``introspect.cli.main(argv)`` in process, stdout and stderr captured: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from introspect import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


# -- the dataset audit: the synthetic task written to disk ----------------------------

def synthetic_task():
    """The synthetic task's module (the one import of it for the audit tests)."""
    from introspect.testing import synthetic

    return synthetic


def synthetic_loaded(model: nn.Module):
    """A LoadedModel for the synthetic task's model: its 64 px inputs, its normalisation, its class names."""
    from torchvision.transforms._presets import ImageClassification

    from introspect.models import LoadedModel

    task = synthetic_task()
    size = 64
    transform = ImageClassification(crop_size=size, resize_size=size, mean=task.MEAN, std=task.STD)
    device = next(model.parameters()).device
    return LoadedModel(model=model, name="synthetic", weights="trained", weights_source="tests", transform=transform,
                       categories=tuple(task.CLASS_NAMES), input_size=size, device=device)


def write_image_folder(dataset, root, boxes: bool = True) -> list[str]:
    """``root/<class>/<i>.png`` for each image of a SyntheticDataset, and ``root.parent/boxes.json`` (COCO).

    Returns the files relative to ``root`` in dataset order.
    """
    import json
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    files = []
    images, annotations = [], []
    pixels = (dataset.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    names = dataset.class_names
    for i, (photo, label, box) in enumerate(zip(pixels, dataset.labels.tolist(), dataset.boxes.tolist())):
        relative = f"{names[label]}/{i:05d}.png"
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(root / relative)
        files.append(relative)
        images.append({"id": i, "file_name": relative, "width": photo.shape[1], "height": photo.shape[0]})
        x0, y0, x1, y1 = box
        annotations.append({"id": i, "image_id": i, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0]})
    if boxes:
        coco = {"images": images, "annotations": annotations,
                "categories": [{"id": i, "name": n} for i, n in enumerate(names)]}
        (root.parent / "boxes.json").write_text(json.dumps(coco))
    return files


# -- reading event files back -------------------------------------------------------------


def load_events(run_dir: Path) -> Any:
    """Every summary of a run, nothing sampled away."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    keep_all = {"images": 0, "histograms": 0, "tensors": 0, "scalars": 0, "compressedHistograms": 0, "audio": 0}
    acc = EventAccumulator(str(run_dir), size_guidance=keep_all)
    acc.Reload()
    return acc


def text(acc, tag: str) -> str:
    """The first text summary of ``tag``."""
    return acc.Tensors(tag)[0].tensor_proto.string_val[0].decode()


def image(acc, tag: str) -> np.ndarray:
    """The first image of ``tag`` as RGB uint8."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(acc.Images(tag)[0].encoded_image_string)) as img:
        return np.asarray(img.convert("RGB"))
