"""The one exception hierarchy of introspect, and its warning category.

Every error the library raises on purpose is an :class:`IntrospectError`. Its
``exit_code`` tells the CLI what to return: 2 for a usage error (the user can fix
the command line), 1 for a failure at run time. Messages are one line that names
the problem and the fix.
"""

from __future__ import annotations

__all__ = [
    "IntrospectError",
    "UsageError",
    "ArgumentError",
    "UnknownModelError",
    "UnknownLayerError",
    "UnknownMethodError",
    "ImageError",
    "WeightsError",
    "TargetError",
    "DeviceError",
    "InputSizeError",
    "OutputError",
    "IntrospectWarning",
]


class IntrospectError(Exception):
    """Base class of every error introspect raises on purpose."""

    exit_code: int = 1

    def __init__(self, *args: object, parameter: str | None = None) -> None:
        super().__init__(*args)
        self.parameter = parameter  # the Python parameter the message is about (``steps``), for the CLI's flags


class UsageError(IntrospectError):
    """The request cannot be carried out as given; the user can fix it."""

    exit_code = 2


class ArgumentError(UsageError, ValueError):
    """A bad value of a function's argument (the message names the parameter, ``topk=0``)."""


class UnknownModelError(UsageError):
    """A model name that torchvision does not know."""


class UnknownLayerError(UsageError):
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


class IntrospectWarning(UserWarning):
    """Something the user should know about; also written into the run's text summary."""
