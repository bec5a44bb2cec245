"""The one context manager every analyzer uses to look inside a model.

``inspecting(model)`` puts the model in eval mode, lets the caller register hooks
through it, and on exit (normal, exception or Ctrl-C) removes those hooks and
puts back each module's ``training`` flag, each parameter's ``requires_grad`` and
``.grad`` (the same tensor object with the same values; ``None`` stays ``None``).
Modules compiled in place (``module.compile()``) run eagerly inside the scope, so
the hooks and eval mode of an analysis never send the caller's compiled code into
recompiling.

It also holds the *leaf step* (:func:`make_leaves`) that every forward pass of introspect
shares: a module's output turned into autograd leaves, so that only what runs after it is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import ArgumentTypeError

__all__ = ["ModelScope", "inspecting", "first_tensor", "is_map", "is_map_dict", "make_leaves"]


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


def is_map(value: Any) -> bool:
    """Whether ``value`` is an (N, C, H, W) floating map with H, W > 1."""
    return isinstance(value, torch.Tensor) and value.ndim == 4 and value.is_floating_point() and \
        value.shape[-1] > 1 and value.shape[-2] > 1


def is_map_dict(value: Any) -> bool:
    """Whether ``value`` is a dict of (N, C, H, W) maps (the smallest of a pyramid may be 1x1, as SSD's last ones):
    the multi-scale features a detector's or segmenter's heads read."""
    return isinstance(value, Mapping) and len(value) > 0 and any(is_map(v) for v in value.values()) and all(
        isinstance(v, torch.Tensor) and v.ndim == 4 and v.is_floating_point() for v in value.values())


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor.dequantize() if tensor.is_quantized else tensor  # int8 layers


def make_leaves(output: Any, record: bool = True) -> tuple[dict[str, torch.Tensor], Any] | None:
    """The leaf step: a module's output made the start of a fresh autograd graph.

    Called from a forward hook. The tensor of ``output`` (a tensor, or a tuple's first tensor),
    or every map of a dict of (N, C, H, W) maps, is detached (int8 dequantized) and, when
    ``record``, made a leaf that requires grad; recording is then switched on, so that the
    trunk before the module ran without a graph and only what runs after it is recorded.

    Args:
        output: the module's output.
        record: make leaves that require grad and record from here on (False: the detached values only).

    Returns:
        ``(leaves, passed)``: level name (``""`` for a single tensor, the dict's keys for a dict)
        -> leaf, and what the hook returns in place of ``output``: when recording, clones of the
        leaves in ``output``'s own structure (the next module may work in place, which a leaf
        forbids), else None (the output goes on unchanged). None when ``output`` holds no such tensor.
    """
    if is_map_dict(output):
        leaves = {key: _plain(value) for key, value in output.items()}
    elif isinstance(output, torch.Tensor) or (isinstance(output, tuple) and output and
                                              isinstance(output[0], torch.Tensor)):
        tensor = output if isinstance(output, torch.Tensor) else output[0]
        if not (tensor.is_floating_point() or tensor.is_quantized):
            return None
        leaves = {"": _plain(tensor)}
    else:
        return None
    if not record:
        return leaves, None
    for leaf in leaves.values():
        leaf.requires_grad_(True)
    torch.set_grad_enabled(True)  # record from here on (the clones below included): what follows the module only
    clones = {key: leaf.clone() for key, leaf in leaves.items()}
    if isinstance(output, torch.Tensor):
        return leaves, clones[""]
    if isinstance(output, tuple):
        return leaves, (clones[""], *output[1:])
    try:
        return leaves, type(output)(clones.items())
    except TypeError:  # a Mapping whose constructor takes no pairs
        return leaves, dict(clones)


class ModelScope:
    """Hooks registered through a scope are removed when the scope ends."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._attributes: list[tuple[object, str, object]] = []
        self.registered = 0  # handles made through the scope (removed or not)

    def forward_hook(self, module: nn.Module, hook: Callable) -> None:
        """Register ``hook(module, args, output)`` for the scope's lifetime."""
        self._handles.append(module.register_forward_hook(hook))

    def forward_pre_hook(self, module: nn.Module, hook: Callable, *, with_kwargs: bool = False) -> None:
        """Register ``hook(module, args)`` (``with_kwargs``: ``hook(module, args, kwargs)``) for the scope's
        lifetime."""
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))

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
        self.registered += len(self._handles)
        while self._handles:
            self._handles.pop().remove()


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def _hook_dicts(module: nn.Module) -> list[dict]:
    found = vars(module)
    return [d for d in (found.get(name) for name in _HOOK_DICTS) if isinstance(d, dict) and d]


def _submodules(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` once, parents first (``model.modules()`` without building their names)."""
    seen: set[int] = set()
    found: list[nn.Module] = []
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        found.append(module)
        stack.extend(child for child in reversed(module._modules.values()) if child is not None)
    return found


def _settle_lazy_hooks(modules: list[nn.Module]) -> None:
    """transformers 5 installs the hooks that record a model's hidden states (which its heads read: SegFormer's
    decode head) on the first forward that needs them, and marks the model as hooked. Installed inside a scope,
    they would be removed with the scope's own hooks while the mark stays: install them before the scope."""
    recording = {kind for kind in {type(m) for m in modules}  # the types once: a scope opens on every pass
                 if kind.__module__.startswith("transformers.") and hasattr(kind, "_can_record_outputs")}
    pending = [m for m in modules if type(m) in recording and hasattr(m, "config")
               and not vars(m).get("_output_capturing_hooks_installed", False)]
    if not pending:
        return
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # transformers 4: outputs are returned, not recorded by hooks
        return
    for module in pending:
        try:
            maybe_install_capturing_hooks(module)
        except Exception:  # a model without recordable outputs
            continue


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
    modules = _submodules(model)  # walked once: a scope is entered on every forward pass
    _settle_lazy_hooks(modules)
    training = [module.training for module in modules]
    children = [dict(module._modules) for module in modules]
    first_new_hook = torch.utils.hooks.RemovableHandle.next_id  # hook ids only grow: newer ones are the scope's
    params = list({id(p): p for module in modules for p in vars(module)["_parameters"].values()
                   if p is not None}.values())  # model.parameters(), without walking the modules again
    requires_grad = [p.requires_grad for p in params]
    grads = [(p.grad, None if p.grad is None else p.grad.detach().clone()) for p in params]
    scope = ModelScope(model)
    try:
        for module in modules:
            if vars(module).get("_compiled_call_impl") is not None:
                scope.set_attribute(module, "_compiled_call_impl", None)
        if eval_mode:
            for module, flag in zip(modules, training):
                if flag:  # what model.eval() does, without a write to the modules already in eval mode
                    module.training = False
        yield scope
    finally:
        scope.remove_hooks()
        scope.restore_attributes()
        for module, saved_children in zip(modules, children):
            if module._modules != saved_children:  # modules compare by identity: a swapped one differs
                module._modules.clear()
                module._modules.update(saved_children)
        if torch.utils.hooks.RemovableHandle.next_id != first_new_hook + scope.registered:
            for module in modules:  # someone else made a handle in the scope: remove any hook it left
                for hooks in _hook_dicts(module):
                    for hook_id in [h for h in hooks if h >= first_new_hook]:
                        del hooks[hook_id]
        for module, flag in zip(modules, training):
            if module.training != flag:
                module.training = flag
        for p, flag in zip(params, requires_grad):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for p, (grad, saved) in zip(params, grads):
            if grad is not None:
                with torch.no_grad():
                    grad.copy_(saved)
            p.grad = grad
