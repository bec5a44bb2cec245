"""Parameters: a histogram and summary numbers per parameter tensor (and per gradient, when present).

Histograms are computed one tensor at a time into equal-width bins, with numpy on
the CPU (one thread, no per-op dispatch, a few small chunks of scratch memory) and
with torch on the tensor's own device otherwise. No record holds a copy of the
values, so a model with hundreds of millions of parameters costs a few passes over
its memory and no more RAM.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..loaded import LoadedModel, unwrap
from ..records import Histogram, ParameterSummary, ParameterTensor

__all__ = ["parameter_summary", "histogram_of", "HISTOGRAM_BINS"]

HISTOGRAM_BINS = 64
_CHUNK = 1 << 20  # values per chunk of scratch work on an accelerator
_BLOCK = 1 << 16  # values per block of scratch work on the CPU (stays in cache)
_EMPTY = Histogram(np.zeros(1), np.zeros(0), 0.0, 0.0, 0, 0.0, 0.0)


def _flat(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(values))
    tensor = tensor.reshape(-1)
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor


def _record(edges: np.ndarray, counts: np.ndarray, low: float, high: float, num: int, mean: float,
            std: float) -> tuple[Histogram, float]:
    sum_squares = std * std * (num - 1) + num * mean * mean
    return Histogram(edges, counts, low, high, num, mean * num, sum_squares), std


def _summarise_numpy(values: np.ndarray, bins: int) -> tuple[Histogram, float]:
    """:func:`_summarise` for CPU values."""
    if values.size == 0:
        return _EMPTY, 0.0
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)):  # NaN or Inf somewhere: leave them out
        values = values[np.isfinite(values)]
        if values.size == 0:
            return _EMPTY, 0.0
        low, high = float(values.min()), float(values.max())
    num = values.size
    mean = float(np.add.reduce(values, dtype=np.float64)) / num
    scale = bins / (high - low) if high > low else 0.0
    counts = np.zeros(bins if high > low else 1, dtype=np.int64)
    scratch = np.empty(min(num, _BLOCK), dtype=values.dtype)
    squares = 0.0
    for start in range(0, num, _BLOCK):  # one pass: bin indices and squared deviations, block by block
        part = values[start:start + _BLOCK]
        work = scratch[: part.size]
        if scale:
            np.subtract(part, low, out=work)
            work *= scale
            index = work.astype(np.intp)
            np.minimum(index, bins - 1, out=index)  # the maximum belongs to the last (closed) bin
            counts += np.bincount(index, minlength=bins)
        else:
            counts[0] += part.size
        np.subtract(part, mean, out=work)
        squares += float(np.dot(work, work))  # float32 within a block, float64 across blocks
    std = (squares / (num - 1)) ** 0.5 if num > 1 else 0.0
    edges = np.linspace(low, high, bins + 1) if scale else np.array([low, high])  # a constant: one bucket
    return _record(edges, counts.astype(np.float64), low, high, num, mean, std)


def _summarise_torch(tensor: torch.Tensor, bins: int) -> tuple[Histogram, float]:
    """:func:`_summarise` for values on an accelerator, computed there."""
    if tensor.numel():
        low, high = torch.aminmax(tensor)
        if not (torch.isfinite(low) and torch.isfinite(high)):
            tensor = tensor[torch.isfinite(tensor)]
    num = tensor.numel()
    if num == 0:
        return _EMPTY, 0.0
    low, high = (float(v) for v in torch.aminmax(tensor))
    mean = sum(float(part.sum(dtype=torch.float64)) for part in tensor.split(_CHUNK)) / num
    squares = sum(float(torch.square(part - mean).sum(dtype=torch.float64)) for part in tensor.split(_CHUNK))
    std = (squares / (num - 1)) ** 0.5 if num > 1 else 0.0
    if high > low:
        counts = torch.histc(tensor, bins=bins, min=low, max=high).double().cpu().numpy()
        edges = np.linspace(low, high, bins + 1)
    else:
        counts, edges = np.array([float(num)]), np.array([low, high])
    return _record(edges, counts, low, high, num, mean, std)


def _summarise(values: torch.Tensor | np.ndarray, bins: int) -> tuple[Histogram, float]:
    """The histogram of the finite values, and their (unbiased) standard deviation."""
    tensor = _flat(values)
    if tensor.device.type == "cpu":
        return _summarise_numpy(tensor.numpy(), bins)
    return _summarise_torch(tensor, bins)


def histogram_of(values: torch.Tensor | np.ndarray, bins: int = HISTOGRAM_BINS) -> Histogram:
    """Equal-width histogram of the finite values of a tensor or array.

    Args:
        values: any shape, on any device.
        bins: number of bins.

    Returns:
        A :class:`~introspect.records.Histogram` (``num == 0`` when there is no finite value).
    """
    return _summarise(values, bins)[0]


def parameter_summary(model: nn.Module | LoadedModel, include_grads: bool = True,
                      bins: int = HISTOGRAM_BINS) -> ParameterSummary:
    """One record per parameter tensor: its histogram, mean and std, and its gradient's histogram if it has one.

    Args:
        model: a module or a :class:`~introspect.models.LoadedModel`.
        include_grads: also summarise each ``.grad`` that is set.
        bins: histogram bins.

    Returns:
        A :class:`~introspect.records.ParameterSummary`.
    """
    from ..tasks.quantized import quantized_weight

    module, _ = unwrap(model)
    tensors = []
    with torch.no_grad():
        for name, p in module.named_parameters():
            histogram, std = _summarise(p, bins)
            grad = histogram_of(p.grad, bins) if include_grads and p.grad is not None else None
            tensors.append(ParameterTensor(name=name, shape=tuple(p.shape), histogram=histogram,
                                           mean=histogram.mean, std=std, grad=grad))
        for name, sub in module.named_modules():  # int8 layers keep their weights outside parameters()
            weight = quantized_weight(sub)
            if weight is not None:
                histogram, std = _summarise(weight, bins)
                tensors.append(ParameterTensor(name=f"{name}.weight", shape=tuple(weight.shape), histogram=histogram,
                                               mean=histogram.mean, std=std, grad=None))
    return ParameterSummary(tuple(tensors))
