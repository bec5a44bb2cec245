"""Watch a model while it trains: histograms, gradient and update scalars, activation stats, probe CAMs.

``watch`` wraps a user's own training loop::

    with introspect.watch(model, "runs", optimizer=opt, every=50, probe=images, labels=labels) as w:
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()                     # every 50th call writes one set of summaries
            w.scalar("loss", loss)         # optional: your own scalars at w.step

**Counting.** Steps are the optimizer's completed ``step()`` calls, counted by a post-step
hook (``Optimizer.register_step_post_hook``); a step that a ``GradScaler`` skips is not a
step. ``w.step`` is ``start_step`` plus the steps counted so far. The summaries of step
``s`` are written when ``s`` is a multiple of ``every``: ``every=2`` over six steps writes
steps 2, 4 and 6. ``w.log()`` writes one set at any other moment (e.g. after the loop).

**What a logging step ``s`` writes** (right after its ``optimizer.step()``):

- ``weights/<param>``: histogram of the weights after the update;
  ``gradients/<param>``: histogram of the gradients the update used (non-finite values left out).
- ``train/grad_norm`` (global L2 norm over every gradient) and ``train/grad_norm/<param>``.
- ``train/update_ratio`` and ``train/update_ratio/<param>``: the update of this one step
  relative to the weights, ``||w_s - w_{s-1}|| / ||w_s||`` (the per-step "update:data"
  ratio; healthy training is typically around 1e-3). ``w_{s-1}`` is copied by a pre-step
  hook attached for the logging step only.
- ``train/lr``: the first parameter group's learning rate.
- ``activations/<layer>/mean|std|zero_fraction`` for each stage layer
  (:func:`introspect.layers.default_feature_layers`, or ``layers=``), measured on the
  logging step's own training forward: forward hooks are attached after step ``s - 1``
  and each removes itself after the first forward that records a graph
  (``torch.is_grad_enabled()``; ``no_grad`` validation passes are ignored).
- ``cam/probe/<i>``: the CAM (``cam_method``, Grad-CAM by default) of probe image ``i``
  for its true class (``labels``; the model's top class where ``labels`` is None),
  labelled with that class's probability, and ``train/probe_true_class_probability``
  (mean over the probe). The probe runs through :func:`introspect.forward.run_forward`:
  eval mode inside :func:`introspect.hooks.inspecting`, gradients only with respect to
  the CAM layer's activation, so parameters, ``.grad``, BatchNorm running statistics,
  modes and the RNG are left exactly as the training loop had them.

**Cost.** Between logging steps nothing is attached but the post-step hook, which adds
one to a counter (``scripts/bench_watch`` measures it).

**Exit.** On leaving the ``with`` block (normally or by an exception) every hook is
removed and the run is flushed; a run that ``watch`` opened from a log directory is closed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UsageError
from .hooks import first_tensor
from .inputs import InputBatch, unwrap
from .layers import LayerChoice, default_feature_layers, pick_cam_layer, resolve_layer
from .models import IMAGENET_MEAN, IMAGENET_STD, LoadedModel

__all__ = ["Watch", "watch"]

_MIN_PROBE_SIDE = 128  # probe CAMs smaller than this are enlarged (nearest) so TensorBoard shows them usefully


class Watch:
    """A running watch over one model and optimizer; use :func:`watch` to make one."""

    def __init__(
        self,
        model: nn.Module | LoadedModel,
        logdir_or_writer: Any,
        *,
        optimizer: torch.optim.Optimizer,
        every: int = 100,
        probe: torch.Tensor | InputBatch | None = None,
        labels: Sequence[int | str] | torch.Tensor | None = None,
        categories: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        layers: Sequence[str] | None = None,
        cam_layer: str | None = None,
        cam_method: str = "gradcam",
        run_name: str | None = None,
        start_step: int = 0,
    ) -> None:
        from .analyzers.cam import parse_cam_methods

        module, loaded = unwrap(model)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UsageError(
                f"watch needs the torch.optim.Optimizer that trains the model (optimizer=...), "
                f"got {type(optimizer).__name__}"
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UsageError(f"every must be a whole number of optimizer steps >= 1, got {every!r}")
        self.model = module
        self.optimizer = optimizer
        self.every = every
        self._step = int(start_step)
        self.categories = tuple(categories or (loaded.categories if loaded else ()))
        names = list(layers) if layers is not None else [c.name for c in default_feature_layers(module)]
        self.layers: dict[str, nn.Module] = {name: resolve_layer(module, name) for name in names}
        self._params = [(name, p) for name, p in module.named_parameters()]

        self._batch: InputBatch | None = None
        self._labels: list[int | str] | None = None
        self._cam_layer: LayerChoice | None = None
        self._cam_method = parse_cam_methods(cam_method)[0]
        if probe is not None:
            self._batch = _probe_batch(probe, loaded, mean, std)
            self._cam_layer = pick_cam_layer(module, cam_layer, input_size=tuple(self._batch.tensor.shape[-2:]))
            self._labels = _probe_labels(labels, len(self._batch), self.categories)
        elif labels is not None:
            raise UsageError("labels were given without probe images: pass probe=... as well")

        self._reporter, self._owns_reporter = _open_reporter(logdir_or_writer, run_name, loaded, module)
        self._stats: dict[str, torch.Tensor] = {}
        self._forward_handles: list[Any] = []
        self._pre_step_handle: Any = None
        self._post_step_handle: Any = None
        self._before: list[torch.Tensor] | None = None
        self._resolved_labels: torch.Tensor | None = None

    # -- public ---------------------------------------------------------------------

    @property
    def step(self) -> int:
        """Optimizer steps completed (plus ``start_step``)."""
        return self._step

    @property
    def run_dir(self) -> Path:
        """The TensorBoard run directory written to."""
        return self._reporter.run_dir

    @property
    def reporter(self):
        """The :class:`introspect.reporter.Reporter` written to."""
        return self._reporter

    def start(self) -> Watch:
        """Attach the step counter (``with`` does this)."""
        if self._post_step_handle is None:
            self._post_step_handle = self.optimizer.register_step_post_hook(self._after_step)
            if (self._step + 1) % self.every == 0:
                self._arm()
        return self

    def close(self) -> None:
        """Remove every hook, flush the run, close it if ``watch`` opened it. Safe to call twice."""
        self._disarm()
        if self._post_step_handle is not None:
            self._post_step_handle.remove()
            self._post_step_handle = None
        if self._owns_reporter:
            self._reporter.close()
        elif not self._reporter.closed:
            self._reporter.flush()

    def __enter__(self) -> Watch:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def scalar(self, name: str, value: float | torch.Tensor, step: int | None = None) -> None:
        """Write your own scalar as ``train/<name>`` at ``step`` (default: :attr:`step`)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().item()
        self._reporter.scalar(f"train/{name}", float(value), self._step if step is None else step)

    def log(self, step: int | None = None) -> None:
        """Write one set of summaries now, at ``step`` (default: :attr:`step`).

        Everything but activation statistics and update ratios, which only the automatic
        logging steps measure (they need that step's forward and its update).
        """
        self._write(self._step if step is None else int(step), automatic=False)

    def _write(self, step: int, automatic: bool) -> None:
        reporter = self._reporter
        grads = [(name, p.grad.detach()) for name, p in self._params if p.grad is not None]
        with torch.no_grad():
            for name, p in self._params:  # the reporter bins on the tensor's device, finite values only
                reporter.histogram(f"weights/{name}", p.detach(), step)
            for name, g in grads:
                reporter.histogram(f"gradients/{name}", g, step)
            self._write_norms(grads, step)
            if automatic and self._before is not None:
                self._write_update_ratios(step)
            lr = self.optimizer.param_groups[0].get("lr") if self.optimizer.param_groups else None
            if isinstance(lr, (int, float, torch.Tensor)):
                reporter.scalar("train/lr", float(lr), step)
        if automatic:
            for layer, stats in self._stats.items():
                mean, std, zeros = stats.tolist()
                reporter.scalar(f"activations/{layer}/mean", mean, step)
                reporter.scalar(f"activations/{layer}/std", std, step)
                reporter.scalar(f"activations/{layer}/zero_fraction", zeros, step)
            self._stats = {}
            self._before = None
        if self._batch is not None:
            self._write_probe(step)
        reporter.flush()

    # -- hooks ----------------------------------------------------------------------

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._step += 1
        if self._step % self.every == 0:
            self._disarm()
            self._write(self._step, automatic=True)
        if (self._step + 1) % self.every == 0:
            self._arm()

    def _arm(self) -> None:
        """Attach what the next (logging) step needs: stage forward hooks and a pre-step weight copy."""
        self._disarm()
        self._stats = {}
        for name, module in self.layers.items():
            self._forward_handles.append(module.register_forward_hook(self._stats_hook(name)))
        self._pre_step_handle = self.optimizer.register_step_pre_hook(self._copy_weights)

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

    def _write_norms(self, grads: list[tuple[str, torch.Tensor]], step: int) -> None:
        if not grads:
            return
        norms = torch.stack([g.float().norm() for _, g in grads]).cpu()
        self._reporter.scalar("train/grad_norm", float(norms.norm()), step)
        for (name, _), value in zip(grads, norms.tolist()):
            self._reporter.scalar(f"train/grad_norm/{name}", value, step)

    def _write_update_ratios(self, step: int) -> None:
        deltas, weights = [], []
        for (_, p), before in zip(self._params, self._before):
            deltas.append((p.detach() - before).float().norm())
            weights.append(p.detach().float().norm())
        d = torch.stack(deltas).cpu()
        w = torch.stack(weights).cpu()
        if float(w.norm()) > 0:
            self._reporter.scalar("train/update_ratio", float(d.norm() / w.norm()), step)
        for (name, p), delta, weight in zip(self._params, d.tolist(), w.tolist()):
            if p.requires_grad and weight > 0 and math.isfinite(delta / weight):
                self._reporter.scalar(f"train/update_ratio/{name}", delta / weight, step)

    def _write_probe(self, step: int) -> None:
        from .analyzers.cam import cams_from_pass
        from .analyzers.predictions import resolve_target, top_classes
        from .forward import run_forward
        from .images import label_image

        batch, layer = self._batch, self._cam_layer
        forward = run_forward(self.model, batch.tensor, capture=[layer.name], grad_layer=layer.name)
        try:
            if self._labels is None:
                classes = top_classes(forward, 1)
            else:
                if self._resolved_labels is None:
                    num_classes = forward.logits.shape[-1]
                    self._resolved_labels = torch.tensor(
                        [resolve_target(t, self.categories, num_classes) for t in self._labels], dtype=torch.long
                    )
                classes = self._resolved_labels[:, None]
            import warnings

            with warnings.catch_warnings():  # an untrained model's blank map is expected, not news
                warnings.simplefilter("ignore")
                results = cams_from_pass(self.model, forward, batch, [self._cam_method], layer, classes,
                                         self.categories)
            probs = forward.probabilities.cpu().gather(1, classes.cpu()).squeeze(1)
        finally:
            forward.release()
        for i, result in enumerate(results):
            entry = result.maps[0]
            image = label_image(_enlarge(entry.image, _MIN_PROBE_SIDE), f"{entry.class_name} {entry.probability:.1%}")
            self._reporter.image(f"cam/probe/{i}", image, step)
        self._reporter.scalar("train/probe_true_class_probability", float(probs.mean()), step)


def watch(
    model: nn.Module | LoadedModel,
    logdir_or_writer: Any,
    *,
    optimizer: torch.optim.Optimizer,
    every: int = 100,
    probe: torch.Tensor | InputBatch | None = None,
    labels: Sequence[int | str] | torch.Tensor | None = None,
    categories: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    layers: Sequence[str] | None = None,
    cam_layer: str | None = None,
    cam_method: str = "gradcam",
    run_name: str | None = None,
    start_step: int = 0,
) -> Watch:
    """Log the training of ``model`` into TensorBoard every ``every`` optimizer steps; use as ``with``.

    ``logdir_or_writer``: a log directory (a new run ``<model>-<time>`` or ``run_name`` is
    made in it), an :class:`introspect.reporter.Reporter`, or a
    ``torch.utils.tensorboard.SummaryWriter``. ``probe``: a normalised image batch
    (N, 3, H, W) (or an ``InputBatch``) whose CAM for its ``labels`` (class indices, or
    names in ``categories``) is drawn at each logging step; ``mean``/``std`` are the
    normalisation it carries (ImageNet's by default), to draw the photos. ``layers``
    overrides the stage layers whose activation statistics are logged. See the module
    docstring for every tag, the step numbering and what is measured when.
    """
    return Watch(model, logdir_or_writer, optimizer=optimizer, every=every, probe=probe, labels=labels,
                 categories=categories, mean=mean, std=std, layers=layers, cam_layer=cam_layer,
                 cam_method=cam_method, run_name=run_name, start_step=start_step)


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
        raise UsageError(f"probe must be a normalised image tensor (N, 3, H, W), got {type(probe).__name__}")
    tensor = probe.detach().unsqueeze(0) if probe.ndim == 3 else probe.detach()
    if tensor.ndim != 4 or tensor.shape[1] != 3 or tensor.shape[0] == 0:
        raise UsageError(f"probe must be a normalised image tensor (N, 3, H, W), got shape {tuple(probe.shape)}")
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
        raise UsageError(f"labels has {len(items)} entries for {count} probe images: give one class per image")
    for item in items:
        if isinstance(item, str) and not item.strip().lstrip("-").isdigit() and not categories:
            raise UsageError(f"label {item!r} is a class name but no categories were given: pass categories=...")
        if isinstance(item, int) and item < 0:
            raise UsageError(f"label {item} is negative: class indices start at 0")
    return [int(i) if isinstance(i, (int, np.integer)) else i for i in items]


def _open_reporter(target: Any, run_name: str | None, loaded: LoadedModel | None, module: nn.Module):
    """(reporter, whether watch owns it and closes it at exit)."""
    from .reporter import Reporter, new_run_dir

    if isinstance(target, Reporter):
        if target.closed:
            raise UsageError(f"the Reporter for {target.run_dir} is closed: pass an open one or a log directory")
        return target, False
    if isinstance(target, (str, Path)):
        name = loaded.name if loaded is not None else type(module).__name__
        return Reporter(new_run_dir(target, run_name, name)), True
    try:
        return Reporter.from_writer(target), False
    except TypeError:
        raise UsageError(
            f"cannot log to a {type(target).__name__}: pass a log directory, a Reporter or a SummaryWriter"
        ) from None
