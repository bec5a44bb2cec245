"""Library notices (deprecation warnings from transformers, timm, huggingface_hub) kept out of a run's
console and run/info: they are about those libraries' own code, not the user's model. Set
``INTROSPECT_DEBUG=1`` (the CLI's ``--debug``) to see them."""

from __future__ import annotations

import os
import warnings

__all__ = ["DEBUG_ENV", "LIBRARIES", "quiet_library_notices"]

DEBUG_ENV = "INTROSPECT_DEBUG"
LIBRARIES = ("transformers", "timm", "huggingface_hub")
_NOTICES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def quiet_library_notices() -> None:
    """Inside a ``warnings.catch_warnings()`` scope: ignore deprecation notices raised inside LIBRARIES
    (a warning the user's own code triggers through a deprecated call still shows); no-op under DEBUG_ENV."""
    if os.environ.get(DEBUG_ENV):
        return
    for library in LIBRARIES:
        for category in _NOTICES:
            warnings.filterwarnings("ignore", category=category, module=rf"{library}(\.|$)")
