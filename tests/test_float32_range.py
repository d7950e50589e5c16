"""The one float32 range constant (``edgesnn.float32_range``) and the learning-rate check built on it."""

import subprocess
import sys

import numpy as np
import torch

from edgesnn.float32_range import FLOAT32_MAX
from edgesnn.lr_schedules import is_float32_rate


def test_the_constant_is_the_largest_float32_of_numpy_and_torch():
    assert FLOAT32_MAX == float(np.finfo(np.float32).max) == float(torch.finfo(torch.float32).max)
    assert np.isfinite(np.float32(FLOAT32_MAX))


def test_rates_at_the_edges_of_float32():
    assert is_float32_rate(FLOAT32_MAX)
    assert not is_float32_rate(FLOAT32_MAX * (1 + 1e-7))  # beyond float32: inf in the float32 graphs
    assert is_float32_rate(1.4e-45)  # the smallest subnormal float32
    assert not is_float32_rate(1e-50)  # 0 as a float32: nothing would train
    assert not is_float32_rate(True) and not is_float32_rate(float("nan")) and not is_float32_rate(-1.0)


def test_the_range_and_rate_modules_import_neither_numpy_nor_torch():
    """The torch-free device runner imports both; they must stay standard library only."""
    code = ("import sys, edgesnn.float32_range, edgesnn.lr_schedules; "
            "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
