"""Feature maps of some inputs (``introspect.feature_maps``); the record-making core lives in
:mod:`introspect.engine.features` and is re-exported here."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..engine.features import feature_layer_choices, feature_map, feature_maps_from_pass
from ..inputs import Inputs
from ..loaded import LoadedModel
from ..options import FeatureOptions
from ..records import FeatureMap

__all__ = ["feature_maps", "feature_maps_from_pass", "feature_layer_choices", "feature_map"]


def feature_maps(model: nn.Module | LoadedModel, inputs: Inputs, layers: Sequence[str] | None = None,
                 max_channels: int = FeatureOptions.max_channels) -> list[FeatureMap]:
    """Activations of ``layers`` for each input, as grids of the most active channels with statistics.

    Args:
        model: a module or a :class:`~introspect.models.LoadedModel`.
        inputs: image paths, folders, PIL images or a normalised tensor.
        layers: layer names (default: the model's stage outputs).
        max_channels: most channels drawn per map.

    Returns:
        One :class:`~introspect.records.FeatureMap` per image and layer, images outer.

    Raises:
        UnknownLayerError: a name that is not a layer of the model (or does not run).
        ImageError: an input image cannot be loaded.
    """
    from .batch import one_batch

    options = FeatureOptions(layers=layers, max_channels=max_channels)
    with one_batch(model, inputs, features=options, prepare=(lambda ctx: ctx.task.prepare_features(ctx),)) as ctx:
        return ctx.task.feature_maps(ctx)
