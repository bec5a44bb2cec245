"""How right a class activation map is: keep or remove its most relevant pixels and watch the confidence.

For every map of a :class:`~introspect.records.CamResult` (one method, image and
class) the class's softmax probability is measured on two perturbed copies of the
image, with pytorch-grad-cam's ROAD metrics (Rong et al. 2022, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods"): pixels are not blacked out
but imputed from their neighbours (a sparse linear system per image), so the model
does not react to the shape of a hole.

- *keep*: only the top ``percent`` % of the map's pixels are kept, the rest imputed
  (``ROADLeastRelevantFirst(percentile=percent)``);
- *remove*: the top ``percent`` % are imputed (``ROADMostRelevantFirst(percentile=100 - percent)``).

Each is the change from the probability on the untouched image, in [-1, 1]. The
combined ``score = (keep - remove) / 2`` (ROADCombined at one threshold) is in
[-1, 1]; higher is better: the map's top pixels alone hold the evidence, and
taking them away destroys it.

ROAD thresholds a map at a percentile, so a map with ties (a blank map, or a large
zero region after the ReLU) would keep or remove far more than ``percent`` %; here
each map is first replaced by its pixel ranks, ties broken at random (seeded), so
exactly ``percent`` % of the pixels are kept or removed. The tie-breaking and the
imputation noise are seeded per map (from ``seed``, method, image name and class),
so a map's numbers do not depend on what it is scored with; the caller's torch RNG
state is put back.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ArgumentError
from ..hooks import inspecting
from ..inputs import Inputs, prepare_inputs
from ..loaded import LoadedModel, device_and_dtype, unwrap
from ..records import CamQuality, CamResult

__all__ = ["cam_quality", "rank_map", "DEFAULT_PERCENT"]

DEFAULT_PERCENT = 20.0


def rank_map(heatmap: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A map's pixel ranks scaled to [0, 1], ties broken at random.

    Args:
        heatmap: any array (NaN counts as 0).
        rng: the generator that breaks ties.

    Returns:
        float32 ranks of the same shape: the smallest value 0, the largest 1.
    """
    flat = np.nan_to_num(np.asarray(heatmap, dtype=np.float64)).ravel()
    order = np.lexsort((rng.random(flat.size), flat))  # by value, then by the random key
    ranks = np.empty(flat.size, dtype=np.float32)
    ranks[order] = np.arange(flat.size, dtype=np.float64) / max(flat.size - 1, 1)
    return ranks.reshape(np.shape(heatmap))


def _entry_seed(seed: int, method: str, image_name: str, class_index: int) -> int:
    """A seed of its own per map, so its numbers do not depend on what else is scored with it."""
    return zlib.crc32(f"{seed}/{method}/{image_name}/{class_index}".encode())


class _SeededImputer:
    """ROAD's imputer with the torch RNG seeded before each image (its noise), from the seeds handed to it."""

    def __init__(self, imputer) -> None:
        self.imputer = imputer
        self.seeds: Iterator[int] = iter(())

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        torch.default_generator.manual_seed(next(self.seeds))  # the CPU generator only: the noise is drawn there
        return self.imputer(image, mask)


@torch.no_grad()
def _softmax(model: nn.Module, tensor: torch.Tensor, batch_size: int) -> np.ndarray:
    """Softmax of the model's scores, (N, classes), in batches."""
    out = [torch.softmax(model(tensor[start:start + batch_size]).float(), dim=-1).cpu().numpy()
           for start in range(0, tensor.shape[0], batch_size)]
    return np.concatenate(out).astype(np.float64)


def cam_quality(
    model: nn.Module | LoadedModel,
    inputs: Inputs,
    results: Sequence[CamResult],
    percent: float = DEFAULT_PERCENT,
    batch_size: int = 32,
    seed: int = 0,
) -> CamQuality:
    """Keep / remove scores of every map in ``results`` (one entry per method, image and class).

    ``inputs`` are the images the results were computed on (the same tensor, paths or
    :class:`~introspect.inputs.InputBatch`); results are matched to them by image
    name. Example::

        batch = introspect.inputs.prepare_inputs(images_tensor)
        quality = introspect.cam_quality(model, batch, introspect.cam(model, batch, "gradcam,layercam"))
        quality            # renders as a table, best method first

    The model comes back untouched; the caller's torch RNG state is kept.

    Args:
        model: a module or a :class:`~introspect.models.LoadedModel`.
        inputs: the images the results were computed on.
        results: CAM results of those images.
        percent: share of the map's pixels kept or removed, in (0, 100).
        batch_size: perturbed images per forward pass.
        seed: seed of the tie-breaking and the imputation noise.

    Returns:
        A :class:`~introspect.records.CamQuality` with one entry per method, image and class.

    Raises:
        ArgumentError: ``percent`` or ``batch_size`` out of range, or ``results`` that do not
            belong to ``inputs``.
        ImageError: an input image cannot be loaded.
    """
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    if not 0.0 < percent < 100.0:
        raise ArgumentError(f"percent={percent} must be between 0 and 100 (exclusive)", parameter="percent")
    if batch_size < 1:
        raise ArgumentError(f"batch_size={batch_size} must be at least 1", parameter="batch_size")
    module, loaded = unwrap(model)
    batch = prepare_inputs(inputs, loaded)
    position = {name: i for i, name in enumerate(batch.names)}
    size = tuple(batch.tensor.shape[-2:])
    entries = []  # (method, image index, CamMap)
    for result in results:
        if result.image_name not in position:
            raise ArgumentError(f"results hold a CAM of image {result.image_name!r} but no such image in the inputs "
                                f"({', '.join(batch.names)}): give the inputs the CAMs were computed on",
                                parameter="results")
        for entry in result.maps:
            if entry.heatmap.shape != size:
                raise ArgumentError(f"results hold a {result.method} map of {result.image_name!r} of size "
                                    f"{entry.heatmap.shape}, the input is {size}: compute the CAMs on these inputs",
                                    parameter="results")
            entries.append((result.method, position[result.image_name], entry))
    count = len(entries)
    images = np.array([i for _, i, _ in entries], dtype=np.int64)
    classes = np.array([e.class_index for _, _, e in entries], dtype=np.int64)
    seeds = [_entry_seed(seed, m, batch.names[i], e.class_index) for m, i, e in entries]
    ranks = np.stack([rank_map(e.heatmap, np.random.default_rng(s)) for (_, _, e), s in zip(entries, seeds)]) \
        if entries else np.zeros((0, *size), dtype=np.float32)
    keep_metric = ROADLeastRelevantFirst(percentile=percent)  # keeps the top `percent` %, imputes the rest
    remove_metric = ROADMostRelevantFirst(percentile=100.0 - percent)  # imputes the top `percent` %
    imputers = []
    for metric in (keep_metric, remove_metric):
        metric.perturbation.imputer = _SeededImputer(metric.perturbation.imputer)
        imputers.append(metric.perturbation.imputer)

    tensor = batch.tensor.to(device_and_dtype(module)[0])
    keep = np.zeros(count, dtype=np.float64)
    remove = np.zeros(count, dtype=np.float64)
    with inspecting(module), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # ROAD thresholds with np.float32(torch tensor), which NumPy 2 flags; nothing a user can act on
        warnings.filterwarnings("ignore", message=r"__array_wrap__", category=DeprecationWarning)
        base = _softmax(module, tensor, batch_size)[images, classes] if count else np.zeros(0)
        for start in range(0, count, batch_size):
            part = slice(start, start + batch_size)
            chunk = tensor[torch.from_numpy(images[part]).to(tensor.device)]
            targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes[part]]
            for imputer in imputers:
                imputer.seeds = iter(seeds[part])
            # return_diff=False: the metric's own baseline forward would repeat `base` once per metric
            keep[part] = np.asarray(keep_metric(chunk, ranks[part], targets, module, return_diff=False),
                                    dtype=np.float64) - base[part]
            remove[part] = np.asarray(remove_metric(chunk, ranks[part], targets, module, return_diff=False),
                                      dtype=np.float64) - base[part]
    return CamQuality(
        percent=float(percent),
        methods=tuple(m for m, _, _ in entries),
        image_names=tuple(batch.names[i] for i in images),
        class_indices=tuple(int(c) for c in classes),
        class_names=tuple(e.class_name for _, _, e in entries),
        confidence=tuple(float(p) for p in base),
        keep=tuple(float(v) for v in keep),
        remove=tuple(float(v) for v in remove),
    )
