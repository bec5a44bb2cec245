"""What every record shares: the image convention, PNG for Jupyter, and the one Markdown / HTML table.

Records hold numbers and arrays, never live modules or display strings. Every image
they carry follows one convention: a ``uint8`` numpy array, height x width x 3 (RGB),
in the input image's own pixels. Records that hold an image render themselves in
Jupyter (``_repr_png_``) and convert with ``.to_pil()``; tables render as HTML.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["ImageRecord", "Picture", "png_bytes", "Markdown", "markdown_text", "markdown_table", "html_table",
           "markdown_cell", "heatmap_peak"]


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 HWC image encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Picture:
    """An image field drawn when first looked at: give the record an array, or a function that draws it.

    Computing a map is fast and drawing it (the colour overlay, boxes, labels) is not: a record built with
    a drawing function does the drawing only when its ``image`` is read (writing it to TensorBoard, showing
    it in Jupyter), once. Reading ``image`` always gives the uint8 array.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}_picture"

    def __get__(self, record: object, owner: type | None = None) -> np.ndarray:
        if record is None:
            raise AttributeError("a picture has no default")  # the dataclass field stays required
        value = record.__dict__[self._slot]
        if callable(value):
            value = np.ascontiguousarray(value())
            record.__dict__[self._slot] = value
        return value

    def __set__(self, record: object, value: np.ndarray | Callable[[], np.ndarray]) -> None:
        record.__dict__[self._slot] = value


class ImageRecord:
    """Mixin: a record whose ``image`` field is a uint8 HWC array (``to_pil()`` and Jupyter rendering)."""

    image: np.ndarray

    def to_pil(self):
        """The record's image as a ``PIL.Image``."""
        from PIL import Image

        return Image.fromarray(self.image)

    def _repr_png_(self) -> bytes:
        return png_bytes(self.image)


class Markdown(str):
    """Text that is Markdown already (bold, code): :func:`markdown_table` and :func:`markdown_cell` keep it as it is."""


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]{}#>|])")


def markdown_text(value: object) -> str:
    """``value`` as literal text in Markdown: ``__main__`` stays ``__main__``, not bold ``main`` (every character
    Markdown reads as markup is backslash-escaped, ``<`` written as ``&lt;``). :class:`Markdown` passes as it is."""
    if isinstance(value, Markdown):
        return str(value)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(value)).replace("<", "&lt;")


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (what TensorBoard's TEXT tab renders).

    Args:
        header: the column names.
        rows: one sequence of cells per row; each cell is written with ``str``, on one line, as literal text
            (:func:`markdown_cell`; a :class:`Markdown` cell as it is).

    Returns:
        The table, one line per row, header first.
    """
    lines = ["| " + " | ".join(markdown_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """The same table as HTML (Jupyter)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_cell(value: object) -> str:
    """A value made safe for one Markdown table cell: one line, literal text (:func:`markdown_text`)."""
    one_line = " ".join(str(value).split())
    return one_line if isinstance(value, Markdown) else markdown_text(one_line)


def heatmap_peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, column) of a 2-d map's maximum."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(col)
