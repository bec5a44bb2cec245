"""Hugging Face dense-prediction models on the same task path as torchvision's.

:class:`HFSegmentationTask` takes a transformers semantic segmenter wrapped by
:class:`introspect.timm_hf.HFSegmenter` (SegFormer, UperNet, DPT, BEiT, MobileViT, ...: its
forward returns ``{"out": per-pixel scores at the input's size}`` as torchvision's do): the
same segmentation records, masks, per-class CAMs (``PixelClass`` targets) and audit as
torchvision's segmenters. Only the layers differ: the CAM layer is the map the decode
head's classifier reads, the feature layers the structure's stages (:mod:`introspect.layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .segmentation import SegmentationTask, segmentation_pass, voc_categories

__all__ = ["HFSegmentationTask"]


@dataclass(frozen=True)
class HFSegmentationTask(SegmentationTask):
    """Hugging Face semantic segmenters: the mask with id2label names, a CAM per class present."""

    def builder_kwargs(self, model_name: str, input_size: int | None, state: Any) -> dict:
        return {}

    def cam_layer_name(self, loaded: Any, layer: str | None = None) -> str | None:
        from ..layers import head_input_layer

        return layer or head_input_layer(loaded.model, input_size=loaded.input_size).name

    def feature_layer_names(self, loaded: Any) -> list[str]:
        return [choice.name for choice in self._feature_choices(loaded)]

    def _feature_choices(self, loaded: Any) -> list:
        from ..layers import default_feature_layers

        inner = getattr(loaded.model, "model", loaded.model)
        encoder = next((name for name, child in inner.named_children() if next(child.parameters(), None) is not None),
                       None)  # transformers' segmenters hold their encoder first, their decode head after
        within = f"model.{encoder}" if encoder and inner is not loaded.model else None
        return default_feature_layers(loaded.model, input_size=loaded.input_size, within=within)

    def prepare_features(self, ctx: Any) -> None:
        from ..layers import resolve_layer

        from ..layers import layer_choice

        size = ctx.loaded.input_size
        choices = [layer_choice(ctx.model, name, input_size=size) for name in ctx.features.layers] \
            if ctx.features.layers else self._feature_choices(ctx.loaded)
        layers = [choice.name for choice in choices]
        for name in layers:
            resolve_layer(ctx.model, name)
        ctx.keep(*layers)
        ctx.state["feature_capture"] = layers
        ctx.state["feature_choices"] = {choice.name: choice for choice in choices}

    def feature_maps(self, ctx: Any) -> list:
        """The encoder's stages, tokens folded on their grid (transformers 4's SegFormer stages end in tokens)."""
        from ..layers import to_nchw
        from .common import feature_records

        choices = ctx.state.get("feature_choices", {})
        activations = ctx.forward.forward.activations
        found = {name: to_nchw(activations[name], choices.get(name)) for name in ctx.state.get("feature_capture", ())
                 if name in activations}
        return feature_records(found, ctx.batch.names, list(found), ctx.features.max_channels)

    def run_pass(self, ctx: Any, batch: Any, methods: Sequence[str], capture: Sequence[str]) -> Any:
        layer = self.cam_layer_name(ctx.loaded, ctx.cam.layer) if methods else ctx.cam.layer
        return segmentation_pass(ctx.model, batch, methods=methods, layer=layer,
                                 categories=ctx.loaded.categories or voc_categories(), capture=capture)
