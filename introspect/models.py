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

import contextlib
import dataclasses
import difflib
import io
import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ArgumentError, DeviceError, InputSizeError, IntrospectError, IntrospectWarning, UnknownModelError, \
    WeightsError
from .categories import ClassNames, given_names, name_classes, names_in_checkpoint, numbered
from .checkpoints import OFFLINE_ENV, load_checkpoint, read_checkpoint
from .loaded import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, device_and_dtype, imagenet_transform, unwrap

__all__ = ["LoadedModel", "list_models", "load_model", "resolve_device", "load_checkpoint", "imagenet_transform",
           "unwrap", "device_and_dtype", "IMAGENET_MEAN", "IMAGENET_STD"]



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
        # torch says "Downloading: URL" (on stdout in torch 2.14, stderr before) before it knows whether it can
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
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


def _categories(enum: Any, num_classes: int) -> ClassNames:
    if enum is not None:
        categories = enum.DEFAULT.meta.get("categories")
        if categories and len(categories) == num_classes:
            return ClassNames(tuple(categories), "the torchvision weights' categories")
    return ClassNames(numbered(num_classes), "numbered (class 0 to class N-1): no names given")


def _load_user_model(spec: str, model_args: Mapping[str, Any] | None, weights: str | os.PathLike | None,
                     device: torch.device, input_size: int | None, given: ClassNames | None) -> LoadedModel:
    """``package.module:callable``: build the user's module, load a state_dict into it, wrap it as a module."""
    from .user_model import build_user_model

    choice = "auto" if weights is None else str(weights)
    is_file = Path(choice).suffix in {".pt", ".pth", ".bin", ".ckpt", ".tar"} or Path(choice).exists()
    if not is_file and choice.lower() not in {"auto", "none"}:
        raise WeightsError(f"weights={choice!r}: {spec} has no named weights: give a state_dict file, or none "
                           "(as the function builds it)", parameter="weights")
    state, entries = read_checkpoint(choice) if is_file else (None, None)  # a bad file fails before the build
    net = build_user_model(spec, model_args)
    shown = ", ".join(f"{k}={v!r}" for k, v in (model_args or {}).items())
    built_by = f"{spec}({shown})"
    if state is not None:
        problem = _describe_mismatch(net, state, choice)
        if problem:
            raise WeightsError(problem + f": give the checkpoint of the model {built_by} builds, or the model "
                               "arguments it was trained with", parameter="weights")
        net.load_state_dict(state, strict=True)
        weights_name, source = Path(choice).name, f"local file {choice}, into the model built by {built_by}"
    else:
        weights_name, source = "as built", f"as built by {built_by} (no weights file given)"
    net = net.to(device).eval()
    loaded = load_model(net, device=device, input_size=input_size)
    loaded = dataclasses.replace(loaded, name=spec, weights=weights_name, weights_source=source)
    carried = names_in_checkpoint(entries, choice) if given is None else None
    return name_classes(loaded, given or carried)


def load_model(
    model: str | nn.Module,
    weights: str | os.PathLike | None = "auto",
    device: str | torch.device | None = "cpu",
    input_size: int | None = None,
    categories: Sequence[str] | str | os.PathLike | None = None,
    model_args: Mapping[str, Any] | Sequence[str] | None = None,
) -> LoadedModel:
    """Load a torchvision classifier by name (or wrap a module) with its weights, transform and class names.

    ``timm:NAME`` loads a timm model and ``hf:PATH_OR_ID`` a transformers image classifier (optional
    extras ``introspect[timm]`` and ``introspect[hf]``); ``package.module:callable`` builds a model of the
    user's own (a module on the path, the current folder first; ``model_args`` its keyword arguments).
    Example: ``introspect.load_model("resnet18", weights="none")``.

    Args:
        model: a torchvision model name, ``timm:NAME``, ``hf:PATH_OR_ID``, an import path
            ``package.module:callable`` returning the module, or a module (wrapped as given: not moved,
            not copied; its input size and class names read from a timm or HF module's own metadata).
        weights: ``"auto"`` (the default weights if cached or downloadable, else random with a
            warning), ``"DEFAULT"`` or an enum name such as ``"IMAGENET1K_V1"``, ``"none"``
            (random), or the path of a state_dict file (loaded with ``weights_only=True``).
        device: where to put a model loaded by name.
        input_size: side of the square input (default: the weights' own, or 224).
        categories: class names, one per output class, class 0 first: a list, or the path of a labels
            file (one name a line, or a JSON list). Default: the names a checkpoint carries (its
            ``classes``, ``idx_to_class``, ``class_to_idx`` or ``id2label`` entry), else the weights' own
            names, else ``class N``. ``LoadedModel.categories_source`` says which.
        model_args: keyword arguments of an import-path model's callable: a dict, or ``"key=value"``
            strings (values read as Python literals where they parse).

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        UnknownModelError: ``model`` is not a torchvision model name, or an import path that does not import.
        WeightsError: the weights cannot be found, loaded safely (a whole pickled model) or matched to the model.
        ArgumentError: ``categories`` cannot be read or do not give one name per output class; bad
            ``model_args``.
        IntrospectError: named weights are neither cached nor downloadable.
        DeviceError: ``device`` is unknown or unavailable.
        InputSizeError: ``input_size`` is not positive, or the model cannot take it.
    """
    target = resolve_device(device)
    if input_size is not None and input_size < 1:
        raise InputSizeError(f"input_size={input_size} is not a size: give a positive number of pixels, e.g. 224",
                             parameter="input_size")
    given = given_names(categories)  # a labels file is read before any model is built
    from .user_model import is_import_path, parse_model_args

    factory_args = parse_model_args(model_args)
    if is_import_path(model):
        return _load_user_model(model, factory_args, weights, target, input_size, given)
    if factory_args:
        key, value = next(iter(factory_args.items()))
        named = model if isinstance(model, str) else type(model).__name__
        raise ArgumentError(f"model_args='{key}={value}' is for a model given by import path "
                            f"(package.module:callable), not {named}: drop it", parameter="model_args")
    notes: list[str] = []
    if isinstance(model, nn.Module):
        from .tasks import task_of_module
        from .timm_hf import module_categories

        task = task_of_module(model)  # from the module's structure: there is no name to look up
        recipe = task.module_recipe(model, input_size)
        names = module_categories(model, recipe.classes) or task.default_categories(recipe.classes) \
            or numbered(recipe.classes)
        return name_classes(LoadedModel(
            model=model, name=type(model).__name__, weights="as given", weights_source="the caller",
            transform=recipe.transform, categories=names, input_size=recipe.size,
            device=device_and_dtype(model, target)[0], warnings=notes, task=task.name,
            clip_length=recipe.clip_length), given)

    from .tasks import task_of

    if model.startswith(("timm:", "hf:")):  # optional extras, imported only for such a name
        from .timm_hf import load_hf, load_timm

        prefix, _, rest = model.partition(":")
        return name_classes((load_timm if prefix == "timm" else load_hf)(rest, weights, target, input_size, None),
                            given)
    _check_model_name(model)
    enum = _weights_enum(model)
    choice = "auto" if weights is None else str(weights)
    lowered = choice.lower()
    chosen = None  # the weights enum member actually loaded
    state = carried = None
    weights_path = None  # the file loaded, if any
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
                             f"of this run come from an untrained model. Put the file in the cache or pass "
                             f"weights=PATH.")
    elif Path(choice).suffix in {".pt", ".pth", ".bin", ".ckpt", ".tar"} or Path(choice).exists():
        state, entries = read_checkpoint(choice)
        carried = names_in_checkpoint(entries, choice) if given is None else None  # --labels wins
        source = f"local file {choice}"
        weights_path = str(Path(choice).resolve())
    else:
        members = list(enum.__members__) if enum is not None else []
        valid = list(dict.fromkeys(["auto", "DEFAULT", "none", "PATH"] + members))
        raise WeightsError(f"unknown weights {choice!r} for {model}: use one of {', '.join(valid)}",
                           parameter="weights")

    task = task_of(model)
    task.check_device(model, target)
    extra = task.builder_kwargs(model, input_size, state)
    if state is not None and task.reads_class_count:
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
    recipe = task.input_recipe(model, net, meta_enum, input_size)
    size, transform, clip_length = recipe.size, recipe.transform, recipe.clip_length
    own = _categories(enum, recipe.classes)
    for note in notes:
        warnings.warn(note, IntrospectWarning, stacklevel=2)
    weights_name = str(chosen).split(".")[-1] if chosen is not None else (
        "random" if state is None else Path(choice).name)
    loaded = LoadedModel(model=net, name=model, weights=weights_name, weights_source=source, transform=transform,
                         categories=own.names, input_size=size, device=target, warnings=notes, task=task.name,
                         clip_length=clip_length, categories_source=own.source,
                         weights_path=weights_path)
    return name_classes(loaded, given or carried)
