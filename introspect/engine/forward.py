"""The one forward pass: every task's model runs through :func:`run_forward`.

``run_forward`` runs the model once, in eval mode, inside :func:`introspect.hooks.inspecting`
(the model comes back untouched). It takes what the model takes: an (N, 3, H, W) batch, an
(N, 3, T, H, W) clip, a list of (3, H, W) images (a detector), or a tuple of tensors (RAFT's two
frames). It keeps:

- ``capture``: the outputs of any layers (the first tensor of their first call, detached, int8
  dequantized);
- ``grad_layer``: the layer whose output becomes the *leaves* of a fresh autograd graph (the
  leaf step, :func:`introspect.hooks.make_leaves`): its tensor, its tuple's first tensor, or
  every map of the dict of maps it returns (an FPN's levels); :data:`FEATURE_MAPS` names the
  last direct child of the model that returns a dict of (N, C, H, W) maps (the features a
  detector's or segmenter's heads read). With ``record`` the trunk before it runs without
  recording anything and only what follows is recorded; without, the leaves are its values.
  :data:`INPUT` makes the input tensor itself the leaf and records the whole model (saliency);
- ``extra_leaves``: layers whose outputs are differentiated too: they stay in the recorded graph and
  join the leaves under their names (saliency's Grad-CAM layer beside the input);
- ``prepare``: a callback that sets hooks or attributes through the pass's own scope (saliency's
  guided ReLUs), removed with the engine's when the pass ends;
- ``raw``: the raw outputs of modules (a detector's proposals), ``canvas``: the padded size and
  resized image sizes of a detector's ``ImageList``; ``settings`` are attributes set for this
  pass only (a detector's ``score_thresh``).

:func:`gradients` then takes the gradients of (N, k) target scores with respect to every leaf
with one batched ``torch.autograd.grad``: no parameter gradients, nothing written to ``.grad``,
no backward through the trunk, every target of every image in one call.
:meth:`ForwardPass.gradients` scores the targets (:mod:`introspect.engine.targets`) on the output first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import LayerError, StateError, UnknownLayerError, UsageError
from ..hooks import ModelScope, first_tensor, inspecting, is_map_dict, make_leaves
from ..loaded import device_and_dtype
from ..layers import resolve_layer
from .targets import as_targets, target_scores

__all__ = ["FEATURE_MAPS", "INPUT", "ForwardPass", "run_forward", "gradients", "target_gradients", "batching_pays"]

FEATURE_MAPS = "<feature maps>"
"""``grad_layer=FEATURE_MAPS``: the last direct child of the model whose output is a dict of (N, C, H, W) maps."""

INPUT = "<input>"
"""``grad_layer=INPUT``: the model's input tensor is the leaf (level ``""``) and the whole model is recorded."""

Canvas = tuple[tuple[int, int], tuple[tuple[int, int], ...]]


@dataclass
class ForwardPass:
    """What one forward pass produced."""

    output: Any  # the model's output; recorded from the leaves on when ``recorded``
    activations: dict[str, torch.Tensor]  # captured layer -> first tensor of its first call, detached
    leaves: dict[str, torch.Tensor] = field(default_factory=dict)  # level ("" for a tensor) -> leaf
    layer: str | None = None  # the layer whose output the leaves are
    recorded: bool = False  # the leaves require grad and what follows them was recorded
    canvas: Canvas | None = None  # a detector's (padded size, resized image sizes)
    raw: dict[str, Any] = field(default_factory=dict)  # module name -> its raw output (``raw=``)
    _cached: tuple[tuple, dict[str, torch.Tensor]] | None = field(default=None, repr=False)

    @property
    def levels(self) -> tuple[str, ...]:
        """Names of the leaves (an FPN's levels; ``("",)`` for a single tensor)."""
        return tuple(self.leaves)

    def maps(self) -> dict[str, torch.Tensor]:
        """The leaves' values, detached: level -> (N, C, ...)."""
        return {name: leaf.detach() for name, leaf in self.leaves.items()}

    @property
    def logits(self) -> torch.Tensor:
        """The first tensor of the output, detached: a classifier's (N, classes) scores."""
        return first_tensor(self.output).detach()

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits, (N, classes)."""
        return torch.softmax(self.logits.float(), dim=-1)

    def gradients(self, targets: Sequence[Sequence[Any]] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Gradients of every target of every image at every leaf, in one batched backward.

        Args:
            targets: per image, the targets to explain (:mod:`introspect.engine.targets`: ``ClassScore``,
                ``BoxScore``, ``PixelClass``, ...), each called on that image's output; or an (N, k)
                tensor of class indices (``ClassScore`` targets).

        Returns:
            level -> ``(k, N, *leaf.shape[1:])``: d target j of image n / d leaf (zeros where image n has
            fewer than k targets); :func:`gradients` of :func:`~introspect.engine.targets.target_scores`. The same
            targets again cost nothing.

        Raises:
            StateError: the pass recorded no graph, or was released.
        """
        if not self.recorded or not self.leaves:
            raise StateError("this forward pass recorded no graph (or was released): run run_forward(..., "
                             "grad_layer=NAME) and take the gradients before release()")
        rows = as_targets(targets)
        key = tuple(tuple(row) for row in rows)
        if self._cached is not None and self._cached[0] == key:  # several methods, one backward
            return self._cached[1]
        grads = gradients(target_scores(rows, self.output), self.leaves)
        self._cached = (key, grads)
        return grads

    def release(self) -> None:
        """Drop the recorded graph, the leaves and the raw outputs (the gradients cannot be taken after this)."""
        self.leaves = {}
        self.raw = {}
        self._cached = None
        self.output = _detached(self.output)


def gradients(scores: torch.Tensor, leaves: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """d scores[n, j] / d leaf, for every target j at once: name -> (k, N, *leaf.shape[1:]).

    ``scores`` is (N, k): target j of image n (0 where an image has fewer targets). One
    ``torch.autograd.grad`` with ``is_grads_batched=True`` over the k targets; where an op has no
    batching rule, one vector-Jacobian product per target on the same graph. A leaf the scores do not
    reach gets zeros.
    """
    names = list(leaves)
    tensors = [leaves[n] for n in names]
    n, k = scores.shape
    if k == 0 or not scores.requires_grad:
        return {name: torch.zeros((k, *leaf.shape), dtype=leaf.dtype, device=leaf.device)
                for name, leaf in zip(names, tensors)}
    grads = None
    if k > 1 and batching_pays(scores):
        eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
        one_hot = eye[:, None, :].expand(k, n, k).contiguous()  # one_hot[j] picks column j of every row
        # allow_unused without materialize_grads: an unused leaf's materialized zeros would lack the k axis
        try:
            grads = torch.autograd.grad(scores, tensors, one_hot, retain_graph=True, is_grads_batched=True,
                                        allow_unused=True)
        except (RuntimeError, NotImplementedError):  # an op without a batching rule at all
            grads = None
    if grads is None:  # one product per target
        per_target = list(target_gradients(scores, leaves))
        return {name: torch.stack([g[name] for g in per_target]) for name in names}
    return {name: grad if grad is not None else torch.zeros((k, *leaf.shape), dtype=leaf.dtype, device=leaf.device)
            for name, leaf, grad in zip(names, tensors, grads)}


def target_gradients(scores: torch.Tensor, leaves: Mapping[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Per target j of the (N, k) ``scores``, in order: name -> d scores[n, j] / d leaf, (N, *leaf.shape[1:]), one
    vector-Jacobian product each (the graph is kept). A caller that reduces each target's gradients before asking
    for the next never holds all k of them at once, as :func:`gradients` does. A leaf the scores do not reach gets
    zeros."""
    names = list(leaves)
    tensors = [leaves[n] for n in names]
    n, k = scores.shape
    for j in range(k):
        grads: tuple = (None,) * len(tensors)
        if scores.requires_grad:
            picked = torch.zeros((n, k), dtype=scores.dtype, device=scores.device)
            picked[:, j] = 1
            grads = torch.autograd.grad(scores, tensors, picked, retain_graph=True, allow_unused=True)
        yield {name: grad if grad is not None else torch.zeros_like(leaf)
               for name, grad, leaf in zip(names, grads, tensors)}


_MATRIX_PRODUCTS = ("AddmmBackward", "MmBackward", "BmmBackward", "LinearBackward")


def batching_pays(scores: torch.Tensor) -> bool:
    """Whether one batched backward over the targets beats one backward per target: when the recorded graph
    holds a matrix product (a linear layer), which it batches into one product, reading a large weight once
    instead of k times (vgg11's classifier). ``is_grads_batched`` runs on torch's legacy vmap, which has no
    batching rule for a convolution's, a batch norm's or a resize's backward: it loops over the targets and
    concatenates, which a convolutional head (a segmenter's) pays for at 2x a plain loop (lraspp, 16 images,
    3 targets: 158 ms against 70 ms)."""
    seen: set[int] = set()
    stack = [scores.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        name = type(node).__name__
        if name.startswith(_MATRIX_PRODUCTS):
            return True
        if name != "AccumulateGrad":
            stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def _canvas(value: Any) -> Canvas | None:
    """(padded size, resized image sizes) from an ``ImageList`` (a detector's transform output)."""
    item = value[0] if isinstance(value, tuple) and value else value
    tensors, sizes = getattr(item, "tensors", None), getattr(item, "image_sizes", None)
    if isinstance(tensors, torch.Tensor) and sizes is not None:
        return (int(tensors.shape[-2]), int(tensors.shape[-1])), tuple((int(h), int(w)) for h, w in sizes)
    return None


def _moved(inputs: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device=device, dtype=dtype)
    return type(inputs)(_moved(item, device, dtype) for item in inputs)


def run_forward(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    capture: Sequence[str] = (),
    grad_layer: str | None = None,
    *,
    record: bool = True,
    raw: Sequence[str] = (),
    canvas: bool = False,
    settings: Sequence[tuple[object, str, object]] = (),
    names: Mapping[str, str] | None = None,
    extra_leaves: Sequence[str] = (),
    prepare: Callable[[ModelScope], None] | None = None,
) -> ForwardPass:
    """Run ``model`` once on ``inputs`` in eval mode; capture layer outputs and make the leaves.

    Args:
        model: the module (comes back untouched).
        inputs: ``(N, 3, H, W)`` images or ``(N, 3, T, H, W)`` clips (``model(inputs)``), a list of
            ``(3, H, W)`` images (``model(list)``: a detector), or a tuple of tensors (``model(*inputs)``:
            RAFT's two frames); moved to the model's device and dtype.
        capture: names of the layers whose outputs to keep (:attr:`ForwardPass.activations`).
        grad_layer: the layer whose output becomes the leaves (a tensor, a tuple's first tensor, or a
            dict of maps), :data:`FEATURE_MAPS`, :data:`INPUT` (``inputs``, one tensor, is the leaf), or None.
        record: make the leaves require grad and record what follows them (:meth:`ForwardPass.gradients`);
            False: the leaves are plain values and nothing is recorded.
        raw: names of modules whose raw outputs to keep (:attr:`ForwardPass.raw`).
        canvas: keep the padded size and resized image sizes of an ``ImageList`` a direct child returns.
        settings: ``(object, attribute, value)`` set for this pass only (e.g. a detector's ``score_thresh``).
        names: what the caller calls ``capture``, ``grad_layer`` and ``extra_leaves`` (for the errors), e.g.
            ``{"grad_layer": "layer"}``.
        extra_leaves: layers after ``grad_layer`` whose output (the first tensor of their last call) is differentiated
            too: it stays in the recorded graph (a tensor output goes on as a clone, so that a later in-place op
            cannot rewrite it) and joins :attr:`ForwardPass.leaves` under the layer's name.
        prepare: called with the pass's :class:`~introspect.hooks.ModelScope` before the model runs; the hooks and
            attributes it sets through the scope hold for this pass only (e.g. guided ReLUs' backward hooks).

    Returns:
        The :class:`ForwardPass`; call :meth:`~ForwardPass.release` when done with its gradients.

    Raises:
        UnknownLayerError: a name that is not a layer of the model, that does not run, or (``grad_layer``)
            whose output holds no tensor to explain; no direct child returns a dict of maps (``FEATURE_MAPS``).
        LayerError: the output does not depend on ``grad_layer``.
        UsageError: a recorded pass inside ``torch.inference_mode()``.
    """
    said = {"capture": "capture", "grad_layer": "grad_layer", "extra_leaves": "extra_leaves", **(names or {})}
    modules = {name: resolve_layer(model, name) for name in capture}
    raw_modules = {name: resolve_layer(model, name) for name in raw}
    extra_modules = {name: resolve_layer(model, name) for name in extra_leaves}
    auto, at_input = grad_layer == FEATURE_MAPS, grad_layer == INPUT
    target = resolve_layer(model, grad_layer) if grad_layer is not None and not auto and not at_input else None
    recording = record and grad_layer is not None
    if recording and torch.is_inference_mode_enabled():
        if at_input:
            raise UsageError("input gradients (saliency) cannot be taken inside torch.inference_mode(): call it "
                             "outside that block")
        raise UsageError("gradient CAM methods cannot run inside torch.inference_mode(): call them outside it "
                         "(introspect records only what follows the explained layer), or use eigencam/fem")
    activations: dict[str, torch.Tensor] = {}
    found: dict[str, Any] = {}
    raw_outputs: dict[str, Any] = {}
    device, dtype = device_and_dtype(model)
    args = _moved(inputs, device, dtype)
    if at_input:
        if not isinstance(args, torch.Tensor):
            raise UsageError(f"{said['grad_layer']}=INPUT takes one input tensor, not {type(inputs).__name__}: "
                             "name a layer instead", parameter=said["grad_layer"])
        args = args.detach().clone().requires_grad_(recording)
        found["layer"], found["leaves"] = INPUT, {"": args}

    def capturing(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if name not in activations:  # the first call (RAFT's encoder runs once on both frames)
                tensor = first_tensor(output).detach()
                activations[name] = tensor.dequantize() if tensor.is_quantized else tensor  # int8 layers
        return hook

    def keeping(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            raw_outputs.setdefault(name, output)
        return hook

    def leaf_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            made = make_leaves(output, recording)
            if made is None:
                raise UnknownLayerError(f"{said['grad_layer']}={name!r} gives {type(output).__name__}, not a tensor "
                                        "or a dict of (N, C, H, W) maps: pick another", parameter=said["grad_layer"])
            found["layer"], found["leaves"] = name, made[0]
            return made[1]
        return hook

    def extra_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            try:
                found.setdefault("extra", {})[name] = first_tensor(output)
            except TypeError:
                raise UnknownLayerError(f"{said['extra_leaves']}={name!r} gives {type(output).__name__}, not a "
                                        "tensor: pick another", parameter=said["extra_leaves"]) from None
            return output.clone() if isinstance(output, torch.Tensor) else None
        return hook

    def child_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if canvas and "canvas" not in found:
                value = _canvas(output)
                if value is not None:
                    found["canvas"] = value
            if auto and is_map_dict(output):  # the last such child wins
                made = make_leaves(output, recording)
                found["layer"], found["leaves"] = name, made[0]
                return made[1]
            return None
        return hook

    with inspecting(model) as scope:
        for obj, attribute, value in settings:
            scope.set_attribute(obj, attribute, value)
        if prepare is not None:
            prepare(scope)
        if auto or canvas:
            for name, child in model.named_children():
                scope.forward_hook(child, child_hook(name))
        for name, module in modules.items():
            scope.forward_hook(module, capturing(name))
        for name, module in raw_modules.items():
            scope.forward_hook(module, keeping(name))
        if target is not None:
            scope.forward_hook(target, leaf_hook(grad_layer))
        for name, module in extra_modules.items():
            scope.forward_hook(module, extra_hook(name))
        if grad_layer is None:
            with torch.inference_mode():
                output = _call(model, args)
        else:  # from the input on, or (no_grad) from the leaves on, which switch recording on
            with torch.enable_grad() if at_input and recording else torch.no_grad():
                output = _call(model, args)
    silent = [name for name in modules if name not in activations] + \
        [name for name in raw_modules if name not in raw_outputs]
    if silent:
        raise UnknownLayerError(f"layer {silent[0]!r} (in {said['capture']}=) does not run in the model's forward "
                                "pass (in eval mode): pick another", parameter=said["capture"])
    silent = [name for name in extra_modules if name not in found.get("extra", {})]
    if silent:
        raise UnknownLayerError(f"{said['extra_leaves']}={silent[0]!r} does not run in the model's forward pass (in "
                                "eval mode): pick another", parameter=said["extra_leaves"])
    if grad_layer is not None and "leaves" not in found:
        if auto:
            raise UsageError(f"{type(model).__name__} has no direct child that outputs a dict of (N, C, H, W) feature "
                             f"maps: name the layer to explain with {said['grad_layer']}=", parameter=said["grad_layer"])
        raise UnknownLayerError(f"{said['grad_layer']}={grad_layer!r} does not run in the model's forward pass (in eval "
                                "mode): pick another", parameter=said["grad_layer"])
    leaves = {**found.get("leaves", {}), **found.get("extra", {})}
    if target is not None and grad_layer in modules and "" in leaves:
        activations[grad_layer] = leaves[""].detach()
    if recording and not auto and not any(t.requires_grad for t in _tensors(output)):
        raise LayerError(f"{said['grad_layer']}={grad_layer!r}: the model's output does not depend on this layer, "
                         "pick another", parameter=said["grad_layer"])
    return ForwardPass(output=output, activations=activations, leaves=leaves, layer=found.get("layer"),
                       recorded=recording, canvas=found.get("canvas"), raw=raw_outputs)


def _call(model: nn.Module, args: Any) -> Any:
    return model(*args) if isinstance(args, tuple) else model(args)


def _tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in ``output`` (a tensor, or lists, tuples and dicts of them)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


def _detached(output: Any) -> Any:
    """``output`` with its tensors detached (a tensor, or lists, tuples and dicts of them)."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, Mapping):
        try:
            return type(output)((key, _detached(value)) for key, value in output.items())
        except TypeError:
            return {key: _detached(value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        try:
            return type(output)(_detached(o) for o in output)
        except TypeError:  # a namedtuple
            return type(output)(*(_detached(o) for o in output))
    return output
