import os

import pytest
import torch

# Deterministic, small thread count: CI has 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    denom = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / denom if denom > 0 else diff
