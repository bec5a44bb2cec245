"""Pieces every non-classification task shares: a plain forward that keeps the raw output,
stage layers found by probing output shapes, and feature-map records from any layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnknownLayerError
from ..hooks import first_tensor, inspecting
from ..layers import resolve_layer

__all__ = ["RawPass", "run_model", "stage_ends", "dequantized"]


@dataclass
class RawPass:
    """What one inference pass produced: the model's own output and the captured layer outputs."""

    output: object
    activations: dict[str, torch.Tensor]


def dequantized(tensor: torch.Tensor) -> torch.Tensor:
    """A float copy of a quantized tensor (int8 activations), the tensor itself otherwise."""
    return tensor.dequantize() if tensor.is_quantized else tensor


def run_model(model: nn.Module, inputs: object, capture: Sequence[str] = ()) -> RawPass:
    """Run ``model`` once in eval mode without autograd; keep its raw output and the ``capture`` layers' outputs.

    Args:
        model: any module; it comes back untouched.
        inputs: what its forward takes (a tensor, or a tuple of positional arguments).
        capture: layer names whose (first tensor) output to keep, detached and dequantized.
    Returns:
        :class:`RawPass`.
    """
    modules = {name: resolve_layer(model, name) for name in capture}
    activations: dict[str, torch.Tensor] = {}

    def capturing(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if name not in activations:  # the first call (RAFT's encoder runs once on both frames)
                activations[name] = dequantized(first_tensor(output).detach())
        return hook

    args = inputs if isinstance(inputs, tuple) else (inputs,)
    with inspecting(model) as scope:
        for name, module in modules.items():
            scope.forward_hook(module, capturing(name))
        with torch.inference_mode():
            output = model(*args)
    silent = [name for name in modules if name not in activations]
    if silent:
        raise UnknownLayerError(f"layer {silent[0]!r} does not run in the model's forward pass (in eval mode): "
                                "pick another (introspect.layers.layer_table lists them)", parameter="layers")
    return RawPass(output=output, activations=activations)


def stage_ends(model: nn.Module, root: str, inputs: object, limit: int = 6) -> list[str]:
    """The children of ``root`` that end a resolution stage, found by running ``inputs`` once.

    A child ends a stage when the next child's output has another spatial size (every
    dimension after the channels: H, W or T, H, W). Children whose output is not a
    tensor of at least 4 dimensions are left out. At most ``limit`` (the deepest ones).
    """
    container = resolve_layer(model, root) if root else model
    children = [(f"{root}.{name}" if root else name, child) for name, child in container.named_children()]
    shapes: dict[str, tuple[int, ...]] = {}

    def recording(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            try:
                tensor = first_tensor(output)
            except TypeError:
                return
            if tensor.ndim >= 4 and name not in shapes:
                shapes[name] = tuple(tensor.shape[2:])
        return hook

    args = inputs if isinstance(inputs, tuple) else (inputs,)
    with inspecting(model) as scope:
        for name, child in children:
            scope.forward_hook(child, recording(name))
        with torch.inference_mode():
            model(*args)
    ran = [name for name, _ in children if name in shapes]
    ends = [name for name, after in zip(ran, ran[1:] + [None]) if after is None or shapes[after] != shapes[name]]
    return ends[-limit:]
