"""The one exception hierarchy of introspect, and its warning category.

Every error the library raises on purpose is an :class:`IntrospectError`. Its
``exit_code`` tells the CLI what to return: 2 for a usage error (the user can fix
the command line), 1 for a failure at run time. Messages are one line that names
the problem and the fix. A message about a Python argument names it as
``name=value`` (``steps=0 must be at least 1``), never as a command-line flag; the
error's :attr:`~IntrospectError.parameter` says which argument it is, so the CLI can
translate it into its own flag.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = [
    "IntrospectError",
    "interrupted_by_user",
    "in_flags",
    "worded_as_flags",
    "worded",
    "UsageError",
    "ArgumentError",
    "ArgumentTypeError",
    "UnknownModelError",
    "LayerError",
    "UnknownLayerError",
    "UnknownMethodError",
    "ImageError",
    "WeightsError",
    "TargetError",
    "DeviceError",
    "InputSizeError",
    "OutputError",
    "StateError",
    "MethodFailedError",
    "IntrospectWarning",
]


class IntrospectError(Exception):
    """Base class of every error introspect raises on purpose.

    Args:
        message: one line naming the problem and the fix.
        parameter: the Python parameter the message is about (``"steps"``), or None.
            Stored as :attr:`parameter`; the CLI maps it to its flag.
    """

    exit_code: int = 1

    def __init__(self, *args: object, parameter: str | None = None) -> None:
        super().__init__(*args)
        self.parameter = parameter

    def with_flags(self, flags: Mapping[str, str]) -> str:
        """The message with every ``name=value`` of a parameter in ``flags`` written as ``FLAG value``.

        Args:
            flags: parameter name -> command-line flag, e.g. ``{"steps": "--filter-steps"}``.

        Returns:
            The message as a command-line user reads it (quotes around string values dropped):
            ``steps=0 must be at least 1`` becomes ``--filter-steps 0 must be at least 1``.
        """
        return in_flags(str(self), flags)


def in_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with every ``name=value`` of a parameter in ``flags`` written as ``FLAG value``
    (see :meth:`IntrospectError.with_flags`; the CLI also says its warnings this way)."""
    for name, flag in flags.items():
        pattern = rf"(?<![\w.]){re.escape(name)}=('[^']*'|\"[^\"]*\"|[^\s,;)]+)"
        message = re.sub(pattern, lambda m: f"{flag} {m.group(1).strip(chr(39) + chr(34))}", message)
    return message


_SPOKEN_FLAGS: ContextVar[Mapping[str, str] | None] = ContextVar("introspect_spoken_flags", default=None)


@contextmanager
def worded_as_flags(flags: Mapping[str, str]) -> Iterator[None]:
    """Within the block, what a run writes for people (``run/info``, its warnings) names parameters as these
    command-line flags (:func:`worded`): the CLI's runs say ``--weights none``, not ``weights='none'``."""
    token = _SPOKEN_FLAGS.set(dict(flags))
    try:
        yield
    finally:
        _SPOKEN_FLAGS.reset(token)


def worded(message: str) -> str:
    """``message`` as the caller speaks: with flags inside :func:`worded_as_flags` (:func:`in_flags`), else as is."""
    flags = _SPOKEN_FLAGS.get()
    return in_flags(message, flags) if flags else message


def interrupted_by_user(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C, or an error raised because of one: Python 3.11 re-raises a KeyboardInterrupt
    that arrives in a class body being built (an import under way, matplotlib's) as a RuntimeError caused by it, and
    an error raised while unwinding from Ctrl-C has it as its context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class UsageError(IntrospectError):
    """The request cannot be carried out as given; the user can fix it."""

    exit_code = 2


class ArgumentError(UsageError, ValueError):
    """A Python argument whose value cannot be used (also a ValueError, as Python code expects)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """A Python argument, or a value a caller's function returned, of a type that cannot be used."""


class UnknownModelError(UsageError):
    """A model name that torchvision does not know."""


class LayerError(UsageError):
    """A layer that cannot serve: it does not run, does not reach the output, or gives no map."""


class UnknownLayerError(LayerError):
    """A layer name that the model does not have."""


class UnknownMethodError(UsageError):
    """A CAM (or other) method name that is not offered."""


class ImageError(UsageError):
    """An image that is missing, unreadable or unusable."""


class WeightsError(UsageError):
    """Weights that cannot be found, loaded safely, or matched to the model."""


class TargetError(UsageError):
    """A class target that is out of range or does not exist."""


class DeviceError(UsageError):
    """A device that is not available here."""


class InputSizeError(UsageError):
    """An input size the model cannot take."""


class OutputError(UsageError):
    """A log directory that cannot be written."""


class StateError(UsageError, RuntimeError):
    """An object used after its state no longer allows it (a closed Reporter, a released forward pass)."""


class MethodFailedError(IntrospectError, RuntimeError):
    """A method (e.g. one delegated to pytorch-grad-cam) failed on this model at run time."""


class IntrospectWarning(UserWarning):
    """Something the user should know about; also written into the run's text summary."""
