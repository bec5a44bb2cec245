"""Reading weights safely: a state_dict from a file, always with ``torch.load(weights_only=True)``.

Every loader (torchvision names, ``timm:``, ``hf:``, a user's checkpoint) reads files through here.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WeightsError

__all__ = ["load_checkpoint", "read_checkpoint", "OFFLINE_ENV"]

OFFLINE_ENV = "INTROSPECT_OFFLINE"
"""Set (to anything) to never try a download: weights come from the caches or a file, or not at all."""


def _is_state(obj: dict) -> bool:
    """A state_dict: tensors, plus the dtypes and packed (weight, bias) tuples of int8 quantized layers."""
    def entry(v: Any) -> bool:
        return isinstance(v, (torch.Tensor, torch.dtype)) or (
            isinstance(v, (tuple, list)) and all(isinstance(x, torch.Tensor) or x is None for x in v))
    return any(isinstance(v, torch.Tensor) for v in obj.values()) and all(entry(v) for v in obj.values())


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and _is_state(inner):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not _is_state(obj):
        raise WeightsError(f"{path} holds no state_dict (a dict of tensors, or a checkpoint with a 'state_dict' "
                           "entry): save one with torch.save(model.state_dict(), PATH)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _pickled_modules(path: Path) -> list[str]:
    """The ``torch.nn`` module classes a zip checkpoint's pickle names: a whole model saved with ``torch.save(model)``.

    Read from the pickle's opcodes (``torch.serialization.get_unsafe_globals_in_checkpoint``): nothing is run.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file, or a torch without the helper: no diagnosis
        return []
    return [name for name in names if name.startswith("torch.nn.modules.")]


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from a file with ``weights_only=True`` (never unsafe unpickling).

    Args:
        path: a file written by ``torch.save`` (a state_dict, or a checkpoint dict holding one).

    Returns:
        The state_dict (a ``"module."`` prefix from DataParallel removed).

    Raises:
        WeightsError: the file is missing, unreadable, refused by the safe loader, or holds no state_dict.
    """
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a state_dict and the checkpoint's other entries from a file, with ``weights_only=True``.

    Args:
        path: a file written by ``torch.save`` (a state_dict, or a checkpoint dict holding one).

    Returns:
        ``(state_dict, entries)``: the state_dict as :func:`load_checkpoint` gives it, and the checkpoint dict
        around it (its ``classes``, ``epoch``...; :func:`introspect.categories.names_in_checkpoint` reads the
        class names), or None for a bare state_dict.

    Raises:
        WeightsError: the file is missing, unreadable, refused by the safe loader (a whole pickled model: the
            message says to save its state_dict), or holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist: give a state_dict file, DEFAULT, an enum name, "
                           "auto or none")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "unsupported" in line.lower() or "global" in line.lower()),
                      reason[0] if reason else "")
        detail = detail.strip().removeprefix("WeightsUnpickler error:").split(". ")[0].strip().rstrip(".")
        if _pickled_modules(path):
            model = detail.split("GLOBAL ")[-1].split()[0] if "GLOBAL " in detail else "an nn.Module"
            raise WeightsError(f"{path} holds a whole pickled model ({model}, saved with torch.save(model)), which "
                               "torch.load(weights_only=True) will not unpickle because unpickling can run any code: "
                               "save its weights instead with torch.save(model.state_dict(), PATH) and give that "
                               "file") from None
        raise WeightsError(f"{path} was refused by torch.load(weights_only=True), which introspect always uses "
                           f"for safety ({detail.strip()}); re-save it as a plain state_dict: "
                           "torch.save(model.state_dict(), PATH)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} is not a readable PyTorch file ({first}): give a state_dict saved with "
                           "torch.save") from None
    state = _state_dict_from(obj, path)
    entries = obj if isinstance(obj, dict) and obj is not state and not _is_state(obj) else None
    return state, entries
