"""TensorBoard output, in three parts.

- :mod:`~introspect.tensorboard.writer`: :func:`new_run_dir` and :class:`RunWriter`, one run's event file
  (its lifetime, a full disk, the primitives); the only module that imports tensorboard, lazily;
- :mod:`~introspect.tensorboard.layouts`: records -> tags, one :class:`Layout` per record type in
  :data:`LAYOUTS` (:func:`register_layout` adds one), and :func:`write_record`; used by the report, the
  audit and watch alike;
- :mod:`~introspect.tensorboard.reporter`: :class:`Reporter`, a RunWriter with one method per record family.
"""

from __future__ import annotations

from .layouts import LAYOUTS, Layout, layout_for, register_layout, write_record, write_records
from . import audit_layouts  # noqa: F401 - registers the detection and segmentation audits' layouts
from .reporter import Reporter
from .writer import RunWriter, new_run_dir

__all__ = ["LAYOUTS", "Layout", "Reporter", "RunWriter", "layout_for", "new_run_dir", "register_layout",
           "write_record", "write_records"]
