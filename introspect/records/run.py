"""Records of the run itself: its key/value card with the warnings, and each input as the model saw it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .base import ImageRecord, html_table, markdown_cell, markdown_table

__all__ = ["RunInfo", "InputImage"]


@dataclass(frozen=True)
class RunInfo:
    """What a run was (model, weights, inputs, device, versions, status) and what went wrong on the way."""

    info: Mapping[str, object]
    warnings: tuple[str, ...] = field(default=())

    def _rows(self) -> list[list[object]]:
        return [[k, v] for k, v in self.info.items()]

    def to_markdown(self) -> str:
        """A bold WARNINGS list first if any (TensorBoard's text cards are short: what is first is seen), then the
        key/value table."""
        table = markdown_table(["key", "value"], self._rows())
        if not self.warnings:
            return table
        listed = "\n".join(f"- **{markdown_cell(w)}**" for w in self.warnings)
        return f"**WARNINGS**\n\n{listed}\n\n{table}"

    def _repr_html_(self) -> str:
        return html_table(["key", "value"], [[k, v] for k, v in self.info.items()])


@dataclass(frozen=True)
class InputImage(ImageRecord):
    """One input as the model saw it (resized, cropped), under its tag-safe name."""

    name: str
    image: np.ndarray  # uint8 (H, W, 3)
