"""One batch through the one run path, for the library's analyzers.

``introspect.cam(detector, photo)`` and ``introspect.cam(resnet, photo)`` go the same way a
report's batch goes: the model's task reads the inputs, checks the options and declares
what the forward pass keeps, one forward pass runs, and the task turns it into records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from ..categories import given_names, name_classes
from ..context import RunContext
from ..models import LoadedModel, load_model

__all__ = ["one_batch", "loaded_model", "require"]


def loaded_model(model: nn.Module | LoadedModel, categories: Sequence[str] | str | None = None) -> LoadedModel:
    """``model`` as a :class:`LoadedModel` (a bare module wrapped as given), with ``categories`` if given
    (names, or a labels file's path; one per output class, else an ``ArgumentError``)."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    return name_classes(loaded, given_names(categories)) if categories else loaded


def require(loaded: LoadedModel, what: str, needs: frozenset[str]) -> None:
    """Raise the task's one-line :class:`~introspect.errors.UsageError` when it cannot show ``what``."""
    from ..tasks import TASKS

    task = TASKS[loaded.task]
    if task.skip_reason(what, needs) is not None:
        raise task.cannot(what)


@contextmanager
def one_batch(model: nn.Module | LoadedModel, inputs: Any, *, categories: Sequence[str] | None = None,
              prepare: Sequence[Callable[[RunContext], None]] = (), **options: Any) -> Iterator[RunContext]:
    """Read ``inputs`` through the model's task, run ``prepare`` steps, then the one forward pass; yield the context.

    Args:
        model: a module or a :class:`LoadedModel`.
        inputs: what the task reads (paths, PIL images, tensors; clips and frame pairs by path).
        categories: class names instead of the model's.
        prepare: steps that check options and declare what the pass keeps (a task's ``prepare_cams``...).
        options: option groups of :class:`RunContext` (``cam=CamOptions(...)``, ``features=...``).
    """
    from ..tasks import TASKS

    loaded = loaded_model(model, categories)
    task = TASKS[loaded.task]
    ctx = RunContext(loaded=loaded, task=task, **options)
    task.check_options(ctx)
    batch = task.read_inputs(inputs, loaded)
    tensor = getattr(batch, "tensor", None)
    if tensor is not None:
        ctx.state["input_size"] = tuple(tensor.shape[-2:])
    for step in prepare:
        step(ctx)
    ctx.start_batch(batch)
    try:
        yield ctx
    finally:
        ctx.end_batch()
