"""Dataset audits: a whole folder of images through the model once, on one process or many (torchrun).

``audit(model, "val/", options=AuditOptions(boxes="val.json"), out_dir=run)`` returns an
:class:`~introspect.records.AuditResult` (a detector with ``boxes=``: a ``DetectionAuditResult``; a segmenter
with ``masks=``: a ``SegmentationAuditResult``); ``Reporter(run).audit(result)`` writes it to TensorBoard.
"""

from __future__ import annotations

from .run import AuditOptions, audit, prepare_audit

__all__ = ["AuditOptions", "audit", "prepare_audit"]
