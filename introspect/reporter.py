"""The former home of the Reporter, kept as a name: it lives in :mod:`introspect.tensorboard` now."""

from __future__ import annotations

from .tensorboard import Reporter, new_run_dir

__all__ = ["Reporter", "new_run_dir"]
