"""Hugging Face dense-prediction models on the same task path as torchvision's.

The loader (:func:`introspect.timm_hf.load_hf`) wraps them so that they take and give what
torchvision's do, and these tasks reuse torchvision's passes, records and CAMs unchanged:

- :class:`HFSegmentationTask`: a semantic segmenter in :class:`~introspect.timm_hf.HFSegmenter`
  (SegFormer, UperNet, DPT, BEiT, MobileViT, ...; ``{"out": scores at the input's size}``):
  masks with ``id2label`` names, a CAM per class present (``PixelClass``), the map the decode
  head's classifier reads;
- :class:`HFDetectionTask`: a DETR-style detector in :class:`~introspect.timm_hf.HFDetector`
  (DETR, Conditional / Deformable DETR, RT-DETR, Table Transformer; a list of [0, 1] images in,
  ``{"boxes", "labels", "scores"}`` per image out, one detection per query): boxes with
  ``id2label`` names, a CAM per detection (``BoxScore`` on its query's box and score), the
  image map the transformer encoder reads.

Only the layers differ from torchvision's (found in :mod:`introspect.layers` from the structure):
the feature layers are the stages of the model's encoder, their tokens folded on their grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .detection import DetectionTask, detection_pass
from .segmentation import SegmentationTask, segmentation_pass, voc_categories

__all__ = ["HFSegmentationTask", "HFDetectionTask"]


class _HFLayers:
    """The layers of a wrapped transformers model: the CAM layer the task's rule finds, the encoder's stages."""

    head_module: str | None = None  # the CAM layer: the last map before this module (None: the pixel classifier)

    def cam_layer_name(self, loaded: Any, layer: str | None = None) -> str | None:
        from ..layers import head_input_layer

        return layer or head_input_layer(loaded.model, input_size=loaded.input_size, head=self.head_module).name

    def feature_layer_names(self, loaded: Any) -> list[str]:
        return [choice.name for choice in self._feature_choices(loaded)]

    def _feature_choices(self, loaded: Any) -> list:
        from ..layers import default_feature_layers

        inner = getattr(loaded.model, "model", loaded.model)
        if inner is loaded.model:
            within = None
        else:  # a detector's convolutional backbone; else the encoder transformers' segmenters hold first
            backbone = next((name for name, _ in inner.named_modules() if name.rsplit(".", 1)[-1] == "backbone"), None)
            encoder = backbone or next((name for name, child in inner.named_children()
                                        if next(child.parameters(), None) is not None), None)
            within = f"model.{encoder}" if encoder else None
        return default_feature_layers(loaded.model, input_size=loaded.input_size, within=within)

    def prepare_features(self, ctx: Any) -> None:
        from ..layers import layer_choice, resolve_layer

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


@dataclass(frozen=True)
class HFSegmentationTask(_HFLayers, SegmentationTask):
    """Hugging Face semantic segmenters: the mask with id2label names, a CAM per class present."""

    def builder_kwargs(self, model_name: str, input_size: int | None, state: Any) -> dict:
        return {}

    def run_pass(self, ctx: Any, batch: Any, methods: Sequence[str], capture: Sequence[str]) -> Any:
        layer = self.cam_layer_name(ctx.loaded, ctx.cam.layer) if methods else ctx.cam.layer
        return segmentation_pass(ctx.model, batch, methods=methods, layer=layer,
                                 categories=ctx.loaded.categories or voc_categories(), capture=capture)


@dataclass(frozen=True)
class HFDetectionTask(_HFLayers, DetectionTask):
    """Hugging Face DETR-style detectors: boxes with id2label names, a CAM per detection (its query)."""

    head_module = "encoder"  # the image map the transformer encoder reads (DETR's input_projection)

    def builder_kwargs(self, model_name: str, input_size: int | None, state: Any) -> dict:
        return {}

    def run_pass(self, ctx: Any, batch: Any, methods: Sequence[str], capture: Sequence[str]) -> Any:
        layer = self.cam_layer_name(ctx.loaded, ctx.cam.layer) if methods else ctx.cam.layer
        return detection_pass(ctx.model, batch, methods=methods, layer=layer,
                              score_threshold=ctx.detection.score_threshold,
                              categories=ctx.loaded.categories or None, capture=capture)
