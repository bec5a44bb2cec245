"""Quantized (int8) models: find their quantized layers, read their weights as floats, and keep CAMs to the
methods that need no gradient.

torchvision builds a quantized model offline with ``quantize=True`` and ``weights=None``: it
fuses, calibrates its observers on random input and converts to int8, choosing the
quantization engine as it goes (``torch.backends.quantized.engine``: ``fbgemm``/``x86``,
``qnnpack`` for the MobileNets). Quantized kernels have no autograd, so gradient CAM methods,
saliency and filter visualisation cannot run on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UnknownMethodError

__all__ = ["is_quantized_module", "is_quantized_model", "quantized_weight", "check_cam_methods",
           "ACTIVATION_ONLY"]

ACTIVATION_ONLY = ("eigencam", "fem")
_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized", "torch.nn.quantized")


def is_quantized_module(module: nn.Module) -> bool:
    """Whether ``module`` is one of torch's quantized (int8) layers."""
    return type(module).__module__.startswith(_QUANTIZED_PACKAGES)


def is_quantized_model(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is quantized."""
    return any(is_quantized_module(m) for m in model.modules())


def quantized_weight(module: nn.Module) -> torch.Tensor | None:
    """The dequantized float weight of a quantized conv or linear layer, None for any other module."""
    if not is_quantized_module(module) or not callable(getattr(module, "weight", None)):
        return None
    try:
        weight = module.weight()
    except (RuntimeError, TypeError, AttributeError):
        return None
    if not isinstance(weight, torch.Tensor):
        return None
    return weight.dequantize() if weight.is_quantized else weight.float()


def check_cam_methods(methods: Sequence[str], model_name: str) -> None:
    """Refuse gradient CAM methods (and those pytorch-grad-cam runs with autograd) on a quantized model."""
    from ..engine.cam import CAM_METHODS

    refused = [m for m in methods if m not in ACTIVATION_ONLY]
    if refused:
        kind = "needs gradients" if CAM_METHODS[refused[0]].uses_gradients else "is not offered for int8 models"
        raise UnknownMethodError(f"{refused[0]} {kind}, and {model_name} is quantized (int8 kernels have no "
                                 f"autograd): use {' or '.join(ACTIVATION_ONLY)}")
