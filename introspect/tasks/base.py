"""What a model task is: the record each entry of the task registry fills in.

A task says which torchvision module its models come from, what input they take
(an image, a clip, a pair of frames), which report sections apply to them, and for
each section that does not apply the one-line reason written into ``run/info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArgumentError

__all__ = ["Task", "SKIPPED"]

#: Input kinds a task can take.
INPUT_KINDS = ("image", "clip", "frame pair")

SKIPPED = "skipped"


@dataclass(frozen=True)
class Task:
    """One family of torchvision models and how introspect treats it.

    Attributes:
        name: registry key, e.g. ``"detection"``.
        summary: one line for ``--list-models``.
        module: the torchvision module its models come from, e.g. ``"torchvision.models.detection"``.
        input_kind: ``"image"``, ``"clip"`` or ``"frame pair"``.
        sections: the report sections that apply (None: every registered section, new ones included).
        not_applicable: section -> why it is skipped (written into ``run/info``).
        cam_methods: CAM method names it can run (``None``: every one).
        default_cam: the CAM method used when the caller keeps the default (``None``: the caller's).
        build_kwargs: extra keyword arguments for the torchvision builder with random weights.
        notes: anything ``run/info`` should say about this task.
    """

    name: str
    summary: str
    module: str
    input_kind: str
    sections: frozenset[str] | None
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    cam_methods: frozenset[str] | None = None
    default_cam: str | None = None
    build_kwargs: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ArgumentError(f"input_kind={self.input_kind!r} must be one of {INPUT_KINDS}", parameter="input_kind")

    def torchvision_module(self):
        """The torchvision module object (``torchvision.models.video`` ...)."""
        import importlib

        return importlib.import_module(self.module)

    def model_names(self) -> list[str]:
        """Every model name torchvision registers for this task, sorted."""
        import torchvision

        return sorted(torchvision.models.list_models(module=self.torchvision_module()))

    def skip_reason(self, section: str) -> str | None:
        """Why ``section`` does not run for this task, or None when it does."""
        if self.sections is None or section in self.sections:
            return None
        return self.not_applicable.get(section, f"{section} does not apply to {self.name} models")
