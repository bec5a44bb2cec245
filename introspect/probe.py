"""Probe a model once: every module's output shape and layout, from one forward pass.

:func:`probe` runs the model on one image-shaped input with a forward hook on every
module and records, in the order the modules finish, the shape of each output and its
layout:

- ``nchw``: (N, C, H, W) with H, W > 1 on a grid that fits the input (a feature map);
- ``nhwc``: (N, H, W, C), channels last (Swin, timm ConvNeXt blocks);
- ``tokens``: (N, L, C) with L = prefix tokens (class, distillation, register) + a patch
  grid gh x gw; the grid is one the model showed in an earlier feature map (its patch
  embedding) or one the input size implies for a whole patch size;
- ``other``: anything else (pooled vectors, logits, attention matrices, window batches).

The forward pass runs on the meta device when the model allows it (parameters swapped
for meta tensors with :func:`torch.func.functional_call`: no arithmetic, no copy of the
weights); otherwise on one small random input under ``torch.no_grad``. Both run
inside :func:`introspect.hooks.inspecting`, so the model comes back untouched, with the model's
own hooks set aside (this extra pass is not one of the caller's forwards). Probes
are cached per model and input size, so one run probes once.

:func:`patch_gradients` answers the one question shapes cannot: do the patch tokens of
a layer's output reach the scores at all (a ViT that classifies from its class token
ignores the patch tokens of its final norm)?
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ArgumentTypeError
from .hooks import first_tensor, inspecting, make_leaves

__all__ = ["LayerOutput", "Probe", "probe", "patch_gradients", "model_input_size", "describe", "LAYOUTS"]

LAYOUTS = ("nchw", "nhwc", "tokens", "other")
MAX_PREFIX = 16  # class + distillation + register tokens a token layout may carry


@dataclass(frozen=True)
class LayerOutput:
    """One module's output in the probe's forward pass (its last call when it ran several times)."""

    name: str
    kind: str  # the module's class name
    shape: tuple[int, ...]  # () when the output held no tensor
    layout: str  # one of LAYOUTS
    grid: tuple[int, int] | None = None  # (gh, gw) of the spatial layouts
    prefix: int = 0  # tokens before the patch grid (tokens layout)
    start: int = 0  # event counter when the module's (last) call began
    end: int = 0  # event counter when it finished: the execution order
    calls: int = 1
    passthrough: bool = False  # returned its input unchanged (Identity, eval-mode Dropout; not in-place ops)
    rearranges: bool = False  # no parameters, and only permutes its input's dimensions (a Permute module)
    alias_of: str | None = None  # the module that finished just before and returned the same tensor
    structured: bool = False  # returned a ModelOutput (a wrapper: its first tensor is not what the head reads)
    fed: bool = True  # was given a float tensor (False: made from sizes and masks, as DETR's sine position embedding)

    @property
    def spatial(self) -> bool:
        """Whether the output is a map over the image (nchw, nhwc or tokens)."""
        return self.layout != "other"

    @property
    def channels(self) -> int | None:
        """The channel count of a spatial output."""
        if self.layout == "nchw":
            return self.shape[1]
        if self.layout in ("nhwc", "tokens"):
            return self.shape[-1]
        return None


@dataclass(frozen=True)
class Probe:
    """Every module's output in one forward pass, in execution order."""

    input_size: tuple[int, int]
    layers: tuple[LayerOutput, ...]  # ordered by ``end``
    mode: str  # "meta" or "real": how the forward pass ran
    seconds: float

    def get(self, name: str) -> LayerOutput | None:
        """The record of module ``name``, or None when it did not run."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        return None

    @property
    def spatial(self) -> list[LayerOutput]:
        """The layers whose output is a map, in execution order."""
        return [layer for layer in self.layers if layer.spatial]


def model_input_size(model: nn.Module, default: int = 224) -> tuple[int, int]:
    """The input size a model declares (its patch embedding, timm's pretrained_cfg, HF config, torchvision
    ViT), else ``default``."""
    embed = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(embed, (tuple, list)) and len(embed) == 2 and all(isinstance(s, int) for s in embed):
        return int(embed[0]), int(embed[1])
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (tuple, list)) and len(cfg["input_size"]) == 3:
        return int(cfg["input_size"][1]), int(cfg["input_size"][2])
    for owner in (model, getattr(model, "model", None)):
        config = getattr(owner, "config", None)
        size = getattr(config, "image_size", None)
        if size is not None:
            return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return size, size
    return default, default


def _size(input_size: int | Sequence[int] | None, model: nn.Module) -> tuple[int, int]:
    if input_size is None:
        return model_input_size(model)
    if isinstance(input_size, int):
        return input_size, input_size
    dims = tuple(int(s) for s in input_size)
    return dims[-2], dims[-1]


def _reachable(side: int, full: int) -> bool:
    """Whether a side of ``full`` pixels can shrink to ``side`` by a whole stride (floor or ceil), or by a
    power-of-two stride and a few unpadded convolutions (Inception's 299 -> 147 -> 73 -> 35)."""
    for stride in range(1, full + 1):
        if side in (full // stride, -(-full // stride)):
            return True
        if stride & (stride - 1) == 0 and 0 <= full // stride - side <= 3:
            return True
    return False


def _fits(h: int, w: int, size: tuple[int, int]) -> bool:
    """A grid h x w that an image of ``size`` can downsample to (same aspect, a reachable size)."""
    height, width = size
    return (1 < h <= height and 1 < w <= width and abs(h * width - w * height) <= max(height, width)
            and _reachable(h, height) and _reachable(w, width))


def _whole_patch_grids(size: tuple[int, int]) -> list[tuple[int, int]]:
    height, width = size
    return [(height // p, width // p) for p in range(1, min(height, width) + 1)
            if height % p == 0 and width % p == 0 and height // p > 1 and width // p > 1]


def _token_grid(length: int, size: tuple[int, int], grids: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], int] | None:
    """(grid, prefix) for ``length`` tokens: the fewest prefix tokens over the grids seen before and those a
    whole patch size implies (a seen grid first on a tie: Cvt's 1 + 4x4 tokens are not 13 + a 2x2 grid seen
    in its attention's strided keys)."""
    best = None
    for candidates, limit in ((grids, MAX_PREFIX), (_whole_patch_grids(size), 8)):
        for gh, gw in candidates:
            prefix = length - gh * gw
            if 0 <= prefix <= limit and gh > 1 and gw > 1 and (best is None or prefix < best[1]):
                best = ((gh, gw), prefix)
    return best


_WEIGHT_MAKERS = ("dropout", "softmax", "identity", "attn", "attention")  # modules that give attention weights


def _classify(shape: tuple[int, ...], batch: int, size: tuple[int, int], grids: list[tuple[int, int]],
              lengths: set[int], kind: str = "") -> tuple[str, tuple[int, int] | None, int]:
    if len(shape) < 3 or shape[0] != batch:
        return "other", None, 0
    if len(shape) == 4:
        _, a, b, c = shape
        # (N, heads, L, L): attention weights, not a map (a convolution's or a norm's output is a map)
        attention = b == c and b in lengths and (not kind or any(w in kind.lower() for w in _WEIGHT_MAKERS))
        nchw = _fits(b, c, size) and not attention
        nhwc = _fits(a, b, size) and not (a == b and a in lengths)
        if nchw and nhwc:  # (N, 7, 7, 7): believe the grid seen before, else NCHW
            nchw = not ((a, b) in grids and (b, c) not in grids)
            nhwc = not nchw
        if nchw:
            return "nchw", (b, c), 0
        if nhwc:
            return "nhwc", (a, b), 0
        return "other", None, 0
    if len(shape) == 3:
        found = _token_grid(shape[1], size, grids)
        if found is not None:
            return "tokens", found[0], found[1]
    return "other", None, 0


def _first(output: object) -> torch.Tensor | None:
    """The tensor a module produced (``hooks.first_tensor``), or None when it produced none."""
    try:
        return first_tensor(output)
    except ArgumentTypeError:
        return None


def _is_model_output(output: object) -> bool:
    """A Hugging Face ``ModelOutput`` (a backbone wrapper's several named outputs), told by its class."""
    return any(cls.__name__ == "ModelOutput" for cls in type(output).__mro__[1:])


def _example(model: nn.Module, size: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    where = device if device is not None else (first.device if first is not None else "cpu")
    if str(where) == "meta":
        return torch.empty(1, 3, *size, dtype=dtype, device=where)
    # its own generator: probing never draws from the global RNG (a watched training run stays bit-identical)
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device=where, dtype=dtype)


def _version(tensor: torch.Tensor | None) -> int | None:
    try:
        return tensor._version if tensor is not None else None
    except RuntimeError:  # an inference tensor has no version counter
        return None


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def _computes(hook: object) -> bool:
    """A hook that is part of how the model computes its output (transformers 5 records hidden states with
    forward hooks that its heads then read), not an observer of the caller's."""
    function = getattr(hook, "func", hook)  # functools.partial
    return getattr(function, "__module__", "").startswith("transformers")


def _quiet(scope, model: nn.Module) -> None:
    """Set the model's own hooks aside for the scope (the probe's extra pass is not the caller's forward), all
    but those the model computes with."""
    for module in model.modules():
        for name in _HOOK_DICTS:
            current = getattr(module, name, None)
            if isinstance(current, dict) and current:
                kept = type(current)()
                kept.update((key, hook) for key, hook in current.items() if _computes(hook))
                scope.set_attribute(module, name, kept)


def _run_hooked(model: nn.Module, run) -> dict[str, dict]:
    """Run ``run()`` with hooks on every module; raw records by name."""
    records: dict[str, dict] = {}
    counter = [0]
    previous: list = [None, None]  # (name, output tensor) of the module that finished last

    def pre(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            counter[0] += 1
            record = records.setdefault(name, {"calls": 0})
            record["fed"] = any(isinstance(a, torch.Tensor) and a.is_floating_point()
                                for a in (*args, *kwargs.values()))
            record["start"] = counter[0]
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            record["version"] = _version(first)
        return hook

    def post(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            counter[0] += 1
            tensor = _first(output)
            record = records.setdefault(name, {"calls": 0, "start": counter[0]})
            record["calls"] += 1
            record["end"] = counter[0]
            record["kind"] = type(module).__name__
            record["shape"] = tuple(tensor.shape) if tensor is not None else ()
            same = tensor is not None and bool(args) and args[0] is tensor
            record["passthrough"] = same and record.get("version") == _version(tensor)  # in place bumps it
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            record["rearranges"] = (first is not None and tensor is not None and first.shape != tensor.shape
                                    and sorted(first.shape) == sorted(tensor.shape)
                                    and next(module.parameters(), None) is None)
            record["structured"] = _is_model_output(output)
            record["alias_of"] = previous[0] if tensor is not None and previous[1] is tensor else None
            previous[0], previous[1] = name, tensor
        return hook

    with inspecting(model) as scope:
        _quiet(scope, model)
        for name, module in model.named_modules():
            if name:
                scope.forward_pre_hook(module, pre(name), with_kwargs=True)
                scope.forward_hook(module, post(name))
        run()
    previous[1] = None
    return records


def _forward_meta(model: nn.Module, size: tuple[int, int]) -> dict[str, dict]:
    from torch.func import functional_call

    tensors = {name: torch.empty_like(t, device="meta")
               for name, t in [*model.named_parameters(remove_duplicate=False),
                               *model.named_buffers(remove_duplicate=False)]}
    example = _example(model, size, device="meta")
    return _run_hooked(model, lambda: functional_call(model, tensors, (example,), strict=False))


def _forward_real(model: nn.Module, size: tuple[int, int]) -> dict[str, dict]:
    example = _example(model, size)

    def run() -> None:
        with torch.no_grad():  # not inference_mode: in-place ops are told apart by version counters
            model(example)

    return _run_hooked(model, run)


def _build(records: dict[str, dict], size: tuple[int, int]) -> tuple[LayerOutput, ...]:
    done = sorted((r["end"], name) for name, r in records.items() if "end" in r)
    grids: list[tuple[int, int]] = []
    lengths = {r["shape"][1] for r in records.values() if len(r.get("shape", ())) == 3 and r["shape"][0] == 1}
    layers = []
    for _, name in done:
        r = records[name]
        layout, grid, prefix = _classify(r["shape"], 1, size, grids, lengths, r.get("kind", ""))
        if layout in ("nchw", "nhwc") and grid not in grids:
            grids.append(grid)
        layers.append(LayerOutput(name=name, kind=r["kind"], shape=r["shape"], layout=layout, grid=grid,
                                  prefix=prefix, start=r["start"], end=r["end"], calls=r["calls"],
                                  passthrough=r["passthrough"], rearranges=r["rearranges"],
                                  alias_of=r["alias_of"], structured=r.get("structured", False),
                                  fed=r.get("fed", True)))
    return tuple(layers)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextmanager
def _no_collection() -> Iterator[None]:
    """Pause the cyclic garbage collector, as timeit does: the pass allocates many small objects (hook
    handles, meta tensors) and a full collection of a large process heap costs more than the pass."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _fingerprint(model: nn.Module) -> tuple:
    return tuple(id(m) for m in model.modules())


def probe(model: nn.Module, input_size: int | Sequence[int] | None = None) -> Probe:
    """Every module's output shape and layout for one (1, 3, H, W) input; cached per model and size.

    Args:
        model: the model; it comes back untouched (no hooks, same modes, no gradients).
        input_size: the input's side or (H, W); default: the size the model declares, else 224.

    Returns:
        A :class:`Probe`; raises the model's own error when it cannot run on such an input.
    """
    size = _size(input_size, model)
    print_ = _fingerprint(model)
    entry = _CACHE.get(model)
    if entry is not None and entry["fingerprint"] == print_ and size in entry["probes"]:
        return entry["probes"][size]
    started = time.perf_counter()
    with _no_collection():
        try:
            records, mode = _forward_meta(model, size), "meta"
        except Exception:  # a data-dependent op, a tensor attribute off the meta device, a custom kernel
            records, mode = _forward_real(model, size), "real"
    result = Probe(input_size=size, layers=_build(records, size), mode=mode,
                   seconds=time.perf_counter() - started)
    if entry is None or entry["fingerprint"] != print_:
        entry = {"fingerprint": print_, "probes": {}, "flows": {}}
        _CACHE[model] = entry
    entry["probes"][size] = result
    return result


def patch_gradients(model: nn.Module, names: Sequence[str], input_size: int | Sequence[int] | None = None
                    ) -> dict[str, bool]:
    """For each named layer with a token layout: do its patch tokens reach the model's scores?

    One real forward pass on a random (1, 3, H, W) input, recorded only from the earliest of those
    layers on, and one ``torch.autograd.grad`` of the pooled features (the head's input, weighted at
    random) with respect to those layers' outputs (nothing written to ``.grad``). Cached with the probe.

    Returns:
        name -> True when some patch token (after the prefix) gets a non-zero gradient.
    """
    size = _size(input_size, model)
    found = probe(model, size)
    entry = _CACHE[model]
    cache = entry["flows"].setdefault(size, {})
    wanted = [n for n in names if n not in cache]
    if wanted:
        prefixes = {n: found.get(n).prefix if found.get(n) is not None else 0 for n in wanted}
        captured: dict[str, torch.Tensor] = {}

        def keep(name: str):
            def hook(module: nn.Module, args: tuple, output: object) -> None:
                tensor = _first(output)
                if tensor is not None and tensor.requires_grad:
                    captured[name] = tensor
            return hook

        modules = dict(model.named_modules())
        head = _head(model, found)
        first = min(wanted, key=lambda n: found.get(n).end if found.get(n) is not None else 1 << 62)

        def make_leaf(module: nn.Module, args: tuple, output: object):
            """Record from here on: the trunk before the earliest layer asked about runs without a graph."""
            if not isinstance(output, (torch.Tensor, tuple)):  # a layer with a token layout gives a tensor
                return None
            made = make_leaves(output)
            if made is None:
                return None
            captured[first] = made[0][""]
            return made[1]

        example = _example(model, size)
        generator = torch.Generator().manual_seed(0)
        with _no_collection(), inspecting(model) as scope:
            _quiet(scope, model)
            for name in wanted:
                scope.forward_hook(modules[name], keep(name))
            scope.forward_hook(modules[first], make_leaf)
            if head is not None:  # its input: the pooled features (a zero-initialised head passes no gradient)
                scope.forward_hook(modules[head], lambda module, args, output: captured.__setitem__(
                    "", args[0] if args and isinstance(args[0], torch.Tensor) else None))
            with torch.no_grad():
                scores = _first(model(example))
            target = captured.pop("", None)
            target = scores if target is None or not target.requires_grad else target
            order = [n for n in wanted if n in captured]
            grads = []
            if order and target.requires_grad:
                weights = torch.randn(target.shape, generator=generator).to(target.device, torch.float32)
                grads = torch.autograd.grad((target.float() * weights).sum(), [captured[n] for n in order],
                                            allow_unused=True)
        by_name = dict(zip(order, grads))
        for name in wanted:
            grad = by_name.get(name)
            cache[name] = grad is not None and bool(grad[:, prefixes[name]:].abs().amax() > 0)
    return {n: cache[n] for n in names}


def _head(model: nn.Module, found: Probe) -> str | None:
    """The module that computes the scores: the last leaf module to finish with a (1, K) output."""
    modules = dict(model.named_modules())
    for layer in reversed(found.layers):
        module = modules.get(layer.name)
        if len(layer.shape) == 2 and layer.calls == 1 and module is not None and next(module.children(), None) is None:
            return layer.name
    return None


def describe(layer: LayerOutput) -> str:
    """A layer's probed output in words, e.g. ``(1, 197, 384) tokens 1+14x14``."""
    shape = "(" + ", ".join(str(s) for s in layer.shape) + ")" if layer.shape else "(no tensor)"
    if layer.layout == "tokens":
        return f"{shape} tokens {layer.prefix}+{layer.grid[0]}x{layer.grid[1]}"
    if layer.layout in ("nchw", "nhwc"):
        return f"{shape} {layer.layout}"
    return shape

