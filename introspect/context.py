"""The state one run (or one library call) shares: the model, its task, the options, the current batch.

A report's sections, the audit and the library's analyzers all hand a :class:`RunContext`
to the model's task (:mod:`introspect.tasks`), which reads the options it needs, declares
what the one forward pass per batch must capture, and returns records. Results several
sections use (a batch's CAMs) are computed once per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .options import CamOptions, DetectionOptions, FeatureOptions, FilterOptions, SaliencyOptions

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """The state a run's sections (or one library call) share.

    Per batch, ``batch`` is the task's batch of inputs and ``forward`` the one forward pass
    over it (the task's own pass record) that every ``batch`` section shares.
    """

    loaded: Any  # LoadedModel
    task: Any  # its introspect.tasks.Task: what it takes, predicts and can show
    sections: list[str] = field(default_factory=list)
    images: list = field(default_factory=list)
    cam: CamOptions = field(default_factory=CamOptions)
    features: FeatureOptions = field(default_factory=FeatureOptions)
    saliency: SaliencyOptions = field(default_factory=SaliencyOptions)
    filters: FilterOptions = field(default_factory=FilterOptions)
    detection: DetectionOptions = field(default_factory=DetectionOptions)
    say: Callable[[str], None] = lambda message: None
    reporter: Any = None  # introspect.tensorboard.Reporter, set once the run directory exists
    info: dict[str, object] = field(default_factory=dict)  # extra lines for run/info
    state: dict[str, Any] = field(default_factory=dict)  # per-run state (choices, accumulations)
    capture: list[str] = field(default_factory=list)  # layers the shared forward pass keeps
    gradient_layer: str | None = None  # the layer whose output gradients the shared pass prepares
    explain: bool = False  # the shared pass must serve CAMs (set by the sections that draw them)
    predictions: list = field(default_factory=list)  # every input's prediction record, for the summary
    batch: Any = None  # the current batch (the task's kind: images, clips, frame pairs)
    forward: Any = None  # the current forward pass
    _per_batch: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> nn.Module:
        """The module under inspection."""
        return self.loaded.model

    def wants(self, name: str) -> bool:
        """Whether section ``name`` is part of this run."""
        return name in self.sections

    def keep(self, *layers: str) -> None:
        """Ask the shared forward pass to capture these layers' outputs."""
        for layer in layers:
            if layer not in self.capture:
                self.capture.append(layer)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for in this run; the same value after."""
        if key not in self.state:
            self.state[key] = compute()
        return self.state[key]

    def per_batch(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per batch: results that several sections share (the CAM maps)."""
        if key not in self._per_batch:
            self._per_batch[key] = compute()
        return self._per_batch[key]

    def start_batch(self, batch: Any) -> None:
        """Make ``batch`` current and run the one forward pass over it that every section shares."""
        self.batch = batch
        self._per_batch.clear()
        self.forward = self.task.forward(self)

    def end_batch(self) -> None:
        """Drop the batch and everything computed from it (memory stays flat over a folder)."""
        release = getattr(self.forward, "release", None)
        if release is not None:
            release()
        self.batch = self.forward = None
        self._per_batch.clear()

    def cam_results(self) -> list:
        """This batch's CAM results for every method (computed once per batch, by the task)."""
        return self.per_batch("cam_results", lambda: self.task.cam_results(self))

    def batch_predictions(self) -> list:
        """This batch's prediction records (computed once per batch, by the task)."""
        return self.per_batch("predictions", lambda: self.task.predictions(self))
