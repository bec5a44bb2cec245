"""The **introspect** tab inside TensorBoard (``tensorboard --logdir runs``): maps computed on demand.

Registered through the ``tensorboard_plugins`` entry point (:class:`~introspect_tab.plugin.IntrospectLoader`).
This package imports no torch and nothing of :mod:`introspect` at TensorBoard's start: the first
request that needs a model imports :mod:`introspect.tab`, which keeps the models warm.
"""

from __future__ import annotations

__all__ = ["IntrospectLoader"]


def __getattr__(name: str):
    if name == "IntrospectLoader":
        from .plugin import IntrospectLoader

        return IntrospectLoader
    raise AttributeError(name)
