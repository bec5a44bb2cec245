"""Classes of a classifier's output: names, targets by index or name, the top-k of a forward pass."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch

from ..errors import TargetError
from .forward import ForwardPass
from ..records import Predictions

__all__ = ["predictions_from_pass", "resolve_target", "class_name", "top_classes"]


def class_name(categories: Sequence[str], index: int) -> str:
    """The name of class ``index``.

    Args:
        categories: class names (may be empty).
        index: a class index.

    Returns:
        ``categories[index]``, or ``class N`` where there is no name.
    """
    return categories[index] if 0 <= index < len(categories) else f"class {index}"


def resolve_target(target: int | str, categories: Sequence[str], num_classes: int) -> int:
    """A class index from an index or a class name (case-insensitive).

    Args:
        target: an index (an int or a string of digits) or a class name.
        categories: class names.
        num_classes: number of outputs of the model.

    Returns:
        The class index.

    Raises:
        TargetError: an index out of range, or an unknown name (the closest names are listed).
    """
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target)
    if isinstance(target, int):
        if not 0 <= target < num_classes:
            raise TargetError(f"target={target} is out of range: the model has classes 0 to {num_classes - 1}",
                              parameter="target")
        return target
    lowered = {name.lower(): i for i, name in enumerate(categories)}
    if target.lower() in lowered:
        return lowered[target.lower()]
    close = difflib.get_close_matches(target.lower(), list(lowered), n=4, cutoff=0.5)
    hint = f"closest: {', '.join(repr(categories[lowered[c]]) for c in close)}" if close else \
        "give a class index or an exact class name"
    raise TargetError(f"unknown class {target!r} ({hint})", parameter="target")


def predictions_from_pass(forward: ForwardPass, names: Sequence[str], categories: Sequence[str],
                          topk: int = 5) -> list[Predictions]:
    """Top-k classes of each image of an existing forward pass.

    Args:
        forward: the shared forward pass.
        names: image names, one per row of the logits.
        categories: class names.
        topk: how many classes per image.

    Returns:
        One :class:`~introspect.records.Predictions` per image.
    """
    probs = forward.probabilities
    k = min(topk, probs.shape[-1])
    values, indices = probs.topk(k, dim=-1)
    return [
        Predictions(
            image_name=name,
            indices=tuple(int(i) for i in idx),
            names=tuple(class_name(categories, int(i)) for i in idx),
            probabilities=tuple(float(v) for v in vals),
        )
        for name, idx, vals in zip(names, indices.cpu(), values.cpu())
    ]


def top_classes(forward: ForwardPass, topk: int, targets: Sequence[int] | None = None) -> torch.Tensor:
    """Class indices to explain per image.

    Args:
        forward: the shared forward pass.
        topk: how many top classes when ``targets`` is not given.
        targets: class indices for every image.

    Returns:
        ``(N, k)`` int64: ``targets`` for every image, or each image's top-k.
    """
    n = forward.logits.shape[0]
    if targets:
        return torch.tensor(list(targets), dtype=torch.long).expand(n, -1).clone()
    return forward.logits.topk(min(topk, forward.logits.shape[-1]), dim=-1).indices
