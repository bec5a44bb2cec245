"""What a model predicts for some inputs (``introspect.predict``); the class helpers live in
:mod:`introspect.engine.classes` and are re-exported here."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..engine.classes import class_name, predictions_from_pass, resolve_target, top_classes
from ..inputs import Inputs
from ..loaded import LoadedModel
from ..records import Predictions

__all__ = ["predict", "predictions_from_pass", "resolve_target", "class_name", "top_classes"]


def predict(model: nn.Module | LoadedModel, inputs: Inputs, topk: int = 5,
            categories: Sequence[str] | None = None) -> list[Predictions]:
    """What the model predicts for each input: top-k classes (a classifier, a video model), detections,
    a mask, or a flow field, as the model's task reads them.

    Args:
        model: a module or a :class:`~introspect.models.LoadedModel`.
        inputs: image paths, folders, PIL images or a normalised tensor.
        topk: how many classes per image.
        categories: class names (default: the loaded model's).

    Returns:
        One :class:`~introspect.records.Predictions` per image.

    Raises:
        ImageError: an input image cannot be loaded.
    """
    from .batch import one_batch

    with one_batch(model, inputs, categories=categories) as ctx:
        ctx.state["prediction_topk"] = topk
        return ctx.task.predictions(ctx)
