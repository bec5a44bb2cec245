"""Image classifiers (float and int8 quantized): the top-k classes, and a CAM per class.

The one forward pass per batch is :func:`introspect.engine.forward.run_forward`: it keeps the
logits, the feature layers and the CAM layer, and (for the gradient methods) makes the
CAM layer's output the gradient leaf so that every class of every image takes one
batched ``autograd.grad`` (:mod:`introspect.engine.cam`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DeviceError, InputSizeError
from ..loaded import imagenet_transform
from .base import InputRecipe, Task

__all__ = ["ClassificationTask", "QuantizedTask", "output_classes"]


def output_classes(model: nn.Module) -> int | None:
    """The class count of a classifier: its last linear layer's outputs (a quantized one's too), else its last
    conv's channels."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) or
               (isinstance(getattr(m, "out_features", None), int) and callable(getattr(m, "weight", None)))]
    if linears:  # nn.Linear, or a quantized Linear (its weight() is a method)
        return linears[-1].out_features
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels if convs else None


def _check_input_size(name: str, model: nn.Module, size: int, weights: Any) -> None:
    image_size = getattr(model, "image_size", None)
    if type(model).__name__ == "VisionTransformer":  # the built model's own size (vit_h_14 random: 224, not 518)
        if size != image_size:
            raise InputSizeError(f"{name} takes only {image_size}x{image_size} inputs, not {size}: "
                                 f"use input_size={image_size}", parameter="input_size")
        return
    if weights is not None:
        min_size = type(weights).DEFAULT.meta.get("min_size", (1, 1))
        if size < max(min_size):
            raise InputSizeError(f"{name} needs inputs of at least {max(min_size)}x{max(min_size)} pixels, "
                                 f"not {size}: use input_size={max(min_size)} or more", parameter="input_size")


def _input_size(ctx: Any) -> Any:
    """The size of the images of this call (a library call's own tensor), else the model's."""
    return ctx.state.get("input_size") or ctx.loaded.input_size


@dataclass(frozen=True)
class ClassificationTask(Task):
    """Image classifiers: one score per class and image."""

    def module_recipe(self, module: Any, input_size: int | None) -> InputRecipe:
        """A bare classifier: ImageNet normalisation at the size its structure takes (probed)."""
        from ..probe import model_input_size

        size = input_size or model_input_size(module)[0]
        return InputRecipe(size, imagenet_transform(size), None, output_classes(module) or 0)

    def input_recipe(self, model_name: str, net: Any, weights: Any, input_size: int | None) -> InputRecipe:
        size = input_size or (weights.transforms().crop_size[0] if weights is not None else 224)
        _check_input_size(model_name, net, size, weights)
        if weights is not None and input_size is None:
            transform = weights.transforms()
        elif weights is not None:
            preset = weights.transforms()
            ratio = preset.resize_size[0] / preset.crop_size[0]
            transform = imagenet_transform(size, round(size * ratio), preset.mean, preset.std)
        else:
            transform = imagenet_transform(size)
        return InputRecipe(size, transform, None, output_classes(net) or 0)

    def read_inputs(self, inputs: Any, loaded: Any) -> Any:
        from ..inputs import prepare_inputs

        return prepare_inputs(inputs, loaded)

    def example_input(self, loaded: Any):
        import torch

        size = loaded.input_size
        return torch.zeros(1, 3, size, size)

    # -- choices, made once per run ---------------------------------------------------------

    def cam_layer(self, ctx: Any) -> Any:
        """The CAM target layer (a ``LayerChoice``): ``cam.layer`` checked, or picked from the structure."""
        from ..layers import pick_cam_layer

        return ctx.once("cam_layer", lambda: pick_cam_layer(ctx.model, ctx.cam.layer,
                                                            input_size=_input_size(ctx)))

    def cam_layer_name(self, loaded: Any, layer: str | None = None) -> str | None:
        from ..layers import pick_cam_layer

        return pick_cam_layer(loaded.model, layer, input_size=loaded.input_size).name

    def methods(self, ctx: Any) -> list[str]:
        """The CAM method names of ``cam.methods`` (default: the task's), checked."""
        from ..engine.cam import parse_cam_methods

        def choose() -> list[str]:
            names = parse_cam_methods(ctx.cam.methods or self.default_cam or "gradcam")
            self.check_methods(names, ctx.loaded.name)
            if not ctx.cam.methods and self.default_cam:
                ctx.info["cam method choice"] = " ".join(self.notes) or f"{self.default_cam}: the task's default"
            return names

        return ctx.once("cam_methods", choose)

    def check_methods(self, methods: list[str], model_name: str) -> None:
        """Refuse CAM methods this task cannot run (every method runs on a float classifier)."""

    def target_indices(self, ctx: Any) -> list[int] | None:
        """``cam.targets`` as class indices (None: each image's top-k)."""
        from ..engine.classes import resolve_target

        categories = ctx.loaded.categories
        return ctx.once("targets", lambda: [resolve_target(t, categories, len(categories))
                                            for t in ctx.cam.targets] if ctx.cam.targets else None)

    def prepare_cams(self, ctx: Any) -> None:
        from ..engine.cam import needs_layer_gradient

        layer = self.cam_layer(ctx)
        self.target_indices(ctx)  # an unknown target fails now, before anything is written
        methods = self.methods(ctx)
        ctx.keep(layer.name)
        if needs_layer_gradient(methods):
            ctx.gradient_layer = layer.name
        ctx.explain = True
        ctx.info["cam methods"] = ", ".join(methods)
        ctx.info["cam layer"] = layer.name

    def prepare_features(self, ctx: Any) -> None:
        from ..engine.features import feature_layer_choices

        choices = feature_layer_choices(ctx.model, ctx.features.layers, input_size=_input_size(ctx))
        ctx.state["feature_layers"] = choices
        ctx.keep(*(c.name for c in choices))

    def feature_layer_names(self, loaded: Any) -> list[str]:
        from ..engine.features import feature_layer_choices

        return [c.name for c in feature_layer_choices(loaded.model, None, input_size=loaded.input_size)]

    # -- the pass and what comes out of it ----------------------------------------------------

    def forward(self, ctx: Any) -> Any:
        from ..engine.forward import run_forward

        return run_forward(ctx.model, ctx.batch.tensor, capture=ctx.capture, grad_layer=ctx.gradient_layer)

    def predictions(self, ctx: Any) -> list:
        from ..engine.classes import predictions_from_pass

        topk = ctx.state.get("prediction_topk") or max(ctx.cam.topk, 5)
        return predictions_from_pass(ctx.forward, ctx.batch.names, ctx.loaded.categories, topk)

    def feature_maps(self, ctx: Any) -> list:
        from ..engine.features import feature_maps_from_pass

        return feature_maps_from_pass(ctx.forward, ctx.batch, ctx.state["feature_layers"], ctx.features.max_channels)

    def classes(self, ctx: Any, topk: int):
        """(N, k) class indices to explain: the targets asked for, or each image's top-k."""
        from ..engine.classes import top_classes

        return top_classes(ctx.forward, topk, self.target_indices(ctx))

    def targets(self, ctx: Any, topk: int) -> list:
        """What the CAMs explain in each image: :meth:`classes` as ``ClassScore`` targets."""
        from ..engine.targets import ClassScore

        return ClassScore.per_image(self.classes(ctx, topk))

    def cam_results(self, ctx: Any) -> list:
        from ..engine.cam import cams_from_pass

        return cams_from_pass(ctx.model, ctx.forward, ctx.batch, self.methods(ctx), self.cam_layer(ctx),
                              self.targets(ctx, ctx.cam.topk), ctx.loaded.categories, ctx.cam.colormap)


@dataclass(frozen=True)
class QuantizedTask(ClassificationTask):
    """int8 quantized classifiers: no autograd, so only the activation-only CAM methods."""

    def recognizes(self, module: Any) -> bool:
        """A module with quantized int8 layers (``torch.ao.nn.quantized``)."""
        return any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))
                   for m in module.modules())

    def check_device(self, model_name: str, device: torch.device) -> None:
        if device.type != "cpu":
            raise DeviceError(f"{model_name} is an int8 quantized model, which runs on the CPU only: use "
                              "device='cpu'", parameter="device")

    def check_methods(self, methods: list[str], model_name: str) -> None:
        from .quantized import check_cam_methods

        check_cam_methods(methods, model_name)
