"""Parameters: every parameter tensor's values (and gradients, when present) for histograms."""

from __future__ import annotations

from torch import nn

from ..inputs import unwrap
from ..models import LoadedModel
from ..records import ParameterSummary, ParameterTensor

__all__ = ["parameter_summary"]


def parameter_summary(model: nn.Module | LoadedModel, include_grads: bool = True) -> ParameterSummary:
    """One record per parameter tensor: flattened values, mean, std and the gradient if it has one."""
    module, _ = unwrap(model)
    tensors = []
    for name, p in module.named_parameters():
        values = p.detach().float().cpu().reshape(-1)
        grad = p.grad.detach().float().cpu().reshape(-1).numpy() if include_grads and p.grad is not None else None
        tensors.append(ParameterTensor(name=name, shape=tuple(p.shape), values=values.numpy(),
                                       mean=float(values.mean()) if values.numel() else 0.0,
                                       std=float(values.std()) if values.numel() > 1 else 0.0, grad=grad))
    return ParameterSummary(tuple(tensors))
