"""Layer names: resolve them, list them, and pick the layers to look at from the model's structure.

This is the one place that knows which layer to look at: the stage outputs shown as
feature maps, and the CAM target layer with the reshape that turns its output into a
(N, C, H, W) map. Both come from one probe of the model (:mod:`introspect.probe`):

- the CAM layer is the last module whose output is still a map over the image (NCHW,
  channels-last NHWC, or tokens on a patch grid) before the pooling and the head; for a
  ViT that classifies from its prefix tokens, whose final patch tokens never reach the
  scores, it is the input of the last block's attention (the last block's first norm);
- the feature layers are the outermost modules that end each spatial size (the stages).

torchvision's own classes keep their hand-picked layers (``_TORCHVISION_CAM``), used only
when the model really is (a subclass of) that torchvision class, the path exists and the
probe shows it spatial; any other model, timm and Hugging Face included, gets the
structural choice. When nothing spatial is found the error says to pass ``layer=``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LayerError, UnknownLayerError
from .probe import LayerOutput, Probe, describe, patch_gradients, probe

__all__ = [
    "LayerChoice",
    "LayerRow",
    "layer_names",
    "resolve_layer",
    "resolve_layers",
    "layer_choice",
    "default_feature_layers",
    "pick_cam_layer",
    "head_input_layer",
    "layer_table",
    "to_nchw",
    "conv_layers",
]


@dataclass(frozen=True)
class LayerChoice:
    """A layer by name, and how its output becomes a (N, C, H, W) map.

    ``layout``: "nchw", "nhwc" (channels last) or "tokens" ((N, L, C) with ``prefix``
    class/distillation/register tokens before a ``grid`` = (gh, gw) of patch tokens).
    """

    name: str
    layout: str = "nchw"
    prefix: int = 0
    grid: tuple[int, int] | None = None

    @property
    def channels_last(self) -> bool:
        """Whether the output is (N, H, W, C)."""
        return self.layout == "nhwc"


@dataclass(frozen=True)
class LayerRow:
    """One line of ``--list-layers``: a module, its probed output and whether it is a default pick."""

    name: str
    kind: str
    shape: tuple[int, ...]  # () when it did not run in the probe
    output: str  # the shape and layout in words
    cam: bool
    features: bool


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule, in registration order (the names ``layers=`` takes)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; an unknown name lists the closest valid ones."""
    if name:
        try:
            return model.get_submodule(name)  # follows the dotted path only: no walk over every module
        except AttributeError:
            pass
    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"valid names start with: {', '.join(names[:8])}, ..."
    raise UnknownLayerError(
        f"unknown layer {name!r} ({hint}); list every layer with `python -m introspect MODEL --list-layers`"
    )


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """Resolve several names at once (the first unknown one raises)."""
    return [resolve_layer(model, name) for name in names]


def conv_layers(model: nn.Module) -> list[str]:
    """Names of every ``nn.Conv2d`` in the model."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _probe(model: nn.Module, input_size) -> Probe | None:
    """The model's probe, or None when it cannot run on one (1, 3, H, W) image."""
    try:
        return probe(model, input_size)
    except Exception:  # a model that takes no single image (video, two frames): callers fall back
        return None


def _choice(layer: LayerOutput) -> LayerChoice:
    layout = layer.layout if layer.layout in ("nchw", "nhwc", "tokens") else "nchw"
    return LayerChoice(layer.name, layout=layout, prefix=layer.prefix, grid=layer.grid)


def layer_choice(model: nn.Module, name: str, *, input_size: int | Sequence[int] | None = None) -> LayerChoice:
    """The layer ``name`` (checked) with the layout the probe saw at its output.

    Args:
        model: the model.
        name: a module name (see :func:`layer_names`).
        input_size: the input's side or (H, W) (default: the size the model declares, else 224).
    """
    resolve_layer(model, name)
    found = _probe(model, input_size)
    record = found.get(name) if found is not None else None
    if record is None or not record.spatial:
        return LayerChoice(name)  # to_nchw falls back to reading the shape it is given
    return _choice(record)


# ---------------------------------------------------------------- torchvision's hand-picked layers

def _torchvision_family(model: nn.Module) -> str | None:
    """The name of the torchvision class the model is (or subclasses); None for any other model."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("torchvision.models") and ".quantization." not in cls.__module__:
            return cls.__name__
    return None


def _last_child_name(container: nn.Module) -> str:
    return list(container.named_children())[-1][0]


_FEATURES_TRUNK = {"MobileNetV2", "MobileNetV3", "EfficientNet", "ConvNeXt", "SqueezeNet", "MNASNet"}


def _torchvision_cam(model: nn.Module, family: str) -> str | None:
    """pytorch-grad-cam's usual layer for a torchvision family (ViT: the last block's ln_1)."""
    table = {"ResNet": "layer4", "RegNet": "trunk_output", "ShuffleNetV2": "conv5", "GoogLeNet": "inception5b",
             "Inception3": "Mixed_7c", "MNASNet": "layers", "SwinTransformer": "norm"}
    try:
        if family in table:
            return table[family]
        if family == "MaxVit":
            return f"blocks.{_last_child_name(model.blocks)}"
        if family in {"VGG", "AlexNet", "DenseNet"} | (_FEATURES_TRUNK - {"MNASNet"}):
            return f"features.{_last_child_name(model.features)}"
        if family == "VisionTransformer":
            return f"encoder.layers.{_last_child_name(model.encoder.layers)}.ln_1"
    except (AttributeError, IndexError):
        return None
    return None


def _torchvision_features(model: nn.Module, family: str) -> list[str] | None:
    try:
        if family == "ResNet":
            return ["relu", "layer1", "layer2", "layer3", "layer4"]
        if family in {"VGG", "AlexNet"}:
            return [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        if family == "DenseNet":
            return ["features.pool0", "features.denseblock1", "features.denseblock2", "features.denseblock3",
                    "features.norm5"]
        if family == "RegNet":
            return ["stem"] + [f"trunk_output.{n}" for n, _ in model.trunk_output.named_children()]
        if family == "ShuffleNetV2":
            return ["maxpool", "stage2", "stage3", "stage4", "conv5"]
        if family == "GoogLeNet":
            return ["maxpool1", "maxpool2", "inception3b", "inception4e", "inception5b"]
        if family == "Inception3":
            return ["Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"]
        if family == "VisionTransformer":
            return _evenly([f"encoder.layers.{n}" for n, _ in model.encoder.layers.named_children()], 4)
        if family == "SwinTransformer":
            return [f"features.{i}" for i in range(1, len(model.features), 2)]
        if family == "MaxVit":
            return ["stem"] + [f"blocks.{n}" for n, _ in model.blocks.named_children()]
        if family in _FEATURES_TRUNK:
            trunk = "layers" if family == "MNASNet" else "features"
            return _stage_ends(f"{trunk}.", getattr(model, trunk))
    except (AttributeError, IndexError, TypeError):
        return None
    return None


# ---------------------------------------------------------------- the structural rules

_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)


def _is_aux(name: str) -> bool:
    return any("aux" in part.lower() for part in name.split("."))


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)


def _is_attention(module: nn.Module | None) -> bool:
    """An attention module by its class name, unless it holds norms of its own: then it is a whole block
    (CaiT's ``LayerScaleBlockClassAttn``: norm1, attn, norm2, mlp), whose pre-attention norm is a CAM layer."""
    return module is not None and any(word in type(module).__name__.lower() for word in ("attention", "attn")) \
        and not any(isinstance(child, _NORMS) for child in module.children())


def _in_attention(modules: dict[str, nn.Module], name: str) -> bool:
    """Whether ``name`` is an attention module or inside one (its q/k/v projections, its output dense)."""
    parts = name.split(".")
    return any(_is_attention(modules.get(".".join(parts[:depth]))) for depth in range(1, len(parts) + 1))


def _eligible(model: nn.Module, found: Probe) -> list[LayerOutput]:
    """Spatial outputs that can be a target: run once, not a pass-through, not an auxiliary head or a pooling,
    not a wrapper returning a ModelOutput, not inside an attention module, made from a tensor (not from sizes
    alone: DETR's sine position embedding)."""
    modules = dict(model.named_modules())
    return [layer for layer in found.layers
            if layer.spatial and layer.calls == 1 and not layer.passthrough and not layer.rearranges
            and not layer.structured and layer.fed and not _is_aux(layer.name)
            and not isinstance(modules.get(layer.name), _POOLS) and not _in_attention(modules, layer.name)]


def _inside(name: str, ancestor: str) -> bool:
    return name.startswith(ancestor + ".")


def _grids_within(found: Probe, name: str) -> set[tuple[int, int]]:
    return {layer.grid for layer in found.spatial if layer.name == name or _inside(layer.name, name)}


def _innermost_stage(found: Probe, layer: LayerOutput) -> LayerOutput:
    """Step from a container of several stages (timm's ``stages``) in to its last stage, same tensor."""
    by_name = {l.name: l for l in found.layers}
    while len(_grids_within(found, layer.name)) >= 3 and layer.alias_of in by_name:
        inner = by_name[layer.alias_of]
        if not _inside(inner.name, layer.name):
            break
        layer = inner
    return layer


def _block_of(model: nn.Module, name: str) -> str | None:
    """The outermost ancestor of ``name`` that is one of several same-class blocks in a list."""
    modules = dict(model.named_modules())
    parts = name.split(".")
    for depth in range(1, len(parts)):
        parent, block = ".".join(parts[:depth - 1]), ".".join(parts[:depth])
        container = modules.get(parent) if parent else model
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) >= 2 \
                and len({type(c) for c in container}) == 1:
            return block
    return None


def _reaches_scores(model: nn.Module, found: Probe, layer: LayerOutput) -> bool:
    """Whether the layer's output reaches the scores (True when no real pass can tell)."""
    try:
        return patch_gradients(model, [layer.name], found.input_size)[layer.name]
    except Exception:  # no real pass possible (weights on the meta device): trust the structure
        return True


def _token_target(model: nn.Module, found: Probe, candidates: list[LayerOutput],
                  tokens_only: bool = True) -> LayerOutput | None:
    """The last layer whose patch tokens reach the scores, at its block's level (tokens with a prefix)."""
    tokens = [l for l in candidates if l.layout == "tokens" or not tokens_only]
    flowing: list[LayerOutput] = []
    try:
        for tail in (tokens[-16:], tokens[-64:], tokens):  # the last block first: a short backward
            flows = patch_gradients(model, [l.name for l in tail], found.input_size)
            flowing = [l for l in tail if flows[l.name]]
            if flowing or len(tail) == len(tokens):
                break
    except Exception:  # no real pass possible (weights on the meta device): the last block's first token layer
        block = next((b for b in (_block_of(model, l.name) for l in reversed(tokens)) if b), None)
        first = sorted((l for l in tokens if block and l.name.rsplit(".", 1)[0] == block), key=lambda l: l.start)
        return first[0] if first else None
    if not flowing:
        return None
    last = flowing[-1]
    if last.layout != "tokens" or last.prefix == 0:
        return last
    block = _block_of(model, last.name)
    if block is None:
        return last
    children = [l for l in flowing if l.name.rsplit(".", 1)[0] == block and _inside(l.name, block)]
    return children[-1] if children else last


def _unexplained_after(found: Probe, layer: LayerOutput) -> list[LayerOutput]:
    """Later outputs that look like unrecognised feature maps: a sign the structure rule misread the model."""
    positions = layer.grid[0] * layer.grid[1] if layer.grid else 0
    return [l for l in found.layers if l.end > layer.end and l.layout == "other" and len(l.shape) >= 3
            and l.shape[0] == 1 and math.prod(l.shape[1:-1]) > 1 and not _is_aux(l.name)
            and min(l.shape[1:]) > 1 and not (len(l.shape) == 4 and l.shape[2] == l.shape[3])
            and not (len(l.shape) == 3 and l.shape[1] * 4 <= positions)]  # a latent array (Perceiver's)


def _structural_cam(model: nn.Module, found: Probe) -> LayerChoice:
    candidates = _eligible(model, found)
    hint = "pass the layer to explain as layer=NAME (introspect.layers.layer_table(model) lists them with shapes)"
    if not candidates:
        raise UnknownLayerError(f"cannot find a layer of {type(model).__name__} whose output is a map over the "
                                f"image at input size {found.input_size}: {hint}", parameter="layer")
    chosen = last = candidates[-1]
    prefixed = chosen.layout == "tokens" and chosen.prefix > 0
    if prefixed or not _reaches_scores(model, found, chosen):  # a class token, or a map the head never reads
        picked = _token_target(model, found, candidates, tokens_only=prefixed)
        if picked is None:
            raise UnknownLayerError(f"no token layer of {type(model).__name__} passes its patch tokens on to the "
                                    f"scores: {hint}", parameter="layer")
        chosen = picked
    chosen = _innermost_stage(found, chosen)
    strange = _unexplained_after(found, last)
    if chosen is candidates[0] and len(candidates) > 1 or strange:
        detail = f" (later outputs such as {strange[0].name} {strange[0].shape} are not maps it can read)" \
            if strange else ""
        raise UnknownLayerError(f"the only map-shaped output found in {type(model).__name__} is {chosen.name}, "
                                f"too early to explain its decision{detail}: {hint}", parameter="layer")
    return _choice(chosen)


def pick_cam_layer(model: nn.Module, layer: str | None = None, *,
                   input_size: int | Sequence[int] | None = None) -> LayerChoice:
    """The CAM target layer: the one asked for (checked), or the last spatial layer before the head.

    Args:
        model: the model (any nn.Module taking a (N, 3, H, W) image batch).
        layer: a module name to use instead of the default.
        input_size: the input's side or (H, W) (default: the size the model declares, else 224).

    Returns:
        A :class:`LayerChoice` with the layout to reshape its output.

    Raises:
        UnknownLayerError: an unknown ``layer``, or no spatial layer found (then pass ``layer=``).
    """
    if layer is not None:
        return layer_choice(model, layer, input_size=input_size)
    found = _probe(model, input_size)
    family = _torchvision_family(model)
    name = _torchvision_cam(model, family) if family else None
    if name is not None and name in dict(model.named_modules()):
        record = found.get(name) if found is not None else None
        if record is not None and record.spatial:
            return _choice(record)
        if record is not None and len(record.shape) >= 3 or found is None:
            # it ran but shrank to 1x1 (a tiny input), or the probe could not run: the layouts of the class
            return _table_layout(model, family, name)
    if found is None:
        found = probe(model, input_size)  # raises the model's own error: it cannot run on one image
    return _structural_cam(model, found)


def head_input_layer(model: nn.Module, *, input_size: int | Sequence[int] | None = None,
                     head: str | None = None) -> LayerChoice:
    """The map a dense-prediction head's last layer reads: the last map-shaped output (not a pass-through, not a
    ModelOutput wrapper, not inside attention, not made from sizes alone) that finishes before the head starts.

    ``head``: the last module of that name (DETR's transformer ``encoder``); None: the per-pixel classifier, the
    last module with its own parameters and no children whose output is a feature map (Hugging Face segmenters:
    SegFormer's ``decode_head.classifier``, UperNet's, DPT's ``head.head.4``, MobileViT's), auxiliary heads aside.

    Raises:
        UnknownLayerError: no such head, or no map before it (then pass ``layer=``).
    """
    found = probe(model, input_size)
    modules = dict(model.named_modules())
    if head is not None:
        heads = [l for l in found.layers if l.name.rsplit(".", 1)[-1] == head]
    else:
        heads = [l for l in found.layers if l.layout == "nchw" and not _is_aux(l.name) and l.name in modules
                 and next(modules[l.name].children(), None) is None
                 and next(modules[l.name].parameters(recurse=False), None) is not None]
    before = [l for l in _eligible(model, found) if heads and l.end < heads[-1].start]
    if not before:
        raise UnknownLayerError(f"cannot find the map {type(model).__name__}'s {head or 'classifier'} reads: pass "
                                "the layer to explain as layer=NAME", parameter="layer")
    return _choice(before[-1])


def _table_layout(model: nn.Module, family: str, name: str) -> LayerChoice:
    if family == "SwinTransformer":
        return LayerChoice(name, layout="nhwc")
    if family == "VisionTransformer":
        side = getattr(model, "image_size", 224) // getattr(model, "patch_size", 16)
        return LayerChoice(name, layout="tokens", prefix=1, grid=(side, side))
    return LayerChoice(name)


def _evenly(names: Sequence[str], count: int) -> list[str]:
    if len(names) <= count:
        return list(names)
    step = len(names) / count
    return [names[min(len(names) - 1, round((i + 1) * step) - 1)] for i in range(count)]


def _downsamples(module: nn.Module) -> bool:
    for m in module.modules():
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return True
        quantized_conv = type(m).__module__.startswith("torch.ao.nn") and isinstance(getattr(m, "stride", None), tuple)
        if (isinstance(m, nn.Conv2d) or quantized_conv) and max(m.stride) > 1:
            return True
    return False


_HEAD_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Flatten, nn.Dropout)


def _stage_ends(prefix: str, container: nn.Module, limit: int = 6) -> list[str]:
    """Children of ``container`` that end a resolution stage (the child before a downsampling one)."""
    children = []
    for name, child in container.named_children():
        if isinstance(child, _HEAD_TYPES) or "aux" in name.lower() or name in {"classifier", "fc", "head", "heads"}:
            break
        children.append((f"{prefix}{name}", child))
    ends = [children[i][0] for i in range(len(children) - 1) if _downsamples(children[i + 1][1])]
    if children:
        ends.append(children[-1][0])
    return _evenly(ends, limit)


def _largest_child(model: nn.Module) -> tuple[str, nn.Module] | None:
    total = sum(p.numel() for p in model.parameters()) or 1
    best = max(
        ((n, c) for n, c in model.named_children() if isinstance(c, (nn.Sequential, nn.ModuleList))),
        key=lambda nc: sum(p.numel() for p in nc[1].parameters()),
        default=None,
    )
    if best is not None and sum(p.numel() for p in best[1].parameters()) > 0.5 * total:
        return best
    return None


def _structural_features(model: nn.Module, found: Probe, limit: int = 6, within: str | None = None
                         ) -> list[LayerOutput]:
    """The outermost, last module of each spatial size; a uniform trunk (ViT) gives evenly spaced blocks
    (``within``: only modules inside that one, e.g. a segmenter's encoder)."""
    candidates = [l for l in _eligible(model, found) if within is None or _inside(l.name, within)]
    spans: dict[str, set] = {}  # module -> the grids its spatial outputs (and its descendants') take
    ends: dict[str, tuple[int, int] | None] = {l.name: l.grid for l in found.layers}
    for layer in found.spatial:
        parts = layer.name.split(".")
        for depth in range(1, len(parts) + 1):
            spans.setdefault(".".join(parts[:depth]), set()).add(layer.grid)
    runs: dict[tuple[int, int], list[LayerOutput]] = {}  # outputs of one size, sizes in order of appearance
    for layer in candidates:
        runs.setdefault(layer.grid, []).append(layer)

    def closed(layer: LayerOutput) -> bool:
        """Every enclosing module ends at this size too, or spans several stages (``features``)."""
        parts = layer.name.split(".")
        ancestors = [".".join(parts[:depth]) for depth in range(1, len(parts))]
        return all(ends.get(a) == layer.grid or len(spans.get(a, ())) >= 3 for a in ancestors)

    stages = []
    for run in runs.values():
        ok = [l for l in run if closed(l)]
        stages.append((ok or run)[-1])
    stages = [_innermost_stage(found, layer) for layer in stages]
    if len(stages) >= 3:
        keep = set(_evenly([l.name for l in stages], limit))
        return [l for l in stages if l.name in keep]
    by_name = {l.name: l for l in candidates}
    modules = dict(model.named_modules())
    best: list[str] = []
    for name, module in modules.items():
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) >= 2:
            children = [f"{name}.{child}" if name else child for child, _ in module.named_children()]
            if all(c in by_name for c in children) and len(children) > len(best):
                best = children
    if best:
        return [by_name[n] for n in _evenly(best, 4)]
    return stages


def default_feature_layers(model: nn.Module, *, input_size: int | Sequence[int] | None = None,
                           within: str | None = None) -> list[LayerChoice]:
    """Four to six layers that end the model's stages (where the spatial size changes).

    torchvision's families keep their hand-picked stage outputs; any other model gets them from
    the probe: for each spatial size, the outermost module that ends it; for a trunk that keeps
    one size (a ViT), four evenly spaced blocks. ``within``: only modules inside that module (an encoder).
    """
    found = _probe(model, input_size)
    family = _torchvision_family(model)
    names = _torchvision_features(model, family) if family else None
    modules = dict(model.named_modules())
    if names and all(n in modules for n in names):
        records = [found.get(n) if found is not None else None for n in names]
        if found is None or all(r is not None and len(r.shape) >= 3 for r in records):  # ran (maybe 1x1)
            return [_choice(r) if r is not None and r.spatial else _table_layout(model, family, n)
                    for n, r in zip(names, records)]
    if found is not None:
        chosen = _structural_features(model, found, within=within)
        if chosen:
            return [_choice(l) for l in chosen]
    inner = _largest_child(model)
    names = _stage_ends(f"{inner[0]}.", inner[1]) if inner else _stage_ends("", model)
    return [LayerChoice(n) for n in names if n in modules]


def layer_table(model: nn.Module, input_size: int | Sequence[int] | None = None) -> list[LayerRow]:
    """Every module with its probed output and whether it is the CAM layer or a feature layer.

    Args:
        model: the model.
        input_size: the input's side or (H, W) (default: the size the model declares, else 224).
    """
    found = _probe(model, input_size)
    features = {c.name for c in default_feature_layers(model, input_size=input_size)}
    try:
        cam = pick_cam_layer(model, input_size=input_size).name
    except UnknownLayerError:
        cam = None
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        record = found.get(name) if found is not None else None
        rows.append(LayerRow(name=name, kind=type(module).__name__, shape=record.shape if record else (),
                             output=describe(record) if record else "(did not run)", cam=name == cam,
                             features=name in features))
    return rows


def to_nchw(activation: torch.Tensor, choice: LayerChoice | None = None) -> torch.Tensor:
    """A layer output as a (N, C, H, W) map, reshaped as ``choice`` says.

    Tokens (N, L, C) drop ``choice.prefix`` tokens and fold the rest on ``choice.grid`` (or on
    the square grid they make, when the input size differs from the probe's). Without a
    choice, a 3-d output must be a square grid, or one class token and a square grid.
    """
    layout = choice.layout if choice is not None else "nchw"
    if activation.ndim == 4:
        return activation.permute(0, 3, 1, 2) if layout == "nhwc" else activation
    if activation.ndim == 3:
        n, tokens, channels = activation.shape
        if choice is not None and layout == "tokens":
            patches = tokens - choice.prefix
            if choice.grid is not None and choice.grid[0] * choice.grid[1] == patches:
                gh, gw = choice.grid
            else:
                side = math.isqrt(max(patches, 0))
                if side * side != patches or side == 0:
                    raise LayerError(f"cannot fold {tokens} tokens of layer {choice.name!r} into a grid after "
                                     f"{choice.prefix} prefix tokens: pass another layer=", parameter="layer")
                gh = gw = side
            grid = activation[:, choice.prefix:, :]
        else:
            side = math.isqrt(tokens)
            if side * side != tokens:
                side = math.isqrt(tokens - 1)
                if side * side != tokens - 1:
                    raise LayerError(f"cannot arrange {tokens} tokens as a square grid: pass another layer=",
                                     parameter="layer")
                activation = activation[:, 1:, :]
            gh = gw = side
            grid = activation
        return grid.reshape(n, gh, gw, channels).permute(0, 3, 1, 2)
    if activation.ndim == 2:
        return activation[:, :, None, None]
    raise LayerError(f"cannot show an activation of shape {tuple(activation.shape)} as a map: pass another layer=",
                     parameter="layer")
