"""The compute side of the TensorBoard **introspect** tab: warm models and maps on demand.

The TensorBoard plugin itself (routes, static files) is :mod:`introspect_tab`, which imports nothing of
torch until the tab asks for a map; it then calls :class:`~introspect.tab.workbench.Workbench`, which
loads a run's model again from that run's ``introspect.json`` record and explains images through the
library's own calls (:func:`introspect.cam`, :func:`introspect.predict`): the same engine, tasks and
targets as the command line.
"""

from __future__ import annotations

from .workbench import Explanation, MapView, Workbench, reload_spec

__all__ = ["Explanation", "MapView", "Workbench", "reload_spec"]
