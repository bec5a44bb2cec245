"""A model of the user's own, named by import path as uvicorn and gunicorn take their apps.

``my_project.models:build_net`` names a callable in a module on the user's path (the current folder first,
then ``PYTHONPATH`` and site-packages) that returns the ``nn.Module``; ``model_args`` are its keyword
arguments (on the command line ``--model-arg depth=18``, values read as Python literals where they parse).
Every failure is one line naming the problem and the fix, before anything is loaded or written.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .errors import ArgumentError, ArgumentTypeError, UnknownModelError, UsageError

__all__ = ["is_import_path", "parse_model_args", "build_user_model"]

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_IMPORT_PATH = re.compile(rf"^({_DOTTED}):({_DOTTED})$")
_PREFIXES = ("timm", "hf")  # introspect's own model prefixes, never import paths


def is_import_path(name: object) -> bool:
    """Whether ``name`` is ``package.module:callable`` (not ``timm:`` or ``hf:``)."""
    if not isinstance(name, str):
        return False
    match = _IMPORT_PATH.match(name)
    return match is not None and match.group(1) not in _PREFIXES


def _literal(text: str) -> Any:
    """A Python literal where ``text`` is one (``18``, ``0.5``, ``True``, ``None``, ``[1, 2]``), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_model_args(model_args: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    """Keyword arguments for a model factory: a mapping as given, or ``"key=value"`` strings parsed.

    Args:
        model_args: ``{"depth": 18}``, or ``["depth=18", "name=wide"]`` (values read as Python literals where
            they parse, strings otherwise; ``name='wide'`` quoted works too).

    Returns:
        ``{name: value}``.

    Raises:
        ArgumentError: an item is not ``key=value``, the key is not a Python name, or a key repeats.
    """
    if model_args is None:
        return {}
    if isinstance(model_args, Mapping):
        items = list(model_args.items())
        bad = [key for key, _ in items if not isinstance(key, str) or not key.isidentifier()]
        if bad:
            raise ArgumentError(f"model_args key {bad[0]!r} is not a Python keyword argument name",
                                parameter="model_args")
        return dict(items)
    if isinstance(model_args, str):
        model_args = [model_args]
    parsed: dict[str, Any] = {}
    for item in model_args:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ArgumentError(f"model_args={item!r} is not KEY=VALUE with KEY a Python name: write e.g. "
                                "num_classes=3 or name=wide", parameter="model_args")
        if key in parsed:
            raise ArgumentError(f"model_args={item!r} gives {key} a second time: give each argument once",
                                parameter="model_args")
        parsed[key] = _literal(value.strip())
    return parsed


def _import(module_name: str, spec: str) -> Any:
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:  # the user's own folder, as `python -m` and uvicorn do
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise UnknownModelError(f"cannot import {spec}: no module named {missing!r} on the path (the current "
                                    "folder, then PYTHONPATH and site-packages): run from the folder that holds it, "
                                    "or add that folder to PYTHONPATH", parameter="model") from exc
        raise UsageError(f"cannot import {spec}: {module_name} imports {missing!r}, which is not "
                         f"installed: install it", parameter="model") from exc
    except Exception as exc:  # the user's module failed while importing: one line, --debug for the traceback
        first = " ".join(str(exc).split())[:200]
        raise UsageError(f"cannot import {spec}: importing {module_name} raised {type(exc).__name__}: {first}: fix the "
                         "module", parameter="model") from exc


def build_user_model(spec: str, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """Import ``package.module:callable`` and call it with ``model_args``; returns the module it builds.

    An attribute that is already an ``nn.Module`` is taken as the model (without ``model_args``).

    Args:
        spec: the import path, ``package.module:callable`` (the callable may be dotted: ``mod:Class.build``).
        model_args: keyword arguments of the callable.

    Returns:
        The ``nn.Module``, as built (not moved, not put in eval mode).

    Raises:
        UnknownModelError: the module or attribute does not exist (``parameter="model"``).
        ArgumentTypeError: the attribute is not callable, or returns something that is not an ``nn.Module``.
        UsageError: importing or calling it failed (``model_args`` it does not take, an error inside it).
    """
    match = _IMPORT_PATH.match(spec)
    if match is None:
        raise UnknownModelError(f"{spec!r} is not an import path: write package.module:callable",
                                parameter="model")
    module_name, attribute = match.groups()
    kwargs = dict(model_args or {})
    target: Any = _import(module_name, spec)
    for part in attribute.split("."):
        if not hasattr(target, part):
            found = sorted(n for n, v in vars(_import(module_name, spec)).items()
                           if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module_name)
            hint = f" (it defines {', '.join(found[:6])})" if found else ""
            raise UnknownModelError(f"cannot build {spec}: {module_name} has no attribute {attribute!r}{hint}: give "
                                    "the name of the function or class that builds the model", parameter="model")
        target = getattr(target, part)
    if isinstance(target, nn.Module):
        if kwargs:
            raise ArgumentError(f"{spec} is a model already built, not a function: it takes no model arguments",
                                parameter="model_args")
        return target
    if not callable(target):
        raise ArgumentTypeError(f"cannot build {spec}: it is of type {type(target).__name__}, not a callable: give "
                                "a function or class that returns the nn.Module", parameter="model")
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        built = target(**kwargs)
    except Exception as exc:  # the user's code: its own error, in one line (--debug: the traceback)
        first = " ".join(str(exc).split())[:200]
        fix = "check the model arguments" if isinstance(exc, TypeError) else "fix the function"
        raise UsageError(f"cannot build {spec}: calling {attribute}({shown}) raised {type(exc).__name__}: {first}: "
                         f"{fix}", parameter="model") from exc
    if not isinstance(built, nn.Module):
        raise ArgumentTypeError(f"cannot build {spec}: {attribute}({shown}) returned an object of type "
                                f"{type(built).__name__}, not a torch.nn.Module: return the model", parameter="model")
    return built
