"""The trained synthetic reference model, trained at most once per test process.

tests/conftest.py's session fixture ``trained_synthetic`` calls :func:`reference_model`,
which trains on first use and caches the result (scripts can import it too).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from introspect.testing.synthetic import SyntheticDataset, train_reference_model


@functools.lru_cache(maxsize=1)
def reference_model() -> tuple[nn.Module, SyntheticDataset]:
    """``train_reference_model(seed=0)``: the model (eval mode) and its 200 held-out samples."""
    threads = torch.get_num_threads()
    result = train_reference_model(seed=0)
    assert torch.get_num_threads() == threads, "train_reference_model did not restore torch's thread count"
    return result
