"""Embeddings: the penultimate-layer features of many images, for TensorBoard's projector.

The features are the input of the last ``nn.Linear`` that runs in the forward pass
(the classifier), found with a forward pre-hook, so any torchvision classifier works
without a per-family table. A model without a Linear gives the output of its last
adaptive average pool, flattened. Images are streamed through the model in batches
(:func:`introspect.inputs.stream_inputs`): memory holds one batch of photos, plus
the (N, D) features and small thumbnails that the projector needs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ImageError, LayerError, UsageError
from ..hooks import first_tensor, inspecting
from ..inputs import stream_inputs
from ..loaded import LoadedModel, device_and_dtype, unwrap
from ..records import EmbeddingSet
from ..engine.classes import class_name

__all__ = ["embeddings", "penultimate_source"]


def penultimate_source(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """Candidates for the penultimate features; the last one to run in the forward pass wins.

    Args:
        model: the module.

    Returns:
        ``(name, module, "input" | "output")``: every ``nn.Linear`` (its input), or else the
        last adaptive pooling layer (its output).

    Raises:
        UsageError: the model has neither.
    """
    linears = [(n, m, "input") for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears
    pools = [(n, m, "output") for n, m in model.named_modules()
             if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]
    if pools:
        return pools[-1:]
    raise UsageError(f"cannot find the penultimate features of {type(model).__name__} (it has no nn.Linear "
                     "and no adaptive pooling layer): use a classifier that ends in a Linear layer", parameter="model")


def _thumbnail(photo: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(photo).resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)


def embeddings(
    model: nn.Module | LoadedModel,
    images: Sequence[str | Path] | str | Path,
    batch_size: int = 16,
    thumbnail_size: int = 48,
    categories: Sequence[str] | None = None,
    progress: bool = True,
) -> EmbeddingSet:
    """Penultimate features, predictions and thumbnails of every image file in ``images`` (files or folders).

    Example: ``introspect.embeddings(loaded, "sample_images/").features.shape``.

    Args:
        model: a module or a :class:`~introspect.models.LoadedModel`.
        images: image files and folders (streamed, ``batch_size`` at a time).
        batch_size: images per forward pass.
        thumbnail_size: side of the projector's thumbnails in pixels.
        categories: class names (default: the loaded model's).
        progress: show a progress bar on stderr.

    Returns:
        An :class:`~introspect.records.EmbeddingSet`.

    Raises:
        UsageError: the model has no penultimate layer to read.
        LayerError: that layer did not run.
        ImageError: a named image cannot be loaded, or none can.
    """
    from tqdm import tqdm

    from ..tasks.base import NEEDS
    from .batch import require

    module, loaded = unwrap(model)
    if loaded is not None:
        require(loaded, "embeddings", NEEDS["embeddings"])
    names_of = list(categories or (loaded.categories if loaded else ()))
    stream = stream_inputs(images, loaded, batch_size)
    files = stream.files
    candidates = penultimate_source(module)
    device, dtype = device_and_dtype(module)
    features, names, probs, indices, thumbs = [], [], [], [], []
    source: dict[str, object] = {}

    def hook_for(name: str, where: str):
        def pre(mod: nn.Module, args: tuple) -> None:
            source.update(name=name, where=where, tensor=args[0] if args else None)

        def post(mod: nn.Module, args: tuple, output: object) -> None:
            source.update(name=name, where=where, tensor=first_tensor(output))

        return pre if where == "input" else post

    bar = tqdm(total=len(stream), desc="embeddings", unit="image", file=sys.stderr,
               disable=None if progress else True, leave=False)
    try:
        with inspecting(module) as scope, torch.inference_mode():
            for name, layer, where in candidates:
                if where == "input":
                    scope.forward_pre_hook(layer, hook_for(name, where))
                else:
                    scope.forward_hook(layer, hook_for(name, where))
            for batch in stream:
                tensor = batch.tensor.to(device, dtype)
                source.clear()
                logits = first_tensor(module(tensor)).float()
                found = source.get("tensor")
                if not isinstance(found, torch.Tensor):
                    raise LayerError(f"the penultimate layer of {type(module).__name__} did not run: use a classifier "
                                     "whose last nn.Linear runs in its forward pass", parameter="model")
                features.append(found.reshape(found.shape[0], -1).float().cpu().numpy())
                p = torch.softmax(logits, dim=-1).cpu()
                top = p.max(dim=-1)
                indices.extend(int(i) for i in top.indices)
                probs.extend(float(v) for v in top.values)
                names.extend(batch.names)
                thumbs.extend(_thumbnail(photo, thumbnail_size) for photo in batch.photos)
                bar.update(len(batch))
    finally:
        bar.close()
    if not features:
        raise ImageError("none of the images could be loaded (see the warnings); pass at least one readable photo",
                         parameter="images")
    return EmbeddingSet(
        layer=f"{source['name']} {source['where']}",
        features=np.concatenate(features).astype(np.float32),
        image_names=tuple(names),
        files=tuple(str(files[n]) for n in names),
        predicted_indices=tuple(indices),
        predicted_names=tuple(class_name(names_of, i) for i in indices),
        probabilities=tuple(probs),
        thumbnails=np.stack(thumbs),
    )
