"""One forward pass that serves every analyzer that can share it.

``run_forward`` runs the model once, in eval mode, inside :func:`introspect.hooks.inspecting`.
It keeps the logits, the outputs of the layers asked for, and, when a gradient
layer is named, makes that layer's output a leaf of a fresh autograd graph: the
trunk before it runs without recording anything, and only the head after it is
recorded. ``ForwardPass.gradients`` then takes the gradients of any class scores
with respect to that leaf with ``torch.autograd.grad``: no parameter gradients,
nothing written to ``.grad``, no backward through the trunk, every class of every
image in one batched call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import LayerError, StateError, UnknownLayerError, UsageError
from .hooks import first_tensor, inspecting
from .layers import resolve_layer
from .loaded import device_and_dtype

__all__ = ["ForwardPass", "run_forward"]


@dataclass
class ForwardPass:
    """What one forward pass produced."""

    logits: torch.Tensor  # (N, classes), detached: the first tensor of the output
    activations: dict[str, torch.Tensor]  # layer name -> its output (first tensor, first call), detached
    grad_layer: str | None = None
    output: object = None  # the model's own output (RAFT: its list of flow estimates), detached
    _leaf: torch.Tensor | None = field(default=None, repr=False)
    _scores: torch.Tensor | None = field(default=None, repr=False)
    _cached: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # (classes, gradients)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits, (N, classes)."""
        return torch.softmax(self.logits.float(), dim=-1)

    def gradients(self, classes: torch.Tensor) -> torch.Tensor:
        """Gradients of class scores at the gradient layer, every class of every image in one call.

        Args:
            classes: ``(N, k)`` class indices per image.

        Returns:
            ``d score[n, classes[n, j]] / d activation`` stacked as ``(k, N, *activation.shape[1:])``
            (cached: the same classes again cost nothing).

        Raises:
            StateError: the pass recorded no gradient layer, or was released.
        """
        if self._leaf is None or self._scores is None:
            raise StateError("this forward pass recorded no gradient layer (or was released): run "
                             "run_forward(..., grad_layer=NAME) and take the gradients before release()")
        classes = classes.to(self._scores.device)
        if self._cached is not None and torch.equal(self._cached[0], classes):  # several methods, one backward
            return self._cached[1]
        k = classes.shape[1]
        one_hot = torch.zeros((k, *self._scores.shape), dtype=self._scores.dtype, device=self._scores.device)
        one_hot.scatter_(2, classes.T.unsqueeze(-1), 1.0)
        try:
            (grads,) = torch.autograd.grad(self._scores, self._leaf, one_hot, retain_graph=True,
                                           is_grads_batched=True)
        except RuntimeError:  # an op without a batching rule: one vector-Jacobian product per class
            grads = torch.stack([
                torch.autograd.grad(self._scores, self._leaf, one_hot[j], retain_graph=True)[0] for j in range(k)
            ])
        self._cached = (classes.clone(), grads)
        return grads

    def release(self) -> None:
        """Drop the recorded graph (the gradients cannot be taken after this)."""
        self._leaf = None
        self._scores = None
        self._cached = None


def run_forward(
    model: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    capture: Sequence[str] = (),
    grad_layer: str | None = None,
) -> ForwardPass:
    """Run ``model`` once on ``inputs`` in eval mode; capture layer outputs and prepare gradients.

    Args:
        model: the module (comes back untouched).
        inputs: ``(N, 3, H, W)`` normalised images or ``(N, 3, T, H, W)`` clips, or a tuple of such
            tensors for a model that takes several (RAFT's two frames); moved to the model's device and dtype.
        capture: names of the layers whose outputs to keep.
        grad_layer: the layer whose gradients :meth:`ForwardPass.gradients` will take (only
            the part of the model after it is recorded), or None.

    Returns:
        The :class:`ForwardPass`; call :meth:`~ForwardPass.release` when done with its gradients.

    Raises:
        UnknownLayerError: a name that is not a layer of the model, or does not run.
        LayerError: the output does not depend on ``grad_layer``.
        UsageError: ``grad_layer`` inside ``torch.inference_mode()``.
    """
    modules = {name: resolve_layer(model, name) for name in capture}
    grad_module = resolve_layer(model, grad_layer) if grad_layer else None
    if grad_module is not None and torch.is_inference_mode_enabled():
        raise UsageError("gradient CAM methods cannot run inside torch.inference_mode(): call them outside it "
                         "(introspect records only the head's graph), or use eigencam/fem")
    activations: dict[str, torch.Tensor] = {}
    leaf: dict[str, torch.Tensor] = {}
    device, dtype = device_and_dtype(model)
    args = tuple(t.to(device=device, dtype=dtype) for t in (inputs if isinstance(inputs, tuple) else (inputs,)))

    def capturing(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if name in activations:  # the first call (RAFT's encoder runs once on both frames)
                return
            tensor = first_tensor(output).detach()
            activations[name] = tensor.dequantize() if tensor.is_quantized else tensor  # int8 layers
        return hook

    def make_leaf(module: nn.Module, args: tuple, output: object):
        tensor = first_tensor(output)
        start = tensor.detach().requires_grad_(True)
        leaf["tensor"] = start
        torch.set_grad_enabled(True)  # record from here on: the head only
        passed = start.clone()  # the head may work on it in place (DenseNet's relu_), which a leaf forbids
        if isinstance(output, torch.Tensor):
            return passed
        if isinstance(output, tuple) and output and output[0] is tensor:
            return (passed, *output[1:])
        return output

    with inspecting(model) as scope:
        for name, module in modules.items():
            scope.forward_hook(module, capturing(name))
        if grad_module is not None:
            scope.forward_hook(grad_module, make_leaf)
            with torch.no_grad():
                output = model(*args)
        else:
            with torch.inference_mode():
                output = model(*args)
    scores = first_tensor(output)
    ran = set(activations) | ({grad_layer} if "tensor" in leaf else set())
    silent = [name for name in [*modules, grad_layer] if name and name not in ran]
    if silent:
        which = "grad_layer" if silent[0] == grad_layer and silent[0] not in modules else "capture"
        raise UnknownLayerError(f"layer {silent[0]!r} (in {which}=) does not run in the model's forward pass "
                                "(in eval mode): pick another", parameter=which)
    if grad_layer is not None and grad_layer in modules:
        activations[grad_layer] = leaf["tensor"].detach()
    result = ForwardPass(logits=scores.detach(), activations=activations, grad_layer=grad_layer,
                         output=output if grad_module is None else _detached(output))
    if grad_module is not None:
        if not scores.requires_grad:
            raise LayerError(f"grad_layer={grad_layer!r}: the model's output does not depend on this layer, pick "
                             "another", parameter="grad_layer")
        result._leaf = leaf["tensor"]
        result._scores = scores
    return result


def _detached(output: object) -> object:
    """``output`` with its tensors detached (a tensor, or a list / tuple of them)."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, (list, tuple)):
        return type(output)(_detached(o) for o in output)
    return output
