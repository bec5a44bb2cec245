"""Class names: given by the caller (a list, or a labels file), carried by a checkpoint, or the model's own,
always one per output class.

Where the names come from, best first: ``categories=`` (``--labels FILE``), the checkpoint's own entry
(``classes``, ``idx_to_class``, ``class_to_idx``, ``id2label``), the weights' or module's metadata, and
last ``class 0`` ... ``class N-1``. ``run/info`` says which (:attr:`LoadedModel.categories_source`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArgumentError, ArgumentTypeError, WeightsError
from .loaded import LoadedModel

__all__ = ["ClassNames", "numbered", "is_numbered", "read_labels", "given_names", "names_in_checkpoint",
           "name_classes", "CHECKPOINT_NAME_KEYS"]

CHECKPOINT_NAME_KEYS = ("classes", "class_names", "categories", "idx_to_class", "id2label", "class_to_idx")
"""The entries of a checkpoint dict (beside its state_dict) that name the classes, in the order they are tried."""


@dataclass(frozen=True)
class ClassNames:
    """Class names in class-index order, with where they came from.

    Args:
        names: one name per class.
        source: where they came from, in words (``run/info`` says it).
        given_as: how an error names them (``categories='labels.txt'``), or None.
        parameter: the argument an error about them is about.
    """

    names: tuple[str, ...]
    source: str
    given_as: str | None = None
    parameter: str = "categories"


def numbered(count: int) -> tuple[str, ...]:
    """``class 0`` ... ``class count-1``: the names of a model that has none of its own."""
    return tuple(f"class {i}" for i in range(count))


def is_numbered(names: Sequence[str]) -> bool:
    """Whether ``names`` are the placeholders :func:`numbered` gives (no real names)."""
    return tuple(names) == numbered(len(names))


def _from_index_map(mapping: Mapping[Any, Any], what: str) -> tuple[str, ...]:
    """Names from ``{index: name}`` (keys ints or digit strings, 0 to N-1 each once)."""
    try:
        by_index = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{what} maps indices to names, but a key is not an index") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{what} must number the classes 0 to {len(by_index) - 1}, each once")
    return tuple(by_index[i] for i in range(len(by_index)))


def read_labels(path: str | os.PathLike) -> ClassNames:
    """Class names from a labels file: one name a line, or a JSON list (or a JSON ``{"0": name}`` object).

    Args:
        path: the file.

    Returns:
        The names in file order, the first being class 0.

    Raises:
        ArgumentError: the file is missing, unreadable, empty or not a list of names (``parameter="categories"``).
    """
    path = Path(path)
    given_as = f"categories={str(path)!r}"
    try:
        content = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ArgumentError(f"{given_as} does not exist: give a labels file, one class name a line (or a JSON "
                            "list)", parameter="categories") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"{given_as} cannot be read as UTF-8 text ({type(exc).__name__}): give a labels file, "
                            "one class name a line (or a JSON list)", parameter="categories") from None
    stripped = content.strip()
    if stripped.startswith(("[", "{")):
        try:
            value = json.loads(stripped)
            if isinstance(value, dict):
                names = _from_index_map(value, "the JSON object")
            elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
                names = tuple(str(v) for v in value)
            else:
                raise ValueError("the JSON is not a list of names")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            detail = str(exc).split(":")[0] if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise ArgumentError(f"{given_as} is not a JSON list of class names ({detail}): write a list such as "
                                '["ant", "bee", "wasp"], or one name a line', parameter="categories") from None
    else:
        names = tuple(line.strip() for line in content.splitlines() if line.strip())
    if not names:
        raise ArgumentError(f"{given_as} holds no class names: write one name a line, class 0 first",
                            parameter="categories")
    return ClassNames(names, f"labels file {path} ({len(names)} names)", given_as)


def given_names(categories: str | os.PathLike | Sequence[str] | None) -> ClassNames | None:
    """The caller's ``categories=``: a sequence of names, or the path of a labels file (:func:`read_labels`).

    Raises:
        ArgumentError: an empty list, or a labels file that cannot be read.
        ArgumentTypeError: neither names nor a path.
    """
    if categories is None:
        return None
    if isinstance(categories, (str, os.PathLike)):
        return read_labels(categories)
    if isinstance(categories, ClassNames):
        return categories
    if not isinstance(categories, Sequence) or not all(isinstance(n, str) for n in categories):
        raise ArgumentTypeError(f"categories must be a list of class names or a labels file's path, not "
                                f"{type(categories).__name__}", parameter="categories")
    if not categories:
        raise ArgumentError("categories is an empty list: give one name per class, class 0 first",
                            parameter="categories")
    return ClassNames(tuple(categories), f"categories= ({len(categories)} names)")


def names_in_checkpoint(entries: Mapping[str, Any] | None, path: str | os.PathLike) -> ClassNames | None:
    """The class names a checkpoint carries beside its state_dict, if any.

    Read from the first of :data:`CHECKPOINT_NAME_KEYS` present at the top of the checkpoint dict (or in its
    ``config``, as Hugging Face keeps ``id2label``): a list of names, ``{index: name}``, or torchvision
    ImageFolder's ``class_to_idx`` (``{name: index}``).

    Raises:
        WeightsError: the entry is there but names no classes (``parameter="weights"``).
    """
    if not isinstance(entries, Mapping):
        return None
    places = [entries] + ([entries["config"]] if isinstance(entries.get("config"), Mapping) else [])
    for place in places:
        for key in CHECKPOINT_NAME_KEYS:
            value = place.get(key)
            if value is None:
                continue
            where = f"weights={str(path)!r}"
            try:
                if key == "class_to_idx" and isinstance(value, Mapping):
                    names = _from_index_map({index: name for name, index in value.items()}, f"'{key}'")
                elif isinstance(value, Mapping):
                    names = _from_index_map(value, f"'{key}'")
                elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
                    names = tuple(value)
                else:
                    raise ValueError(f"'{key}' is a {type(value).__name__}, not a list of names")
            except ValueError as exc:
                raise WeightsError(f"{where}: its {exc}: save the names as a list (e.g. "
                                   "{'state_dict': ..., 'classes': [...]}), or give categories=LABELS_FILE",
                                   parameter="weights") from None
            return ClassNames(names, f"the checkpoint's '{key}' entry ({Path(path).name})",
                              f"{where} (its '{key}' entry)", "weights")
    return None


def name_classes(loaded: LoadedModel, names: ClassNames | None) -> LoadedModel:
    """``loaded`` with ``names`` as its class names, checked to be one per output class.

    Without ``names``, ``loaded`` keeps its own names; its ``categories_source`` is filled in if empty.
    A model whose class count is unknown (its own names are empty) takes any number of names.

    Raises:
        ArgumentError: the count differs from the model's output classes (``names.parameter``).
    """
    if names is None:
        if loaded.categories_source:
            return loaded
        own = "numbered (class 0 to class N-1): no names given" if is_numbered(loaded.categories) \
            else "the model's own"
        return dataclasses.replace(loaded, categories_source=own)
    count = len(loaded.categories)
    if count and len(names.names) != count:
        given = names.given_as or names.parameter
        fix = "one name per class, class 0 first" if names.parameter == "categories" else \
            "fix the entry, or give categories=LABELS_FILE (one name a line)"
        error = ArgumentError if names.parameter == "categories" else WeightsError
        raise error(f"{given} gives {len(names.names)} class names, but {loaded.name} has {count} output classes: "
                    f"{fix}", parameter=names.parameter)
    return dataclasses.replace(loaded, categories=names.names, categories_source=names.source)
