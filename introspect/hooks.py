"""The one context manager every analyzer uses to look inside a model.

``inspecting(model)`` puts the model in eval mode, lets the caller register hooks
through it, and on exit (normal, exception or Ctrl-C) removes those hooks and
puts back each module's ``training`` flag, each parameter's ``requires_grad`` and
``.grad`` (the same tensor object with the same values; ``None`` stays ``None``).
Modules compiled in place (``module.compile()``) run eagerly inside the scope, so
the hooks and eval mode of an analysis never send the caller's compiled code into
recompiling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import ArgumentTypeError

__all__ = ["ModelScope", "inspecting", "first_tensor"]


def first_tensor(output: Any) -> torch.Tensor:
    """The tensor a module produced.

    Args:
        output: a module's output.

    Returns:
        ``output`` itself, or the first tensor of a tuple, list, namedtuple or dict.

    Raises:
        ArgumentTypeError: no tensor in it (also a TypeError).
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise ArgumentTypeError(f"module produced {type(output).__name__}, not a tensor: introspect needs a module "
                            "whose output is (or starts with) a tensor", parameter="output")


class ModelScope:
    """Hooks registered through a scope are removed when the scope ends."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._attributes: list[tuple[object, str, object]] = []

    def forward_hook(self, module: nn.Module, hook: Callable) -> None:
        """Register ``hook(module, args, output)`` for the scope's lifetime."""
        self._handles.append(module.register_forward_hook(hook))

    def forward_pre_hook(self, module: nn.Module, hook: Callable) -> None:
        """Register ``hook(module, args)`` for the scope's lifetime."""
        self._handles.append(module.register_forward_pre_hook(hook))

    def full_backward_hook(self, module: nn.Module, hook: Callable) -> None:
        """Register ``hook(module, grad_input, grad_output)`` for the scope's lifetime."""
        self._attributes.append((module, "_is_full_backward_hook", module._is_full_backward_hook))
        self._handles.append(module.register_full_backward_hook(hook))

    def set_attribute(self, obj: object, name: str, value: object) -> None:
        """Set ``obj.<name> = value`` for the scope's lifetime (e.g. a ReLU's ``inplace`` flag)."""
        self._attributes.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore_attributes(self) -> None:
        """Put back every attribute changed through this scope, newest change first."""
        while self._attributes:
            obj, name, value = self._attributes.pop()
            setattr(obj, name, value)

    def remove_hooks(self) -> None:
        """Remove every hook registered through this scope."""
        while self._handles:
            self._handles.pop().remove()


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def _hook_dicts(module: nn.Module) -> list[dict]:
    return [d for d in (getattr(module, name, None) for name in _HOOK_DICTS) if isinstance(d, dict)]


@contextmanager
def inspecting(model: nn.Module, *, eval_mode: bool = True) -> Iterator[ModelScope]:
    """Scope in which hooks and mode changes on ``model`` are undone on exit.

    Hooks registered in the scope by anyone (e.g. pytorch-grad-cam when the model raises
    before it removes its own) are removed too, and a submodule swapped in place
    (Ablation-CAM's ablation layer) is put back.

    Args:
        model: the module.
        eval_mode: put the model in eval mode for the scope (its modes come back on exit).

    Yields:
        A :class:`ModelScope` to register hooks and attribute changes through.
    """
    training = [(module, module.training) for module in model.modules()]
    children = [(module, dict(module._modules)) for module in model.modules()]
    hook_ids = [(hooks, set(hooks)) for module in model.modules() for hooks in _hook_dicts(module)]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    grads = [(p.grad, None if p.grad is None else p.grad.detach().clone()) for p in params]
    scope = ModelScope(model)
    try:
        for module in model.modules():
            if getattr(module, "_compiled_call_impl", None) is not None:
                scope.set_attribute(module, "_compiled_call_impl", None)
        if eval_mode:
            model.eval()
        yield scope
    finally:
        scope.remove_hooks()
        scope.restore_attributes()
        for module, saved_children in children:
            if [(k, id(v)) for k, v in module._modules.items()] != [(k, id(v)) for k, v in saved_children.items()]:
                module._modules.clear()
                module._modules.update(saved_children)
        for hooks, saved_ids in hook_ids:
            for hook_id in [h for h in hooks if h not in saved_ids]:
                del hooks[hook_id]
        for module, flag in training:
            module.training = flag
        for p, flag in zip(params, requires_grad):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for p, (grad, saved) in zip(params, grads):
            if grad is not None:
                with torch.no_grad():
                    grad.copy_(saved)
            p.grad = grad
