"""Watch a model while it trains: histograms, gradient and update scalars, activation stats, probe CAMs.

``watch`` wraps a user's own training loop::

    with introspect.watch(model, "runs", every=50, probe=images, labels=labels) as w:
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()    # every 50th backward pass writes one set of summaries
            opt.step()
            w.scalar("loss", loss)             # optional: your own scalars at w.step

**Counting.** ``w.step`` is ``start_step`` plus the steps counted so far; the summaries of
step ``s`` are written when ``s`` is a multiple of ``every`` (``every=2`` over six steps
writes steps 2, 4 and 6); ``w.log()`` writes one set at any other moment.

- Without ``optimizer=`` a step is a *training backward pass*: a ``backward()`` that
  accumulates gradients into the model's parameters (``.grad``) while the model is in
  train mode. A post-accumulate-grad hook on each parameter that requires grad notices
  the first parameter a backward reaches; the step is counted and logged in a callback
  queued to run when that whole backward has finished (after every other end-of-backward
  callback, DistributedDataParallel's gradient all-reduce included), so a logging step
  sees every gradient of its backward, however many parameters it reached (frozen or
  unused ones are simply not reached). The nested backward passes of reentrant gradient
  checkpointing belong to the step of the backward running them (when that backward has
  reached a parameter outside the checkpointed segments first, as a head outside them
  does). ``torch.autograd.grad``, eval-mode backward passes and ``backward(inputs=...)``
  that stop short of the parameters are not counted. With gradient accumulation each
  micro-batch's backward is a step and ``.grad`` holds the sum so far; pass
  ``optimizer=`` to count updates instead. Under a ``GradScaler`` the
  gradients of a backward are still scaled: pass ``optimizer=`` (then they are read after
  ``scaler.step`` has unscaled them).
- With ``optimizer=`` a step is a completed ``optimizer.step()`` (a post-step hook,
  ``Optimizer.register_step_post_hook``); a step that a ``GradScaler`` skips is not a step.

**What a logging step ``s`` writes** (with an optimizer: right after its ``optimizer.step()``;
without: right after its backward, before the update):

- ``weights/<param>``: histogram of the weights (with an optimizer: after the update;
  without: the weights the step's forward used); ``gradients/<param>``: histogram of
  ``.grad`` (non-finite values left out).
- ``train/grad_norm`` (global L2 norm over every gradient) and ``train/grad_norm/<param>``.
- ``train/update_ratio`` and ``train/update_ratio/<param>``: one update relative to the
  weights, ``||w_s - w_{s-1}|| / ||w_s||`` (the "update:data" ratio; healthy training is
  typically around 1e-3). With an optimizer it is step ``s``'s own update (``w_{s-1}``
  copied by a pre-step hook attached for the logging step only); without one it is the
  change since the previous backward pass, i.e. the update the optimizer made from step
  ``s - 1``'s gradients (``w_{s-1}`` copied at the end of backward ``s - 1``).
- ``train/lr``: the first parameter group's learning rate (with an optimizer only).
- ``activations/<layer>/mean|std|zero_fraction`` for each stage layer
  (:func:`introspect.layers.default_feature_layers`, or ``layers=``), measured on the
  logging step's own training forward: forward hooks are attached after step ``s - 1``
  and each removes itself after the first forward that records a graph
  (``torch.is_grad_enabled()``; ``no_grad`` validation passes are ignored). Not for a
  compiled model (below).
- ``cam/probe/<i>``: the CAM (``cam_method``, Grad-CAM by default) of probe image ``i``
  for its true class (``labels``; the model's top class where ``labels`` is None),
  labelled with that class's probability, and ``train/probe_true_class_probability``
  (mean over the probe). The probe runs through :func:`introspect.engine.forward.run_forward`:
  eval mode inside :func:`introspect.hooks.inspecting`, gradients only with respect to
  the CAM layer's activation, so parameters, ``.grad``, BatchNorm running statistics,
  modes and the RNG are left exactly as the training loop had them.

**Wrapped models.** ``DistributedDataParallel`` / ``DataParallel`` (``.module``) and
``torch.compile`` (``OptimizedModule._orig_mod``, or ``module.compile()``) are unwrapped
for parameter and layer names. Under ``torch.distributed`` (or torchrun's ``RANK`` before
the process group exists) every rank counts steps and only rank 0 writes (elsewhere: no
run directory, no probe, no hooks but the counter); gradients are read after DDP's
all-reduce (after ``optimizer.step()``, or at the end of the backward), so the gradient
statistics are those of the reduced gradients; inside
``no_sync()`` they are rank 0's local ones. Activation statistics are rank 0's own batch.
watch runs no collective operation. For a compiled model watch attaches nothing to the
forward (forward hooks would force recompilation and could change the compiled code), so
no ``activations/...`` are written; the parameter and gradient hooks run outside the
compiled graph and leave it as it was; the probe runs the original module eagerly.

**Cost.** Between logging steps nothing is attached but the counter: with an optimizer
one post-step hook (under a microsecond per step), without one a post-accumulate-grad
hook per parameter that returns after comparing the backward's id (about 0.4 us per
parameter tensor per backward on a CPU; ``scripts/bench_watch`` measures both).

**Exit.** On leaving the ``with`` block (normally or by an exception) every hook is
removed and the run is flushed; a run that ``watch`` opened from a log directory is closed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch
from torch import nn

from .errors import ArgumentError, ArgumentTypeError, StateError
from .hooks import first_tensor
from .inputs import InputBatch
from .layers import LayerChoice, default_feature_layers, pick_cam_layer, resolve_layer
from .loaded import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, unwrap

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10: the annotation is for type checkers, which ship typing_extensions
    try:
        from typing_extensions import Unpack
    except ImportError:
        Unpack = Any

if TYPE_CHECKING:
    from .tensorboard import Reporter

__all__ = ["Watch", "WatchOptions", "WatchSettings", "watch"]

_MIN_PROBE_SIDE = 128  # probe CAMs smaller than this are enlarged (nearest) so TensorBoard shows them usefully


@dataclass(frozen=True)
class WatchOptions:
    """The settings of :func:`watch` that are plain values; each field's default is the only copy.

    Attributes:
        every: log every ``every``-th step (a step: a training backward pass, or an
            ``optimizer.step()`` when ``optimizer=`` is given); a whole number >= 1.
        layers: the layers whose activation mean/std/zero fraction are logged, as names or
            one comma-separated string (default: the model's stages,
            :func:`introspect.layers.default_feature_layers`; ``()``: none).
        cam_layer: the probe CAM's layer (default: the model family's CAM layer).
        cam_method: the probe CAM's method (a name of ``introspect.CAM_METHODS``).
        categories: class names, for ``labels`` given as names and for the CAM captions
            (default: a ``LoadedModel``'s categories, else none).
        mean: the normalisation the probe carries, to draw its photos (default: the
            ``LoadedModel``'s transform's, else ImageNet's).
        std: as ``mean``.
        run_name: the run directory's name under a log directory (default: ``<model>-<time>``).
        start_step: the step number before the first counted step (to continue a run).

    Raises:
        ArgumentError: ``every`` or ``start_step`` is not a whole number in range.
        ArgumentTypeError: ``categories``, ``mean`` or ``std`` is not a sequence.
    """

    every: int = 100
    layers: tuple[str, ...] | str | None = None
    cam_layer: str | None = None
    cam_method: str = "gradcam"
    categories: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    run_name: str | None = None
    start_step: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ArgumentError(f"every={self.every!r} must be a whole number of steps, 1 or more", parameter="every")
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int) or self.start_step < 0:
            raise ArgumentError(f"start_step={self.start_step!r} must be a whole number, 0 or more",
                                parameter="start_step")
        if isinstance(self.layers, str):  # "features.2,features.6", as the other option groups take layers
            object.__setattr__(self, "layers", tuple(n.strip() for n in self.layers.split(",") if n.strip()))
        for name in ("layers", "categories", "mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ArgumentTypeError(f"{name}={value!r} must be a sequence (list or tuple), not "
                                        f"{type(value).__name__}", parameter=name)
            object.__setattr__(self, name, tuple(value))


class WatchSettings(TypedDict, total=False):
    """``WatchOptions``' fields, accepted as keywords by :func:`watch` (``every=50``)."""

    every: int
    layers: Sequence[str] | str | None
    cam_layer: str | None
    cam_method: str
    categories: Sequence[str] | None
    mean: Sequence[float] | None
    std: Sequence[float] | None
    run_name: str | None
    start_step: int


class Watch:
    """Log a model's training into TensorBoard every ``every`` steps; use as a ``with`` block.

    ``watch`` is this class: ``with introspect.watch(model, "runs", every=50) as w: ...``.
    A step is a training backward pass of the model (one that accumulates into the
    parameters' ``.grad`` in train mode), logged at the end of that backward; with
    ``optimizer=``, a completed ``optimizer.step()``, logged right after it. Under
    ``torch.distributed`` only rank 0 writes. The docstring of the module
    ``introspect.watch`` (``sys.modules["introspect.watch"]``) lists every tag and when
    it is measured.

    Args:
        model: the module being trained (or a :class:`introspect.models.LoadedModel`);
            ``DistributedDataParallel``, ``DataParallel`` and ``torch.compile`` wrappers
            are unwrapped.
        logdir_or_writer: a log directory (a new run ``<model>-<time>``, or ``run_name``,
            is made in it), an :class:`introspect.tensorboard.Reporter`, or a
            ``torch.utils.tensorboard.SummaryWriter`` (left open at exit).
        optimizer: count ``optimizer.step()`` calls as steps and log ``train/lr``;
            ``None``: count the model's training backward passes.
        probe: a normalised image batch (N, 3, H, W), or an ``InputBatch``, whose CAM is
            drawn at each logging step.
        labels: the probe's classes (indices, or names in ``categories``); ``None``: the
            model's top class.
        options: the plain settings (:class:`WatchOptions`).
        **settings: any :class:`WatchOptions` field by name (``every=50``); these override
            the same fields of ``options``.

    Raises:
        ArgumentError: a setting out of range, a probe that is not an (N, 3, H, W) batch,
            ``labels`` without ``probe``, of the wrong length or naming classes without
            ``categories``, or a model without trainable parameters when no optimizer is given.
        ArgumentTypeError: an unknown setting, or ``model``, ``optimizer``, ``options``,
            ``probe`` or ``logdir_or_writer`` of a type that cannot be used.
        StateError: ``logdir_or_writer`` is a closed Reporter.
        UnknownLayerError: a name in ``layers`` or ``cam_layer`` the model does not have.
        UnknownMethodError: an unknown ``cam_method``.
        OutputError: a log directory that cannot be written.
    """

    def __init__(
        self,
        model: nn.Module | LoadedModel,
        logdir_or_writer: Any,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        probe: torch.Tensor | InputBatch | None = None,
        labels: Sequence[int | str] | torch.Tensor | None = None,
        options: WatchOptions = WatchOptions(),
        **settings: Unpack[WatchSettings],
    ) -> None:
        from .engine.cam import parse_cam_methods

        options = _merge_options(options, settings)
        module, loaded = unwrap(model)
        if not isinstance(module, nn.Module):
            raise ArgumentTypeError(f"model= must be a torch.nn.Module or a LoadedModel, got {type(module).__name__}",
                                    parameter="model")
        module, compiled = _training_module(module)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ArgumentTypeError(f"optimizer= must be the torch.optim.Optimizer that trains the model (or None to "
                                    f"count backward passes), got {type(optimizer).__name__}", parameter="optimizer")
        self.model = module
        self.optimizer = optimizer
        self.options = options
        self.every = options.every
        self.compiled = compiled
        self._step = options.start_step
        self.categories = tuple(options.categories or (loaded.categories if loaded else ()))
        names = list(options.layers) if options.layers is not None else [
            c.name for c in default_feature_layers(module)]
        layers = {name: resolve_layer(module, name) for name in names}
        self.layers: dict[str, nn.Module] = {} if compiled else layers  # no forward hooks on compiled code
        self._params = [(name, p) for name, p in module.named_parameters()]
        if optimizer is None and not any(p.requires_grad for _, p in self._params):
            raise ArgumentError("the model has no parameter that requires grad: without optimizer=, watch counts the "
                                "backward passes that reach the parameters; pass optimizer=... to count its steps",
                                parameter="optimizer")

        self._batch: InputBatch | None = None
        self._labels: list[int | str] | None = None
        self._cam_layer: LayerChoice | None = None
        self._cam_method = parse_cam_methods(options.cam_method)[0]
        if probe is not None:
            self._batch = _probe_batch(probe, loaded, options.mean, options.std)
            self._cam_layer = pick_cam_layer(module, options.cam_layer,
                                             input_size=tuple(self._batch.tensor.shape[-2:]))
            self._labels = _probe_labels(labels, len(self._batch), self.categories)
        elif labels is not None:
            raise ArgumentError("labels= were given without probe images: pass probe=... as well", parameter="labels")

        self._writes = _is_rank_zero()  # under torch.distributed only rank 0 writes
        self._reporter, self._owns_reporter = (
            _open_reporter(logdir_or_writer, options.run_name, loaded, module) if self._writes else (None, False)
        )
        if self._reporter is not None:
            _write_run_record(self._reporter, loaded, module)
        self._stats: dict[str, torch.Tensor] = {}
        self._forward_handles: list[Any] = []
        self._pre_step_handle: Any = None
        self._counter_handles: list[Any] = []
        self._backward_task: int | None = None
        self._pending: weakref.ref | None = None  # the queued end-of-backward count, while its backward runs
        self._before: list[torch.Tensor] | None = None
        self._resolved_labels: torch.Tensor | None = None

    # -- public ---------------------------------------------------------------------

    @property
    def step(self) -> int:
        """Steps completed (plus ``start_step``): optimizer steps, or training backward passes."""
        return self._step

    @property
    def counts(self) -> str:
        """What a step is here: ``"optimizer steps"`` or ``"backward passes"``."""
        return "backward passes" if self.optimizer is None else "optimizer steps"

    @property
    def writes(self) -> bool:
        """Whether this process writes the run (False on ranks other than 0 under torch.distributed)."""
        return self._writes

    @property
    def run_dir(self) -> Path | None:
        """The TensorBoard run directory written to (None where this process does not write)."""
        return self._reporter.run_dir if self._reporter is not None else None

    @property
    def reporter(self) -> Reporter | None:
        """The :class:`introspect.tensorboard.Reporter` written to (None where this process does not write)."""
        return self._reporter

    def start(self) -> Watch:
        """Attach the step counter (``with`` does this); calling it again does nothing.

        Returns:
            This watch.
        """
        if self._counter_handles:
            return self
        if self.optimizer is not None:
            self._counter_handles.append(self.optimizer.register_step_post_hook(self._after_optimizer_step))
        else:
            self._counter_handles.extend(p.register_post_accumulate_grad_hook(self._after_accumulate)
                                         for _, p in self._params if p.requires_grad)
        if (self._step + 1) % self.every == 0:
            self._arm()
        return self

    def close(self) -> None:
        """Remove every hook, flush the run, close it if ``watch`` opened it. Safe to call twice."""
        self._disarm()
        while self._counter_handles:
            self._counter_handles.pop().remove()
        if self._reporter is None:
            return
        if self._owns_reporter:
            self._reporter.close()
        elif not self._reporter.closed:
            self._reporter.flush()

    def __enter__(self) -> Watch:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def scalar(self, name: str, value: float | torch.Tensor, step: int | None = None) -> None:
        """Write your own scalar as ``train/<name>`` (on rank 0 only under torch.distributed).

        Args:
            name: the tag's name under ``train/``.
            value: a number or a one-element tensor.
            step: the step to write it at (default: :attr:`step`).
        """
        if self._reporter is None:
            return
        if isinstance(value, torch.Tensor):
            value = value.detach().item()
        self._reporter.scalar(f"train/{name}", float(value), self._step if step is None else step)

    def log(self, step: int | None = None) -> None:
        """Write one set of summaries now (on rank 0 only under torch.distributed).

        Everything but activation statistics and update ratios, which only the automatic
        logging steps measure (they need that step's forward and its update).

        Args:
            step: the step to write them at (default: :attr:`step`).
        """
        self._write(self._step if step is None else int(step), automatic=False)

    # -- counting -------------------------------------------------------------------

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._count()

    def _after_accumulate(self, param: torch.Tensor) -> None:
        """A parameter's gradient was accumulated: on a backward's first, queue the count for its end."""
        graph_task = torch._C._current_graph_task_id()  # the id torch's own register_multi_grad_hook keys on
        if graph_task == self._backward_task:
            return
        self._backward_task = graph_task
        if self._pending is not None and self._pending() is not None:
            return  # a backward nested in one still running (reentrant checkpointing): part of that step
        if self.model.training:
            callback = _Callback(self._end_of_backward)
            self._pending = weakref.ref(callback)  # dies unrun with the engine's graph task if the backward fails
            _queue_at_end_of_backward(callback)

    def _end_of_backward(self) -> None:
        self._pending = None
        with torch.enable_grad():  # the engine runs callbacks with grad mode off; the probe CAM needs it
            self._count()

    def _count(self) -> None:
        self._step += 1
        if self._step % self.every == 0:
            self._disarm()
            self._write(self._step, automatic=True)
        if (self._step + 1) % self.every == 0:
            self._arm()

    def _arm(self) -> None:
        """Attach what the next (logging) step needs: stage forward hooks and a copy of the weights before it."""
        self._disarm()
        if not self._writes:
            return
        self._stats = {}
        for name, module in self.layers.items():
            self._forward_handles.append(module.register_forward_hook(self._stats_hook(name)))
        if self.optimizer is not None:
            self._pre_step_handle = self.optimizer.register_step_pre_hook(self._copy_weights)
        else:  # the weights now are those before the update from this step's gradients
            self._before = [p.detach().clone() for _, p in self._params]

    def _disarm(self) -> None:
        while self._forward_handles:
            self._forward_handles.pop().remove()
        if self._pre_step_handle is not None:
            self._pre_step_handle.remove()
            self._pre_step_handle = None

    def _stats_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not torch.is_grad_enabled() or name in self._stats:
                return  # not a training forward, or already measured
            try:
                t = first_tensor(output).detach()
            except TypeError:  # no tensor to measure: never break the user's forward over a statistic
                return
            with torch.no_grad():
                t = t.float()
                self._stats[name] = torch.stack([t.mean(), t.std() if t.numel() > 1 else t.new_zeros(()),
                                                 (t == 0).float().mean()])
            if len(self._stats) == len(self.layers):  # every stage measured: detach the hooks
                while self._forward_handles:
                    self._forward_handles.pop().remove()
        return hook

    def _copy_weights(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._before = [p.detach().clone() for _, p in self._params]
        if self._pre_step_handle is not None:
            self._pre_step_handle.remove()
            self._pre_step_handle = None

    # -- writers --------------------------------------------------------------------

    def _write(self, step: int, automatic: bool) -> None:
        if self._reporter is None:
            return
        from .analyzers.parameters import histogram_of
        from .records import LayerActivity, TrainingStats

        grads = [(name, p.grad.detach()) for name, p in self._params if p.grad is not None]
        parts: dict[str, Any] = {}
        with torch.no_grad():  # binned on the tensor's device, finite values only
            parts["weights"] = tuple((name, histogram_of(p.detach())) for name, p in self._params)
            parts["gradients"] = tuple((name, histogram_of(g)) for name, g in grads)
            parts.update(self._norms(grads))
            if automatic and self._before is not None:
                parts.update(self._update_ratios())
            if self.optimizer is not None and self.optimizer.param_groups:
                lr = self.optimizer.param_groups[0].get("lr")
                if isinstance(lr, (int, float, torch.Tensor)):
                    parts["lr"] = float(lr)
        if automatic:
            parts["activations"] = tuple(LayerActivity(layer, *stats.tolist()) for layer, stats in self._stats.items())
            self._stats = {}
            self._before = None
        if self._batch is not None:
            parts["probe_images"], parts["probe_probability"] = self._probe()
        self._reporter.record(TrainingStats(**parts), step)

    def _norms(self, grads: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
        if not grads:
            return {}
        norms = torch.stack([g.float().norm() for _, g in grads]).cpu()
        return {"grad_norm": float(norms.norm()),
                "grad_norms": tuple((name, value) for (name, _), value in zip(grads, norms.tolist()))}

    def _update_ratios(self) -> dict[str, Any]:
        deltas, weights = [], []
        for (_, p), before in zip(self._params, self._before):
            deltas.append((p.detach() - before).float().norm())
            weights.append(p.detach().float().norm())
        d = torch.stack(deltas).cpu()
        w = torch.stack(weights).cpu()
        parts: dict[str, Any] = {}
        if float(w.norm()) > 0:
            parts["update_ratio"] = float(d.norm() / w.norm())
        parts["update_ratios"] = tuple((name, delta / weight)
                                       for (name, p), delta, weight in zip(self._params, d.tolist(), w.tolist())
                                       if p.requires_grad and weight > 0 and math.isfinite(delta / weight))
        return parts

    def _probe(self) -> tuple[tuple[np.ndarray, ...], float]:
        """The probe's labelled CAMs, and the mean probability of their true classes."""
        from .engine.cam import cams_from_pass
        from .engine.classes import resolve_target, top_classes
        from .drawing import label_image
        from .engine.forward import run_forward
        from .engine.targets import ClassScore, TrueLabel

        batch, layer = self._batch, self._cam_layer
        with _eager(self.model):
            forward = run_forward(self.model, batch.tensor, capture=[layer.name], grad_layer=layer.name)
        try:
            if self._labels is None:
                classes = top_classes(forward, 1)
                targets = ClassScore.per_image(classes)
            else:
                if self._resolved_labels is None:
                    num_classes = forward.logits.shape[-1]
                    self._resolved_labels = torch.tensor(
                        [resolve_target(t, self.categories, num_classes) for t in self._labels], dtype=torch.long
                    )
                classes = self._resolved_labels[:, None]
                targets = TrueLabel.per_image(self._resolved_labels)
            import warnings

            with warnings.catch_warnings():  # an untrained model's blank map is expected, not news
                warnings.simplefilter("ignore")
                results = cams_from_pass(self.model, forward, batch, [self._cam_method], layer, targets,
                                         self.categories)
            probs = forward.probabilities.cpu().gather(1, classes.cpu()).squeeze(1)
        finally:
            forward.release()
        images = tuple(label_image(_enlarge(r.maps[0].image, _MIN_PROBE_SIDE),
                                   r.maps[0].subject.caption) for r in results)
        return images, float(probs.mean())


watch = Watch
"""``watch(model, logdir_or_writer, *, optimizer=None, probe=None, labels=None, options=WatchOptions(), **settings)``:
the :class:`Watch` class under the name used in ``with introspect.watch(...) as w``."""


def _merge_options(options: WatchOptions, settings: dict[str, Any]) -> WatchOptions:
    """``options`` with the fields named in ``settings`` replaced; an unknown name is an ArgumentTypeError."""
    if not isinstance(options, WatchOptions):
        raise ArgumentTypeError(f"options= must be a WatchOptions, got {type(options).__name__}", parameter="options")
    fields = [f.name for f in dataclasses.fields(WatchOptions)]
    unknown = [name for name in settings if name not in fields]
    if unknown:
        raise ArgumentTypeError(f"watch() has no setting {unknown[0]}=: the settings are {', '.join(fields)} "
                                "(and optimizer=, probe=, labels=, options=)", parameter=unknown[0])
    return dataclasses.replace(options, **settings) if settings else options


def _training_module(module: nn.Module) -> tuple[nn.Module, bool]:
    """(the module whose parameters and layers are named, whether compiled code runs its forward)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # a compiled model has imported it already
    optimized = getattr(eval_frame, "OptimizedModule", None)
    compiled = False
    while True:
        if isinstance(module, (DistributedDataParallel, DataParallel)):
            module = module.module
        elif optimized is not None and isinstance(module, optimized):
            module, compiled = module._orig_mod, True
        else:
            break
    compiled = compiled or any(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules())
    return module, compiled


@contextmanager
def _eager(module: nn.Module) -> Iterator[None]:
    """Run the modules compiled in place (``module.compile()``) eagerly inside: the probe's hooks and eval mode
    must not send the training's compiled code into recompiling."""
    compiled = [(m, m._compiled_call_impl) for m in module.modules()
                if getattr(m, "_compiled_call_impl", None) is not None]
    try:
        for m, _ in compiled:
            m._compiled_call_impl = None
        yield
    finally:
        for m, impl in compiled:
            m._compiled_call_impl = impl


def _is_rank_zero() -> bool:
    """Rank 0 of the default process group; before it is initialised, torchrun's ``RANK`` (0 when unset)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0").strip() in ("", "0")


class _Callback:
    """A callable that a weak reference can follow (the engine holds the only strong one)."""

    __slots__ = ("function", "__weakref__")

    def __init__(self, function: Any) -> None:
        self.function = function

    def __call__(self) -> None:
        self.function()


def _queue_at_end_of_backward(callback: Any) -> None:
    """Run ``callback`` when the running backward has finished, after every callback queued so far or later
    from a hook (DistributedDataParallel queues its gradient all-reduce's completion so, from a hook)."""
    engine = torch.autograd.Variable._execution_engine  # the queue DDP and FSDP use for the same purpose
    engine.queue_callback(lambda: engine.queue_callback(callback))


# -- helpers ------------------------------------------------------------------------


def _enlarge(image: np.ndarray, min_side: int) -> np.ndarray:
    factor = -(-min_side // max(1, min(image.shape[:2])))
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _probe_batch(probe: Any, loaded: LoadedModel | None, mean: Sequence[float] | None,
                 std: Sequence[float] | None) -> InputBatch:
    from .images import to_display

    if isinstance(probe, InputBatch):
        return probe
    if not isinstance(probe, torch.Tensor):
        raise ArgumentTypeError(f"probe= must be a normalised image tensor (N, 3, H, W), got {type(probe).__name__}",
                                parameter="probe")
    tensor = probe.detach().unsqueeze(0) if probe.ndim == 3 else probe.detach()
    if tensor.ndim != 4 or tensor.shape[1] != 3 or tensor.shape[0] == 0:
        raise ArgumentError(f"probe= must be a normalised image tensor (N, 3, H, W), got shape {tuple(probe.shape)}",
                            parameter="probe")
    transform = loaded.transform if loaded is not None else None
    mean = mean if mean is not None else getattr(transform, "mean", IMAGENET_MEAN)
    std = std if std is not None else getattr(transform, "std", IMAGENET_STD)
    photos = to_display(tensor, mean, std)
    return InputBatch(tensor=tensor.clone(), photos=photos, names=tuple(str(i) for i in range(tensor.shape[0])))


def _probe_labels(labels: Any, count: int, categories: Sequence[str]) -> list[int | str] | None:
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().reshape(-1).tolist()
    items = list(labels)
    if len(items) != count:
        raise ArgumentError(f"labels= has {len(items)} entries for {count} probe images: give one class per image",
                            parameter="labels")
    for item in items:
        if isinstance(item, str) and not item.strip().lstrip("-").isdigit() and not categories:
            raise ArgumentError(f"labels= entry {item!r} is a class name but no categories were given: pass "
                                "categories=...", parameter="labels")
        if isinstance(item, int) and item < 0:
            raise ArgumentError(f"labels= entry {item} is negative: class indices start at 0", parameter="labels")
    return [int(i) if isinstance(i, (int, np.integer)) else i for i in items]


WATCH_NOT_EXPLORABLE = ("a training run watched by introspect.watch: its model lives in the training script and its "
                        "weights changed as it trained; save a checkpoint and run introspect MODEL --weights "
                        "CHECKPOINT --image PHOTO to explore it")


def _write_run_record(reporter: Reporter, loaded: LoadedModel | None, module: nn.Module) -> None:
    """The run's ``introspect.json`` (kind ``watch``), so the TensorBoard tab lists it and says why it cannot
    compute maps for it; a record already there (a report into the same run) is kept."""
    from .run_scope import run_record
    from .tensorboard.reporter import RUN_RECORD_FILE

    if (reporter.run_dir / RUN_RECORD_FILE).exists():
        return
    record = run_record("watch", loaded, not_explorable=WATCH_NOT_EXPLORABLE)
    if loaded is None:
        record["model"] = type(module).__name__
    reporter.run_record(record)


def _open_reporter(target: Any, run_name: str | None, loaded: LoadedModel | None, module: nn.Module):
    """(reporter, whether watch owns it and closes it at exit)."""
    from .tensorboard import Reporter, new_run_dir

    if isinstance(target, Reporter):
        if target.closed:
            raise StateError(f"logdir_or_writer= is the closed Reporter of {target.run_dir}: pass an open one or a "
                             "log directory", parameter="logdir_or_writer")
        return target, False
    if isinstance(target, (str, Path)):
        name = loaded.name if loaded is not None else type(module).__name__
        return Reporter(new_run_dir(target, run_name, name)), True
    try:
        return Reporter.from_writer(target), False
    except TypeError:
        raise ArgumentTypeError(
            f"logdir_or_writer= cannot be a {type(target).__name__}: pass a log directory, a Reporter or a "
            "SummaryWriter", parameter="logdir_or_writer"
        ) from None
