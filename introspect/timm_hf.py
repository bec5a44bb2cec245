"""Models from timm (``timm:NAME``) and Hugging Face transformers (``hf:PATH_OR_ID``).

Both libraries are optional extras (``introspect[timm]``, ``introspect[hf]``), imported only
here and only when such a model is asked for. Each loader returns the same
:class:`~introspect.models.LoadedModel` as torchvision's: the module in eval mode, the
preprocessing the model was trained with (timm's data config, the HF image processor), and
the class names from the model's own metadata (timm's pretrained config, HF ``id2label``).

Weights follow ``weights=`` as for torchvision: ``auto`` (pretrained when cached or
downloadable, else random with a loud warning), ``DEFAULT`` / ``pretrained`` (pretrained or
an error), ``none`` (random), or a state_dict file for timm (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputSizeError, IntrospectError, IntrospectWarning, UnknownModelError, UsageError, WeightsError
from .checkpoints import OFFLINE_ENV, load_checkpoint
from .loaded import LoadedModel

__all__ = ["HFClassifier", "HFSegmenter", "HFDetector", "HF_NOT_APPLICABLE", "load_timm", "load_hf",
           "module_categories"]

# Hugging Face image-classification architectures that cannot take an image batch alone (model_type: why)
HF_NOT_APPLICABLE = {
    "dinat": "needs the natten library (neighbourhood-attention kernels): pip install natten",
    "nat": "needs the natten library (neighbourhood-attention kernels): pip install natten",
    "imagegpt": "classifies colour-cluster token ids (input_ids), not pixel_values",
    "shieldgemma2": "a vision-language safety classifier: it needs a text prompt (input_ids) beside the image",
    "siglip2": "takes pre-patchified pixel_values with pixel_attention_mask and spatial_shapes (NaFlex), not an "
               "image batch",
    "timm_wrapper": "a wrapper around a timm model: load the timm model itself as timm:NAME",
}


def _need(package: str, extra: str):
    try:
        return __import__(package)
    except ImportError:
        raise UsageError(f"{package} is not installed: pip install 'introspect[{extra}]' (or pip install "
                         f"{package})") from None


def _preset(crop: int, resize: int, mean, std, interpolation: str = "bilinear"):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    mode = {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(
        str(interpolation).lower(), InterpolationMode.BILINEAR)
    return ImageClassification(crop_size=crop, resize_size=resize, mean=tuple(mean), std=tuple(std),
                               interpolation=mode)


def _numbered(count: int) -> tuple[str, ...]:
    return tuple(f"class {i}" for i in range(count))


def _timm_categories(model: nn.Module, count: int) -> tuple[str, ...]:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            if info.num_classes() == count:
                return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(count))
    except Exception:  # an old timm, or a config without a label set: numbered classes
        pass
    return _numbered(count)


def _hf_categories(config: Any, count: int) -> tuple[str, ...]:
    labels = getattr(config, "id2label", None) or {}
    names = {int(k): str(v) for k, v in labels.items()}
    if len(names) == count and set(names) == set(range(count)):
        return tuple(names[i] for i in range(count))
    return _numbered(count)


def module_categories(model: nn.Module, count: int) -> tuple[str, ...] | None:
    """Class names a timm or Hugging Face module carries itself (None for any other module)."""
    inner = model.model if isinstance(model, (HFClassifier, HFSegmenter, HFDetector)) else model
    if getattr(inner, "config", None) is not None and getattr(inner.config, "id2label", None):
        return _hf_categories(inner.config, count)
    if type(model).__module__.startswith("timm.") and getattr(model, "pretrained_cfg", None) is not None:
        return _timm_categories(model, count)
    return None


def _cached_timm_file(cfg: dict) -> str | None:
    """A timm pretrained file already on disk (Hugging Face hub cache, or torch hub cache)."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for filename in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
                if filename:
                    found = try_to_load_from_cache(hub_id, filename)
                    if isinstance(found, str) and os.path.isfile(found):
                        return found
        except Exception:  # no huggingface_hub, or an unreadable cache
            pass
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if path.is_file():
            return str(path)
    return None


def load_timm(name: str, weights: str | os.PathLike | None, device: torch.device, input_size: int | None,
              categories: tuple[str, ...] | list[str] | None) -> LoadedModel:
    """A timm model by name (``resnet50``, ``convnext_tiny.fb_in22k``, ...) with its weights and preprocessing.

    Args:
        name: a timm model name (without the ``timm:`` prefix).
        weights: ``auto``, ``DEFAULT``/``pretrained``, ``none`` or a state_dict file.
        device: where the model goes.
        input_size: square input side (default: the model's pretrained config).
        categories: class names to use instead of the model's own.
    """
    _need("timm", "timm")
    import timm
    import timm.data
    if not timm.is_model(name.split(".")[0]):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise UnknownModelError(f"unknown timm model {name!r}: {hint}")
    choice = "auto" if weights is None else str(weights)
    lowered = choice.lower()
    notes: list[str] = []
    state = None
    if lowered in {"auto", "default", "pretrained"}:
        net = None
        cfg = timm.models.get_pretrained_cfg(name)
        cfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else (cfg or {})
        cached = _cached_timm_file(cfg)
        problem = None
        if cached is not None:
            net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
            source = f"pretrained, from the local cache ({cached})"
        elif os.environ.get(OFFLINE_ENV):
            problem = f"not in the local cache and {OFFLINE_ENV} is set"
        else:
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(15)
            try:
                net = timm.create_model(name, pretrained=True)
                source = "pretrained, downloaded by timm"
            except Exception as exc:  # any network or hub failure
                problem = f"not cached and the download failed ({type(exc).__name__})"
            finally:
                socket.setdefaulttimeout(previous)
        if net is None:
            if lowered != "auto":
                raise IntrospectError(f"cannot get timm {name} pretrained weights: {problem}; use weights='none' "
                                      "or a state_dict file") from None
            net = timm.create_model(name, pretrained=False)
            source = "random initialisation: no pretrained weights available"
            notes.append(f"RANDOM WEIGHTS: timm {name} pretrained weights are {problem}. Predictions, CAMs and "
                         "kernels of this run come from an untrained model. Put them in the cache or pass a file.")
        weights_name = "pretrained" if "pretrained," in source else "random"
    elif lowered == "none":
        net = timm.create_model(name, pretrained=False)
        source, weights_name = "random initialisation (weights='none')", "random"
    elif Path(choice).suffix in {".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors"} or Path(choice).exists():
        state = load_checkpoint(choice)
        with torch.device("meta"):
            net = timm.create_model(name, pretrained=False)
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:300]
            raise WeightsError(f"{choice} does not match timm {name} ({first}): pick the matching model name "
                               "or file") from None
        if any(t.is_meta for t in [*net.parameters(), *net.buffers()]):
            net = timm.create_model(name, pretrained=False)
            net.load_state_dict(state, strict=True)
        source, weights_name = f"local file {choice}", Path(choice).name
    else:
        raise WeightsError(f"unknown weights {choice!r} for timm {name}: use auto, pretrained, none or a file")
    net = net.to(device).eval()

    data = timm.data.resolve_data_config({}, model=net)
    default = int(data["input_size"][-1])
    size = input_size or default
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    if input_size is not None and input_size != default and cfg.get("fixed_input_size"):
        raise InputSizeError(f"timm {name} takes only {default}x{default} inputs, not {input_size}: use "
                             f"input_size={default}")
    crop_pct = float(data.get("crop_pct") or 0.875)
    transform = _preset(size, int(size / crop_pct), data["mean"], data["std"], data.get("interpolation", "bicubic"))
    count = int(getattr(net, "num_classes", 0) or 0)
    names = tuple(categories) if categories else _timm_categories(net, count)
    for note in notes:
        warnings.warn(note, IntrospectWarning, stacklevel=3)
    return LoadedModel(model=net, name=f"timm:{name}", weights=weights_name, weights_source=source,
                       transform=transform, categories=names, input_size=size, device=device, warnings=notes)


class HFClassifier(nn.Module):
    """A transformers image classifier whose forward returns the logits tensor (its layers stay ``model.*``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self) -> Any:
        """The wrapped model's config."""
        return self.model.config

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes) of a (N, 3, H, W) batch."""
        output = self.model(pixel_values=pixel_values)
        logits = getattr(output, "logits", None)
        if logits is None:  # PP-LCNet returns its scores as last_hidden_state
            logits = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        return logits


class HFSegmenter(nn.Module):
    """A transformers semantic segmenter whose forward returns ``{"out": scores}`` at the input's size, as
    torchvision's segmenters do (bilinear, as transformers' own post-processing); its layers stay ``model.*``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self) -> Any:
        """The wrapped model's config."""
        return self.model.config

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"out": (N, classes, H, W)}`` per-pixel class scores of a (N, 3, H, W) batch."""
        logits = self.model(pixel_values=pixel_values).logits
        if logits.shape[-2:] != pixel_values.shape[-2:]:
            logits = torch.nn.functional.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear",
                                                     align_corners=False)
        return {"out": logits}


class HFDetector(nn.Module):
    """A transformers DETR-style object detector taking what torchvision's detectors take: a list of (3, H, W)
    images in [0, 1] (or one (N, 3, H, W) batch), each resized to ``size`` x ``size`` and normalised here; it
    returns one ``{"boxes" (x1, y1, x2, y2 in the image's pixels), "labels", "scores"}`` per image, a detection
    per query scoring ``score_thresh`` or more (scores: the softmax without the no-object class, or the sigmoid
    of focal-loss heads), differentiable back to the query logits. Its layers stay ``model.*``."""

    def __init__(self, model: nn.Module, size: int, mean: Any, std: Any, score_thresh: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.score_thresh = float(score_thresh)

    @property
    def config(self) -> Any:
        """The wrapped model's config."""
        return self.model.config

    def forward(self, images: Any) -> list[dict[str, torch.Tensor]]:
        """Detections of each image (see the class)."""
        images = list(images) if not isinstance(images, torch.Tensor) or images.ndim == 4 else [images]
        sizes = [tuple(int(s) for s in image.shape[-2:]) for image in images]
        batch = torch.stack([torch.nn.functional.interpolate(image[None], size=(self.size, self.size),
                                                             mode="bilinear", align_corners=False)[0]
                             for image in images])
        batch = (batch - self.mean.to(batch)) / self.std.to(batch)
        output = self.model(pixel_values=batch)
        logits, boxes = output.logits, output.pred_boxes  # (N, Q, classes[+1]), (N, Q, 4) cx, cy, w, h in [0, 1]
        labels_count = int(getattr(self.model.config, "num_labels", logits.shape[-1]))
        if logits.shape[-1] == labels_count + 1:  # DETR, YOLOS: a softmax with a last "no object" class
            probs = logits.softmax(-1)[..., :-1]
        else:  # Deformable / Conditional DETR, RT-DETR: sigmoid (focal loss) heads
            probs = logits.sigmoid()
        scores, labels = probs.max(-1)
        found = []
        for n, (height, width) in enumerate(sizes):
            cx, cy, w, h = boxes[n].unbind(-1)
            xyxy = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                                (cy + h / 2) * height], -1)
            keep = (scores[n] >= self.score_thresh).nonzero().flatten()
            keep = keep[scores[n][keep].argsort(descending=True)]
            found.append({"boxes": xyxy[keep], "labels": labels[n][keep], "scores": scores[n][keep]})
        return found


_HF_TASKS = {"segmentation": "hf_segmentation", "detection": "hf_detection"}  # head -> introspect task


def _hf_head(config: Any) -> str:
    """What the config's architecture does: "segmentation", "detection" or "classification"."""
    from transformers.models.auto import modeling_auto

    named = set(getattr(config, "architectures", None) or ())

    def among(mapping: dict) -> bool:
        return any(name in named for value in mapping.values()
                   for name in (value if isinstance(value, (tuple, list)) else (value,)))

    if among(modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES):
        return "segmentation"
    if among(modeling_auto.MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES):
        return "detection"
    return "classification"


def _hf_size(processor: Any, config: Any) -> tuple[int, int]:
    """(crop, resize) from an image processor's config, else the model config's image_size."""
    def side(value: Any) -> int | None:
        if isinstance(value, int):
            return value
        if value is None:
            return None
        for key in ("shortest_edge", "height", "width"):  # a dict (transformers 4) or a SizeDict (5)
            found = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
            if found:
                return int(found)
        return None

    crop = side(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else None
    resize = side(getattr(processor, "size", None))
    image_size = getattr(config, "image_size", None) or getattr(getattr(config, "vision_config", None),
                                                                 "image_size", None)
    image_size = image_size if isinstance(image_size, int) else (image_size[0] if image_size else None)
    crop = crop or resize or image_size or 224
    return crop, max(resize or crop, crop)


def load_hf(path: str, weights: str | os.PathLike | None, device: torch.device, input_size: int | None,
            categories: tuple[str, ...] | list[str] | None) -> LoadedModel:
    """A transformers image-classification model from a folder (``save_pretrained``) or a hub id.

    Args:
        path: the folder or hub id (without the ``hf:`` prefix).
        weights: ``auto``/``DEFAULT`` (the saved weights) or ``none`` (random, from the config).
        device: where the model goes.
        input_size: square input side (default: the image processor's, else the config's image_size).
        categories: class names to use instead of the config's ``id2label``.
    """
    _need("transformers", "hf")
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    offline = bool(os.environ.get(OFFLINE_ENV)) and not Path(path).is_dir()
    choice = "auto" if weights is None else str(weights).lower()
    if choice not in {"auto", "default", "pretrained", "none"}:
        raise WeightsError(f"unknown weights {weights!r} for hf:{path}: use auto or none (the weights come "
                           "from the folder or hub id)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=offline)
    except (OSError, ValueError) as exc:
        first = " ".join(str(exc).split())[:200]
        if offline:
            raise UnknownModelError(f"hf:{path} is not a folder and not in the local Hugging Face cache "
                                    f"({OFFLINE_ENV} is set): download it first with `huggingface-cli download "
                                    f"{path}` (or save_pretrained it to a folder) and pass that") from None
        raise UnknownModelError(f"cannot load Hugging Face model {path!r} ({first}): give a folder written by "
                                "save_pretrained or a hub id") from None
    model_type = getattr(config, "model_type", "")
    head = _hf_head(config)
    if head == "detection":
        from transformers import AutoModelForObjectDetection as auto_class
    elif head == "segmentation":
        from transformers import AutoModelForSemanticSegmentation as auto_class
    else:
        auto_class = AutoModelForImageClassification
    if head == "classification" and model_type in HF_NOT_APPLICABLE:
        raise UsageError(f"hf:{path} ({model_type}) cannot be introspected: {HF_NOT_APPLICABLE[model_type]}")
    try:
        if choice == "none":
            model = auto_class.from_config(config)
            source, weights_name = "random initialisation (weights='none')", "random"
        else:
            model = auto_class.from_pretrained(path, local_files_only=offline)
            source, weights_name = f"transformers from_pretrained({path})", "pretrained"
    except (OSError, ValueError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise UnknownModelError(f"cannot load Hugging Face image classifier {path!r} ({first}): give a folder "
                                "written by save_pretrained or a hub id") from None
    try:
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=offline)
    except Exception:  # no preprocessor_config.json: the config's size and transformers' defaults
        processor = None
    config = model.config
    crop, resize = _hf_size(processor, config)
    default = crop
    size = input_size or default
    if input_size is not None and input_size != default:
        resize = round(resize * input_size / default)
    mean = getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5)
    std = getattr(processor, "image_std", None) or (0.5, 0.5, 0.5)
    resample = getattr(processor, "resample", None)  # PIL's codes: 3 bicubic, 0 nearest, else bilinear
    transform = _preset(size, resize, mean, std, {3: "bicubic", 0: "nearest"}.get(int(resample or 2), "bilinear"))
    if head == "detection":  # [0, 1] pixels in, normalised inside (as torchvision's detectors)
        transform = _preset(size, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear")
        net = HFDetector(model, size, mean, std).to(device).eval()
    else:
        net = (HFSegmenter if head == "segmentation" else HFClassifier)(model).to(device).eval()
    count = int(getattr(config, "num_labels", 0) or 0)
    names = tuple(categories) if categories else _hf_categories(config, count)
    short = Path(path).name if Path(path).is_dir() else path.replace("/", "--")  # the run folder's name: no "/"
    return LoadedModel(model=net, name=f"hf:{short}", weights=weights_name, weights_source=source,
                       transform=transform, categories=names, input_size=size, device=device, warnings=[],
                       task=_HF_TASKS.get(head, "classification"))
