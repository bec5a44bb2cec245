"""Frozen dataclasses that analyzers, tasks and the audit return, and that the TensorBoard layouts write.

One module per domain, every name re-exported here (``from introspect.records import CamResult``):

- :mod:`~introspect.records.base`: the image mixin, PNG, the one Markdown / HTML table helper;
- :mod:`~introspect.records.run`: the run's info card and its inputs as the model saw them;
- :mod:`~introspect.records.model`: layer table, kernels, feature maps, parameters and histograms, training stats;
- :mod:`~introspect.records.explain`: CAM (one record for every task), saliency, filters, comparisons, quality,
  pointing, embeddings;
- :mod:`~introspect.records.tasks`: predictions, detections, segmentation, optical flow;
- :mod:`~introspect.records.audit`: the dataset audit;
- :mod:`~introspect.records.audit_tasks`: the detection and segmentation audits.

Records import nothing above them (no analyzer, task or model code): numbers and arrays in, Markdown and
pictures out.
"""

from __future__ import annotations

from . import audit, audit_tasks, base, explain, model, run, tasks
from .audit import *  # noqa: F401,F403 - each module's __all__ is the one list of its names
from .audit_tasks import *  # noqa: F401,F403
from .base import *  # noqa: F401,F403
from .explain import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403
from .run import *  # noqa: F401,F403
from .tasks import *  # noqa: F401,F403

__all__ = [*base.__all__, *run.__all__, *model.__all__, *explain.__all__, *tasks.__all__, *audit.__all__,
           *audit_tasks.__all__]
