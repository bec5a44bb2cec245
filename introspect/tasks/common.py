"""Pieces the detection, segmentation, video and optical-flow tasks share: the feature stages of a
trunk found from its structure and the shapes one pass gives, and feature-map records from any layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import ROOTS, Task, stage_children, trunk_root

__all__ = ["trunk_root", "stage_children", "stage_ends", "feature_records", "ROOTS", "HeadsTask"]

def stage_ends(shapes: Mapping[str, tuple[int, ...]], limit: int = 6) -> list[str]:
    """The layers (in run order) after which the spatial size changes: the last ``limit`` stage ends."""
    names = list(shapes)
    ends = [n for n, after in zip(names, names[1:] + [None]) if after is None or shapes[after] != shapes[n]]
    return ends[-limit:]


def feature_records(activations: Mapping[str, torch.Tensor], names: Sequence[str], layers: Sequence[str] | None,
                    max_channels: int, as_map: Callable[[torch.Tensor], torch.Tensor] = lambda a: a) -> list:
    """Feature-map records of ``layers`` (default: the stage ends among ``activations``), one per layer and input.

    ``as_map`` turns each activation into (N, C, H, W) (a clip's middle frame); others are left out.
    """
    from ..engine.features import feature_map
    from ..layers import LayerChoice

    maps = {layer: as_map(a) for layer, a in activations.items()}
    maps = {layer: m for layer, m in maps.items() if m.ndim == 4}
    chosen = list(layers) if layers else stage_ends({k: tuple(v.shape[2:]) for k, v in maps.items()})
    return [feature_map(LayerChoice(layer), name, maps[layer][n], max_channels) for n, name in enumerate(names)
            for layer in chosen if layer in maps]


@dataclass(frozen=True)
class HeadsTask(Task):
    """Tasks whose heads read a dict of feature maps (detection, segmentation): those maps are the CAM's
    gradient leaves, the trunk's stages the feature maps, and one pass of the model serves all of them.

    A subclass gives :meth:`run_pass` (one forward pass over images of one size, returning a record with
    ``fp`` (:class:`~introspect.tasks.featurepass.FeaturePass`) and ``release()``), :meth:`explain`
    (CAM results from that pass) and :meth:`check_cam_options`.
    """

    def read_inputs(self, inputs: Any, loaded: Any) -> Any:
        from ..inputs import prepare_inputs

        return prepare_inputs(inputs, loaded)

    def run_pass(self, ctx: Any, batch: Any, methods: Sequence[str], capture: Sequence[str]) -> Any:
        """One forward pass over ``batch`` (a ``TaskImages``)."""
        raise NotImplementedError

    def explain(self, ctx: Any, methods: Sequence[str]) -> list:
        """CAM results of ``ctx.forward`` for ``methods``."""
        raise NotImplementedError

    def check_cam_options(self, ctx: Any) -> None:
        """Refuse CAM options that do not fit the task (before anything is written)."""

    def prepare_cams(self, ctx: Any) -> None:
        from ..layers import resolve_layer
        from .featurepass import single_pass_methods

        self.check_cam_options(ctx)
        methods = single_pass_methods(ctx.cam.methods or self.default_cam or "gradcam", self.name)
        if ctx.cam.layer:
            resolve_layer(ctx.model, ctx.cam.layer)
        ctx.state["cam_methods"] = methods
        ctx.explain = True
        ctx.info["cam methods"] = ", ".join(methods)

    def forward(self, ctx: Any) -> Any:
        from .featurepass import task_images

        methods = ctx.state.get("cam_methods", ()) if ctx.explain else ()
        return self.run_pass(ctx, task_images(ctx.batch), methods, ctx.capture)

    def feature_maps(self, ctx: Any) -> list:
        fp = ctx.forward.fp
        found = {name: fp.layer_output(name) for name in ctx.state.get("feature_capture", ())}
        return feature_records({k: v for k, v in found.items() if v is not None}, ctx.batch.names,
                               ctx.features.layers, ctx.features.max_channels)

    def cam_results(self, ctx: Any) -> list:
        results = self.explain(ctx, ctx.state["cam_methods"])
        for result in results:
            ctx.info.setdefault("cam layer", result.layer + (f" ({', '.join(result.levels)})"
                                                             if any(result.levels) else ""))
        return results

    def _probe(self, loaded: Any) -> Any:
        """One pass of a blank image of the model's size, capturing the trunk's stages (``--list-layers``)."""
        from ..context import RunContext
        from .featurepass import task_images

        size = loaded.input_size
        capture = stage_children(loaded.model, trunk_root(loaded.model, ROOTS["image"]))
        blank = task_images(torch.zeros(1, 3, size, size))
        found = self.run_pass(RunContext(loaded=loaded, task=self), blank, ("eigencam",), capture)
        return found

    def cam_layer_name(self, loaded: Any, layer: str | None = None) -> str | None:
        return layer or self._probe(loaded).fp.layer or None

    def feature_layer_names(self, loaded: Any) -> list[str]:
        fp = self._probe(loaded).fp
        outputs = {name: fp.layer_output(name) for name in fp.captured if not name.startswith("__")}
        return stage_ends({name: tuple(t.shape[2:]) for name, t in outputs.items() if t is not None and t.ndim == 4})
