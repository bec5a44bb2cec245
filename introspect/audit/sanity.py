"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A copy of the model has its layers re-initialised from the head down, cumulatively (cascading);
after each step every method's maps of the same images and classes are compared with those of
the trained model by Spearman rank correlation. An explanation that still looks the same when
the weights that made the decision are random does not explain the decision: a method whose
mean correlation stays above ``threshold`` after the last step is flagged. The caller's model is
never touched: only a deep copy is randomised.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.cam import cam_maps, needs_layer_gradient
from ..engine.forward import run_forward
from ..layers import LayerChoice
from ..records import SanityCheck

__all__ = ["randomisation_steps", "sanity_check", "spearman"]


def randomisation_steps(model: nn.Module, steps: int) -> list[list[str]]:
    """Modules with their own parameters, from the head down, split into ``steps`` cumulative groups.

    Returns one list per step: the names randomised at that step (earlier steps' names stay random).
    """
    leaves = [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]
    leaves.reverse()
    steps = max(1, min(steps, len(leaves)))
    cuts = [math.ceil(s * len(leaves) / steps) for s in range(steps + 1)]
    return [leaves[cuts[s]:cuts[s + 1]] for s in range(steps)]


def _randomise(module: nn.Module, generator_seed: int) -> None:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(generator_seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for parameter in module.parameters(recurse=False):
                parameter.normal_(0.0, 0.02)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties averaged (as scipy.stats.rankdata)."""
    out = np.empty(x.shape, dtype=np.float64)
    for row, values in enumerate(x):
        unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        average = np.cumsum(counts) - (counts - 1) / 2.0
        out[row] = average[inverse]
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman rank correlation of each pair of maps, (n, H, W) x (n, H, W) -> (n,); 0 where a map is flat."""
    ra = _ranks(a.reshape(a.shape[0], -1).double().cpu().numpy())
    rb = _ranks(b.reshape(b.shape[0], -1).double().cpu().numpy())
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(axis=1) / denominator, 0.0)


def _maps(model: nn.Module, inputs: torch.Tensor, layer: LayerChoice, methods: Sequence[str],
          classes: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    needs_grad = needs_layer_gradient(methods)
    forward = run_forward(model, inputs, capture=[layer.name], grad_layer=layer.name if needs_grad else None)
    try:
        maps = cam_maps(forward, layer, methods, classes, tuple(inputs.shape[-2:]), model=model, inputs=inputs)
    finally:
        forward.release()
    # compare at a small fixed size: the ranks of a 56 x 56 map, not of every upsampled pixel
    return {m: F.interpolate(v[0][:, None], size=(size, size), mode="area")[:, 0].cpu() for m, v in maps.items()}


def sanity_check(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor, layer: LayerChoice,
                 methods: Sequence[str], *, steps: int = 5, threshold: float = 0.9, size: int = 56,
                 seed: int = 0) -> SanityCheck:
    """Cascading randomisation of a copy of ``model``, top layer first; Spearman correlation of the maps.

    Args:
        inputs: (n, 3, H, W) model inputs (a sample of the dataset).
        classes: (n,) the class each image's maps explain (its label, or the trained model's top-1).
        layer: the CAM target layer.
        steps: how many cumulative randomisation steps (layer groups from the head down).
    Returns:
        A :class:`SanityCheck`: mean correlation per method and step, and the flagged methods.
    """
    classes = classes.reshape(-1, 1)
    trained = _maps(model, inputs, layer, methods, classes, size)
    shadow = copy.deepcopy(model)
    modules = dict(shadow.named_modules())
    groups = randomisation_steps(shadow, steps)
    correlations = np.zeros((len(trained), len(groups)))
    names = []
    done = 0
    for s, group in enumerate(groups):
        for name in group:
            _randomise(modules[name], seed + done)
            done += 1
        names.append(group[-1] if group else "-")
        randomised = _maps(shadow, inputs, layer, methods, classes, size)
        for m, method in enumerate(trained):
            correlations[m, s] = float(np.mean(spearman(trained[method], randomised[method])))
    del shadow
    return SanityCheck(methods=tuple(trained), steps=tuple(names), correlations=correlations,
                       samples=int(inputs.shape[0]), threshold=threshold)
