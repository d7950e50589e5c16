"""The digits dataset is scikit-learn's, read without importing scikit-learn (whose import alone
added ~75 MiB of resident memory to every digits training run, beyond what ``edgesnn plan`` counts)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from edgesnn.training import data


def _via_sklearn(flat: bool, seed: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    if not flat:
        x = x.reshape(-1, 1, 8, 8)
    return data._split(x, d.target.astype(np.int64), 0.25, seed)


def _assert_same(ds, want):
    for got, ref in zip((ds.train, ds.test), want):
        assert torch.equal(got.x, ref.x) and torch.equal(got.y, ref.y)
        assert got.x.dtype == torch.float32 and got.y.dtype == torch.int64


@pytest.mark.parametrize("flat,seed", [(True, 0), (False, 3)])
def test_digits_are_scikit_learns_values_and_split(flat, seed):
    ds = data.load_digits_dataset(flat=flat, seed=seed)
    assert len(ds.train.y) + len(ds.test.y) == 1797
    _assert_same(ds, _via_sklearn(flat, seed))


def test_without_the_shipped_file_scikit_learn_reads_it(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    _assert_same(data.load_digits_dataset(), _via_sklearn(True, 0))


def test_loading_digits_does_not_import_scikit_learn():
    code = ("import sys; from edgesnn.training.data import load_digits_dataset; load_digits_dataset(); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
