"""The trained synthetic reference model, trained at most once per test process.

A session-scoped fixture defined in two test modules would be two fixtures and
train twice; both modules' ``trained_synthetic`` fixtures call :func:`reference_model`
instead, which trains on first use and caches the result. (If tests/conftest.py
gains a ``trained_synthetic`` fixture, it should call this function too, and
tests/test_synthetic.py's own fixture with it.)
"""

from __future__ import annotations

import functools

from torch import nn

from introspect.synthetic import SyntheticDataset, train_reference_model


@functools.lru_cache(maxsize=1)
def reference_model() -> tuple[nn.Module, SyntheticDataset]:
    """``train_reference_model(seed=0)``: the model (eval mode) and its 200 held-out samples."""
    return train_reference_model(seed=0)
