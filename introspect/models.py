"""The one place that loads models: by torchvision name, from a checkpoint, or as given.

Weights are resolved as ``load_model(weights=...)`` says:

- ``auto``: the model's DEFAULT weights if they are in the torch hub cache or can be
  downloaded; otherwise random initialisation, with a loud warning.
- ``DEFAULT`` or an enum name such as ``IMAGENET1K_V1``: those weights, or an error.
- ``none``: random initialisation.
- a path: a local state_dict or checkpoint, loaded with ``weights_only=True``.

A model whose weights come from a file is built on the meta device and the tensors
are assigned in place, so no time is spent on a random initialisation.
"""

from __future__ import annotations

import difflib
import os
import pickle
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .hooks import device_and_dtype
from .errors import ArgumentError, DeviceError, InputSizeError, IntrospectError, IntrospectWarning, UnknownModelError, WeightsError

__all__ = ["LoadedModel", "list_models", "load_model", "resolve_device", "load_checkpoint", "imagenet_transform",
           "unwrap", "device_and_dtype"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_ENV = "INTROSPECT_OFFLINE"


@dataclass
class LoadedModel:
    """A model ready to inspect, with what is needed to feed it and name its classes."""

    model: nn.Module
    name: str
    weights: str  # what was loaded: an enum name, a file, or "random"
    weights_source: str  # where it came from, in words
    transform: Any  # image -> normalised tensor (a torchvision ImageClassification preset)
    categories: tuple[str, ...]
    input_size: int
    device: torch.device
    warnings: list[str] = field(default_factory=list)
    task: str = "classification"  # a key of introspect.tasks.TASKS
    clip_length: int | None = None  # frames per clip, for video models

    @property
    def pretrained(self) -> bool:
        """Whether the weights are trained ones (not a random initialisation)."""
        return self.weights != "random"


def unwrap(model: nn.Module | LoadedModel) -> tuple[nn.Module, LoadedModel | None]:
    """The module to inspect, and the loaded-model record if one was given.

    Args:
        model: a module, or a :class:`LoadedModel`.

    Returns:
        ``(module, record)``; the record is None for a bare module.
    """
    if isinstance(model, LoadedModel):
        return model.model, model
    return model, None


def list_models() -> list[str]:
    """Names of every torchvision model, over all its modules (classification, detection, segmentation,
    video, optical flow, quantized); ``introspect.tasks.models_by_task()`` groups them.

    Returns:
        The names ``load_model`` accepts, sorted.
    """
    from .tasks import all_model_names

    return all_model_names()


def _check_model_name(name: str) -> None:
    names = list_models()
    if name in names:
        return
    close = difflib.get_close_matches(name.lower(), names, n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see introspect.list_models() for every name"
    raise UnknownModelError(f"unknown model {name!r}: {hint}", parameter="model")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to load a model onto.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a :class:`torch.device`, or None (the CPU).

    Returns:
        The device.

    Raises:
        DeviceError: the name is not a device, or CUDA is asked for without a GPU.
    """
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(f"device={str(device)!r} is not a device: use 'cpu', 'cuda' or 'cuda:N'",
                          parameter="device") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={str(device)!r} asked for, but CUDA is not available here: use device='cpu'",
                          parameter="device")
    return resolved


def imagenet_transform(crop_size: int = 224, resize_size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The standard ImageNet preprocessing (resize, centre crop, normalise) at a given size.

    Args:
        crop_size: side of the square the model sees.
        resize_size: shorter side after the resize (default ``crop_size * 256 / 224``).
        mean: per-channel mean of the normalisation.
        std: per-channel standard deviation of the normalisation.

    Returns:
        A torchvision ``ImageClassification`` transform (PIL image -> ``(3, H, W)`` tensor).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    resize = resize_size if resize_size is not None else round(crop_size * 256 / 224)
    return ImageClassification(crop_size=crop_size, resize_size=resize, mean=mean, std=std,
                               interpolation=InterpolationMode.BILINEAR)


def _is_state(obj: dict) -> bool:
    """A state_dict: tensors, plus the dtypes and packed (weight, bias) tuples of int8 quantized layers."""
    def entry(v: Any) -> bool:
        return isinstance(v, (torch.Tensor, torch.dtype)) or (
            isinstance(v, (tuple, list)) and all(isinstance(x, torch.Tensor) or x is None for x in v))
    return any(isinstance(v, torch.Tensor) for v in obj.values()) and all(entry(v) for v in obj.values())


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and _is_state(inner):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not _is_state(obj):
        raise WeightsError(f"{path} holds no state_dict (a dict of tensors, or a checkpoint with a 'state_dict' "
                           "entry): save one with torch.save(model.state_dict(), PATH)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from a file with ``weights_only=True`` (never unsafe unpickling).

    Args:
        path: a file written by ``torch.save`` (a state_dict, or a checkpoint dict holding one).

    Returns:
        The state_dict (a ``"module."`` prefix from DataParallel removed).

    Raises:
        WeightsError: the file is missing, unreadable, refused by the safe loader, or holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist: give a state_dict file, DEFAULT, an enum name, "
                           "auto or none")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "unsupported" in line.lower() or "global" in line.lower()),
                      reason[0] if reason else "")
        detail = detail.strip().removeprefix("WeightsUnpickler error:").split(". ")[0].strip().rstrip(".")
        raise WeightsError(f"{path} was refused by torch.load(weights_only=True), which introspect always uses "
                           f"for safety ({detail.strip()}); re-save it as a plain state_dict: "
                           "torch.save(model.state_dict(), PATH)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} is not a readable PyTorch file ({first}): give a state_dict saved with "
                           "torch.save") from None
    return _state_dict_from(obj, path)


def _describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and isinstance(v, torch.Tensor) and isinstance(state[k], torch.Tensor)
             and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or wrong):
        return None

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    if wrong:
        parts.append(f"wrong shapes (file vs model): {few(wrong)}")
    return f"{path} does not match {type(model).__name__}: " + "; ".join(parts)


def _build(name: str, num_classes: int | None = None, on_meta: bool = False, **extra: Any) -> nn.Module:
    import torchvision

    from .tasks import task_of

    kwargs: dict[str, Any] = {"weights": None, **task_of(name).build_kwargs, **extra}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name.removeprefix("quantized_") in {"googlenet", "inception_v3"}:
        kwargs["init_weights"] = False  # only picks the (fast) init scheme; weights=None gives no aux change
    if on_meta:
        with torch.device("meta"):
            return torchvision.models.get_model(name, **kwargs)
    with warnings.catch_warnings():  # int8 conversion of observers no random calibration input reached
        warnings.filterwarnings("ignore", message=".*must run observer before calling calculate_qparams.*")
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        return torchvision.models.get_model(name, **kwargs)


def _assign_state(name: str, state: dict[str, torch.Tensor], source: str, num_classes: int | None) -> nn.Module:
    """Build ``name`` without random init where possible and load ``state`` strictly."""
    try:
        model = _build(name, num_classes, on_meta=True)
    except Exception:  # some builders compute with tensors while constructing: build normally
        model = None
    if model is not None:
        problem = _describe_mismatch(model, state, source)
        if problem:
            raise WeightsError(problem + ": pick the matching model name or file")
        model.load_state_dict(state, strict=True, assign=True)
        still_meta = any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
        if not still_meta:
            return model
    model = _build(name, num_classes)
    problem = _describe_mismatch(model, state, source)
    if problem:
        raise WeightsError(problem + ": pick the matching model name or file")
    model.load_state_dict(state, strict=True)
    return model


def _num_classes_in(state: dict[str, torch.Tensor]) -> int | None:
    """The class count of a checkpoint's last 2-d weight (the classifier), if it has one."""
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return int(matrices[-1].shape[0]) if matrices else None


def _cached_file(weights: Any) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _fetch_state(weights: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Weights from the hub cache, or downloaded into it; raises OSError when neither works."""
    cached = _cached_file(weights)
    if cached.is_file():
        return load_checkpoint(cached), f"torch hub cache ({cached})"
    if os.environ.get(OFFLINE_ENV):
        raise OSError(f"not in the torch hub cache ({cached}) and {OFFLINE_ENV} is set")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, progress=False, map_location="cpu",
                                                   check_hash=False, weights_only=True)
    except Exception as exc:  # any network failure: the caller decides whether that is fatal
        raise OSError(f"not in the torch hub cache ({cached}) and the download failed "
                      f"({type(exc).__name__}: {exc})") from None
    finally:
        socket.setdefaulttimeout(previous)
    return state, f"downloaded into the torch hub cache ({cached})"


def _weights_enum(name: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def _categories(enum: Any, num_classes: int) -> tuple[str, ...]:
    if enum is not None:
        categories = enum.DEFAULT.meta.get("categories")
        if categories and len(categories) == num_classes:
            return tuple(categories)
    return tuple(f"class {i}" for i in range(num_classes))


def _output_classes(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) or
               (isinstance(getattr(m, "out_features", None), int) and callable(getattr(m, "weight", None)))]
    if linears:  # nn.Linear, or a quantized Linear (its weight() is a method)
        return linears[-1].out_features
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels if convs else None


def _check_input_size(name: str, model: nn.Module, size: int, enum: Any) -> None:
    image_size = getattr(model, "image_size", None)
    if type(model).__name__ == "VisionTransformer":  # the built model's own size (vit_h_14 random: 224, not 518)
        if size != image_size:
            raise InputSizeError(f"{name} takes only {image_size}x{image_size} inputs, not {size}: "
                                 f"use input_size={image_size}", parameter="input_size")
        return
    if enum is not None:
        min_size = enum.DEFAULT.meta.get("min_size", (1, 1))
        if size < max(min_size):
            raise InputSizeError(f"{name} needs inputs of at least {max(min_size)}x{max(min_size)} pixels, "
                                 f"not {size}: use input_size={max(min_size)} or more", parameter="input_size")


#: Frames per clip for video models (torchvision's video recipes train on 16-frame clips).
CLIP_LENGTH = 16
_FIXED_SIZE = {"mvit_v1_b": 224, "mvit_v2_s": 224}  # absolute / relative position tables sized for 224
FLOW_MIN_SIZE = 128


def _detection_size_kwargs(name: str, input_size: int | None) -> dict[str, Any]:
    """Builder arguments that make a detector resize its inputs to ``input_size`` (SSD's size is fixed)."""
    if input_size is None or name.startswith("ssd"):
        return {}
    return {"min_size": input_size, "max_size": max(input_size, round(input_size * 1333 / 800))}


def _task_input(name: str, task: str, net: nn.Module, meta_enum: Any, input_size: int | None):
    """(input size, per-image transform, clip length) of a detection, segmentation, video or flow model."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import VideoClassification

    if task == "detection":
        rcnn_transform = getattr(net, "transform", None)
        default = int(rcnn_transform.min_size[0]) if rcnn_transform is not None else 512
        size = input_size or default
        # Detectors normalise inside the model: they take [0, 1] pixels.
        return size, imagenet_transform(size, size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), None
    if task == "segmentation":
        preset = meta_enum.transforms() if meta_enum is not None else None
        size = input_size or (int(preset.resize_size[0]) if preset is not None and preset.resize_size else 520)
        mean, std = (preset.mean, preset.std) if preset is not None else (IMAGENET_MEAN, IMAGENET_STD)
        return size, imagenet_transform(size, size, mean=mean, std=std), None
    if task == "video":
        preset = meta_enum.transforms()
        crop = int(preset.crop_size[0])
        fixed = _FIXED_SIZE.get(name)
        if fixed is not None and input_size not in (None, fixed):
            raise InputSizeError(f"{name} takes only {fixed}x{fixed} frames, not {input_size}: "
                                 f"use input_size={fixed}", parameter="input_size")
        size = input_size or crop
        resize = [round(size * s / crop) for s in preset.resize_size]
        # (T, 3, H, W) uint8 frames -> (3, T, H, W): resize, centre crop, scale, normalise
        transform = VideoClassification(crop_size=(size, size), resize_size=resize, mean=preset.mean,
                                        std=preset.std, interpolation=InterpolationMode.BILINEAR)
        temporal = (meta_enum.meta.get("min_temporal_size") or 1) if meta_enum is not None else 1
        return size, transform, max(CLIP_LENGTH, int(temporal))
    if task == "optical_flow":
        size = input_size or FLOW_MIN_SIZE * 2
        if size < FLOW_MIN_SIZE or size % 8:
            raise InputSizeError(f"{name} needs frames of at least {FLOW_MIN_SIZE} pixels whose side is a multiple "
                                 f"of 8, not {size}: use input_size={max(FLOW_MIN_SIZE, size + (-size) % 8)}",
                                 parameter="input_size")
        # RAFT takes pixels scaled to [-1, 1] (torchvision's OpticalFlow preset).
        return size, imagenet_transform(size, size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), None
    raise ArgumentError(f"task={task!r} has no input recipe", parameter="task")


def load_model(
    model: str | nn.Module,
    weights: str | os.PathLike | None = "auto",
    device: str | torch.device | None = "cpu",
    input_size: int | None = None,
    categories: tuple[str, ...] | list[str] | None = None,
) -> LoadedModel:
    """Load a torchvision classifier by name (or wrap a module) with its weights, transform and class names.

    ``timm:NAME`` loads a timm model and ``hf:PATH_OR_ID`` a transformers image classifier (optional
    extras ``introspect[timm]`` and ``introspect[hf]``).
    Example: ``introspect.load_model("resnet18", weights="none")``.

    Args:
        model: a torchvision model name, ``timm:NAME``, ``hf:PATH_OR_ID``, or a module (wrapped as
            given: not moved, not copied; its input size and class names read from a timm or HF
            module's own metadata).
        weights: ``"auto"`` (the default weights if cached or downloadable, else random with a
            warning), ``"DEFAULT"`` or an enum name such as ``"IMAGENET1K_V1"``, ``"none"``
            (random), or the path of a state_dict file (loaded with ``weights_only=True``).
        device: where to put a model loaded by name.
        input_size: side of the square input (default: the weights' own, or 224).
        categories: class names (default: the weights' ImageNet names, or ``class N``).

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        UnknownModelError: ``model`` is not a torchvision model name.
        WeightsError: the weights cannot be found, loaded safely or matched to the model.
        IntrospectError: named weights are neither cached nor downloadable.
        DeviceError: ``device`` is unknown or unavailable.
        InputSizeError: ``input_size`` is not positive, or the model cannot take it.
    """
    target = resolve_device(device)
    if input_size is not None and input_size < 1:
        raise InputSizeError(f"input_size={input_size} is not a size: give a positive number of pixels, e.g. 224",
                             parameter="input_size")
    notes: list[str] = []
    if isinstance(model, nn.Module):
        from .probe import model_input_size
        from .timm_hf import module_categories

        size = input_size or model_input_size(model)[0]
        classes = _output_classes(model) or 0
        names = tuple(categories) if categories else (
            module_categories(model, classes) or tuple(f"class {i}" for i in range(classes)))
        quantized = any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))
                        for m in model.modules())
        return LoadedModel(model=model, name=type(model).__name__, weights="as given", weights_source="the caller",
                           transform=imagenet_transform(size), categories=names, input_size=size,
                           device=device_and_dtype(model, target)[0], warnings=notes,
                           task="quantized" if quantized else "classification")

    from .tasks import task_of

    if model.startswith(("timm:", "hf:")):  # optional extras, imported only for such a name
        from .timm_hf import load_hf, load_timm

        prefix, _, rest = model.partition(":")
        return (load_timm if prefix == "timm" else load_hf)(rest, weights, target, input_size, categories)
    _check_model_name(model)
    enum = _weights_enum(model)
    choice = "auto" if weights is None else str(weights)
    lowered = choice.lower()
    chosen = None  # the weights enum member actually loaded
    state = None
    if lowered == "none":
        source = "random initialisation (weights='none')"
    elif lowered == "auto" or lowered == "default" or (enum is not None and choice in enum.__members__):
        if enum is None:
            if lowered != "auto":
                raise WeightsError(f"{model} has no pretrained weights in torchvision: use weights='none' or a file",
                                   parameter="weights")
            source = "random initialisation (torchvision has no weights for it)"
        else:
            member = enum.DEFAULT if lowered in {"auto", "default"} else enum[choice]
            try:
                state, source = _fetch_state(member)
                chosen = member
            except OSError as exc:
                if lowered != "auto":
                    raise IntrospectError(f"cannot get {model} weights {member}: {exc}; put the file there or use "
                                          "weights=PATH / weights='none'", parameter="weights") from None
                source = "random initialisation: no pretrained weights available"
                notes.append(f"RANDOM WEIGHTS: {model} {member} weights are {exc}. Predictions, CAMs and kernels "
                             f"below come from an untrained model. Put the file in the cache or pass weights=PATH.")
    elif Path(choice).suffix in {".pt", ".pth", ".bin", ".ckpt", ".tar"} or Path(choice).exists():
        state = load_checkpoint(choice)
        source = f"local file {choice}"
    else:
        members = list(enum.__members__) if enum is not None else []
        valid = list(dict.fromkeys(["auto", "DEFAULT", "none", "PATH"] + members))
        raise WeightsError(f"unknown weights {choice!r} for {model}: use one of {', '.join(valid)}",
                           parameter="weights")

    task = task_of(model)
    if task.name == "quantized" and target.type != "cpu":
        raise DeviceError(f"{model} is an int8 quantized model, which runs on the CPU only: use device='cpu'",
                          parameter="device")
    extra = _detection_size_kwargs(model, input_size) if task.name == "detection" else {}
    if task.name == "segmentation" and state is not None:  # trained weights carry the auxiliary head or not
        extra["aux_loss"] = any(key.startswith("aux_classifier.") for key in state)
    if state is not None and task.name == "classification":
        num_classes = _num_classes_in(state)
        default_classes = 1000
        net = _assign_state(model, state, source, num_classes if num_classes not in (None, default_classes)
                            else None)
    elif state is not None:  # other tasks: built for real (quantized models calibrate while built), then loaded
        net = _build(model, **extra)
        problem = _describe_mismatch(net, state, source)
        if problem:
            raise WeightsError(problem + ": pick the matching model name or file")
        net.load_state_dict(state, strict=True)
    else:
        net = _build(model, **extra)
    net = net.to(target).eval()

    meta_enum = chosen if chosen is not None else (enum.DEFAULT if enum is not None else None)
    clip_length = None
    if task.name in {"classification", "quantized"}:
        size = input_size or (meta_enum.transforms().crop_size[0] if meta_enum is not None else 224)
        _check_input_size(model, net, size, enum)
        if meta_enum is not None and input_size is None:
            transform = meta_enum.transforms()
        elif meta_enum is not None:
            preset = meta_enum.transforms()
            ratio = preset.resize_size[0] / preset.crop_size[0]
            transform = imagenet_transform(size, round(size * ratio), preset.mean, preset.std)
        else:
            transform = imagenet_transform(size)
        classes = _output_classes(net) or 0
    else:
        size, transform, clip_length = _task_input(model, task.name, net, meta_enum, input_size)
        classes = len(meta_enum.meta.get("categories") or ()) if meta_enum is not None else 0
    names = tuple(categories) if categories else _categories(enum, classes)
    for note in notes:
        warnings.warn(note, IntrospectWarning, stacklevel=2)
    weights_name = str(chosen).split(".")[-1] if chosen is not None else (
        "random" if state is None else Path(choice).name)
    return LoadedModel(model=net, name=model, weights=weights_name, weights_source=source, transform=transform,
                       categories=names, input_size=size, device=target, warnings=notes, task=task.name,
                       clip_length=clip_length)
