"""What a model task is: the behaviour every entry of the task registry carries.

A task says which torchvision module its models come from, what it can show
(``capabilities``, and in words why it cannot show the rest), and how it goes through
the one run path: how it reads its inputs (an image, a clip, a pair of frames), what
the one forward pass per batch captures, how predictions, feature maps and CAMs come
out of that pass, and which layers it explains. The report's walker, the audit and
the library's analyzers call these methods and never ask which task they hold.

Every method that takes ``ctx`` takes an :class:`introspect.context.RunContext`: the
loaded model, the options, and (per batch) the batch and its forward pass.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ArgumentError, UsageError

__all__ = ["Task", "InputRecipe", "CAPABILITIES", "INPUT_KINDS", "NEEDS"]

#: Input kinds a task can take.
INPUT_KINDS = ("image", "clip", "frame pair")

#: What a task can give a section; a section lists what it ``requires``.
CAPABILITIES = {
    "images": "single photos as input",
    "class_scores": "one score per class and input",
    "targets": "something to explain (a class, a box, a mask class)",
    "autograd": "gradients through the model",
    "graph": "a traceable forward pass",
}

_CLASSIFIER = frozenset({"images", "class_scores", "autograd"})

#: What each built-in view needs from a task (the sections and the library's analyzers read it).
NEEDS: dict[str, frozenset[str]] = {
    "graph": frozenset({"graph"}),
    "cam": frozenset({"targets"}),
    "filters": _CLASSIFIER,
    "saliency": _CLASSIFIER,
    "quality": _CLASSIFIER,
    "embeddings": frozenset({"images", "class_scores"}),
    "tab": frozenset({"images", "targets"}),  # the TensorBoard tab: a map of one photo, on demand
}

#: Where a task's trunk lives, by input kind, first match wins: a detector's or segmenter's backbone body,
#: RAFT's feature encoder, a video model's blocks.
ROOTS: dict[str, tuple[str, ...]] = {
    "image": ("backbone.body", "backbone.features", "backbone"),
    "frame pair": ("feature_encoder",),
    "clip": ("features", "blocks"),
}


def trunk_root(model: Any, candidates: Sequence[str]) -> str:
    """The first of ``candidates`` that is a module of ``model`` ("" for the model itself)."""
    names = {name for name, _ in model.named_modules()}
    return next((name for name in candidates if name in names), "")


def stage_children(model: Any, root: str) -> list[str]:
    """The children of ``root`` that may end a stage (pooling layers are left out)."""
    container = model.get_submodule(root) if root else model
    return [f"{root}.{name}" if root else name for name, child in container.named_children()
            if "pool" not in type(child).__name__.lower()]


@dataclass(frozen=True)
class InputRecipe:
    """How a loaded model is fed: the side of its input, the per-image (or per-frame) transform, frames per
    clip (video), and how many classes its output has."""

    size: int
    transform: Any
    clip_length: int | None = None
    classes: int = 0


@dataclass(frozen=True)
class Task(ABC):
    """One family of models and how introspect treats it (subclasses fill in the behaviour).

    Attributes:
        name: registry key, e.g. ``"detection"``.
        summary: one line for ``--list-models``.
        module: the torchvision module its models come from, e.g. ``"torchvision.models.detection"``.
        input_kind: ``"image"``, ``"clip"`` or ``"frame pair"``.
        capabilities: what it gives sections (keys of :data:`CAPABILITIES`).
        not_applicable: section (or ``"audit"``) -> why it does not apply, in words for ``run/info``.
        cam_methods: CAM method names it can run (``None``: every one).
        default_cam: the CAM method used when the caller keeps the default (``None``: gradcam).
        build_kwargs: extra keyword arguments for the torchvision builder with random weights.
        notes: anything ``run/info`` should say about this task.
        runs_on_meta: its models can be probed on the meta device (detectors cache anchors as plain
            attributes, which a meta run would leave on the meta device).
        reads_class_count: a checkpoint's class count (its last 2-d weight) sets the head it is built with,
            and the model is built on the meta device and the state assigned (a fine-tuned classifier).
    """

    name: str
    summary: str
    module: str
    input_kind: str
    capabilities: frozenset[str] = frozenset()
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    cam_methods: frozenset[str] | None = None
    default_cam: str | None = None
    build_kwargs: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    runs_on_meta: bool = True
    reads_class_count: bool = False

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ArgumentError(f"input_kind={self.input_kind!r} must be one of {INPUT_KINDS}", parameter="input_kind")
        unknown = set(self.capabilities) - set(CAPABILITIES)
        if unknown:
            raise ArgumentError(f"capabilities={sorted(unknown)} unknown: use {', '.join(CAPABILITIES)}",
                                parameter="capabilities")

    # -- the registry's view ----------------------------------------------------------------

    def torchvision_module(self):
        """The torchvision module object (``torchvision.models.video`` ...)."""
        import importlib

        return importlib.import_module(self.module)

    def model_names(self) -> list[str]:
        """Every model name torchvision registers for this task, sorted."""
        import torchvision

        return sorted(torchvision.models.list_models(module=self.torchvision_module()))

    def skip_reason(self, section: str, requires: frozenset[str] | Sequence[str] = frozenset()) -> str | None:
        """Why ``section`` (which needs ``requires``) does not run for this task, or None when it does."""
        if section in self.not_applicable:
            return self.not_applicable[section]
        order = list(CAPABILITIES)  # the same words in the same order in every process (a frozenset's is not)
        missing = sorted((c for c in requires if c not in self.capabilities),
                         key=lambda c: (order.index(c) if c in order else len(order), c))
        if missing:
            return f"needs {' and '.join(CAPABILITIES.get(c, c) for c in missing)}, which {self.name} models do " \
                   "not give"
        return None

    def cannot(self, what: str, parameter: str = "model") -> UsageError:
        """The one-line error for something this task cannot show (``what``: a section or analyzer name)."""
        reason = self.skip_reason(what) or f"{what} is not offered for {self.name} models"
        return UsageError(f"{what} does not apply to {self.name} models: {reason}", parameter=parameter)

    # -- loading -----------------------------------------------------------------------------

    def recognizes(self, module: Any) -> bool:
        """True when a bare module's structure says it is one of this task's models (a library call or an
        import-path model, where there is no torchvision name to look up)."""
        return False

    def class_count(self, module: Any) -> int:
        """How many classes a bare module of this task scores (0: unknown)."""
        return 0

    def module_recipe(self, module: Any, input_size: int | None) -> InputRecipe:
        """How a bare module of this task is fed (no torchvision weights to take a preset from)."""
        recipe = self.input_recipe(type(module).__name__, module, None, input_size)
        return dataclasses.replace(recipe, classes=self.class_count(module))

    def default_categories(self, classes: int) -> tuple[str, ...] | None:
        """The class names this task's torchvision models use for ``classes`` classes (None: none known)."""
        return None

    def check_device(self, model_name: str, device: torch.device) -> None:
        """Refuse a device the task's models cannot run on (before anything is built)."""

    def builder_kwargs(self, model_name: str, input_size: int | None, state: Mapping[str, Any] | None) -> dict:
        """Keyword arguments for the torchvision builder beyond ``build_kwargs`` (sizes, heads a state holds)."""
        return {}

    def input_recipe(self, model_name: str, net: Any, weights: Any, input_size: int | None) -> InputRecipe:
        """How the built model ``net`` is fed (``weights``: its torchvision weights enum member, or None)."""
        raise self.cannot("inputs", "model")

    # -- inputs ------------------------------------------------------------------------------

    def read_inputs(self, inputs: Any, loaded: Any) -> Any:
        """The batch of what the model takes, read and preprocessed (bad input fails here)."""
        raise self.cannot("inputs", "inputs")

    def chunks(self, batch: Any, size: int) -> Iterator[Any]:
        """``batch`` cut into batches of at most ``size`` inputs."""
        for start in range(0, len(batch), size):
            yield batch[start:start + size]

    def shown_inputs(self, batch: Any) -> list[tuple[str, Any]]:
        """(name, uint8 picture) of each input as the model saw it, for ``input/<name>``."""
        return list(zip(batch.names, batch.photos))

    def example_input(self, loaded: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """A blank input of the model's size (for the layer table, the graph and probing)."""
        size = loaded.input_size
        return torch.zeros(1, 3, size, size)

    # -- the one forward pass and what comes out of it ---------------------------------------

    def check_options(self, ctx: Any) -> None:
        """Refuse options that do not fit this task, whatever the sections (before anything is written)."""

    def prepare_cams(self, ctx: Any) -> None:
        """Check the CAM options (methods, layer, targets) and declare what the shared pass must keep."""
        raise self.cannot("cam", "methods")

    def prepare_features(self, ctx: Any) -> None:
        """Check the feature layers (default: the children of the task's trunk, ``ROOTS``) and declare them to the
        shared pass; the stage ends among them are picked from the shapes the pass gives."""
        from ..layers import resolve_layer

        layers = list(ctx.features.layers or stage_children(ctx.model, trunk_root(ctx.model, ROOTS[self.input_kind])))
        for name in layers:
            resolve_layer(ctx.model, name)
        ctx.keep(*layers)
        ctx.state["feature_capture"] = layers

    @abstractmethod
    def forward(self, ctx: Any) -> Any:
        """The one forward pass over ``ctx.batch`` that every section of the batch shares."""

    @abstractmethod
    def predictions(self, ctx: Any) -> list:
        """The prediction records of ``ctx.batch`` (classes, detections, masks, flow) from its pass."""

    def feature_maps(self, ctx: Any) -> list:
        """The feature-map records of ``ctx.batch`` from its pass."""
        raise self.cannot("features", "layers")

    def cam_results(self, ctx: Any) -> list:
        """The CAM results of ``ctx.batch`` (one per method and input) from its pass."""
        raise self.cannot("cam", "methods")

    # -- layers --------------------------------------------------------------------------------

    def cam_layer_name(self, loaded: Any, layer: str | None = None) -> str | None:
        """The layer CAMs explain (None where the task has no CAM)."""
        return None

    def feature_layer_names(self, loaded: Any) -> list[str]:
        """The default feature layers."""
        return []

    def run_info(self, ctx: Any) -> dict[str, object]:
        """Lines this task adds to ``run/info`` (its settings)."""
        return {}
