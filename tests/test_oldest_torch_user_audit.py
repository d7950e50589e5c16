"""A new user's run of the README on the oldest supported torch (2.5.1; helper audit).

Found there: ``edgesnn train``'s cold-cache notice looked only for the LIF kernels' cache files
(``numba_cpu``). The quick start trains RevLIF, whose kernels live in ``numba_revlif``: every later
RevLIF run printed "compiling Numba kernels once" with nothing left to compile, and a RevLIF run
after a LIF one compiled its kernels (measured: 97 s against 14 s warm, on a loaded 2-core VM)
without a word. The notice now checks the kernels of the run's own neurons.

Also: ``edgesnn-device --data`` with a fractional label named it as NumPy 2 prints a scalar,
``(e.g. np.float64(0.5))``; the one-line error now shows the number, ``(e.g. 0.5)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest

from edgesnn.errors import UsageError

from edgesnn.cli import main
from edgesnn.kernels import config
from edgesnn.kernels.cli import _own_cache, compile_notice, neuron_kernel_modules


def _warm(folder: Path, *modules: str) -> None:
    """Stand-ins for Numba's index files of ``modules`` in this install's part of the cache ``folder``."""
    own = _own_cache(folder)
    own.mkdir(parents=True, exist_ok=True)
    for module in modules:
        (own / f"{module}._kernel-1.py311.nbi").write_bytes(b"")


def test_neuron_specs_name_their_kernel_modules():
    assert neuron_kernel_modules("lif") == ("numba_cpu",)
    assert neuron_kernel_modules("revlif") == neuron_kernel_modules("RevLIF:4") == ("numba_revlif",)
    assert neuron_kernel_modules(["revlif:4", "lif", "revlif"]) == ("numba_revlif", "numba_cpu")


def test_compile_notice_checks_the_kernels_of_the_neurons_it_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "_CACHE_DIR", str(tmp_path))
    _warm(tmp_path, "numba_revlif")  # what a RevLIF run (the quick start) leaves in the cache
    assert compile_notice("auto", "revlif") is None
    assert compile_notice("numba", "revlif:4") is None
    assert str(tmp_path) in compile_notice("auto", "lif")  # LIF's kernels are still to compile
    assert str(tmp_path) in compile_notice("auto", ["revlif", "lif"])
    _warm(tmp_path, "numba_cpu")
    assert compile_notice("auto", ["revlif", "lif"]) is None
    assert compile_notice("auto") is None  # the default (LIF) as before


def _train_stderr(argv: List[str], monkeypatch, capsys) -> str:
    """``edgesnn train`` up to the notice: training itself is replaced by a stub that only calls the
    CLI's ``before_training`` hook (where the notice is printed) and returns a report."""
    import edgesnn.training.cli as train_cli

    def stub_train(cfg, before_training=None, **_kwargs):
        if before_training is not None:
            before_training()
        return {"test_accuracy": 0.5, "test_samples": 1}

    monkeypatch.setattr(train_cli, "train", stub_train)
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress", *argv]) == 0
    return capsys.readouterr().err


@pytest.mark.parametrize("neuron, cached, notice", [
    ("revlif", "numba_revlif", False),  # the quick start run again: nothing compiles, no notice
    ("revlif", "numba_cpu", True),  # RevLIF after a LIF run: its own kernels compile
    ("lif", "numba_revlif", True),
    ("lif", "numba_cpu", False),
])
def test_train_notice_follows_the_neuron(tmp_path, monkeypatch, capsys, neuron, cached, notice):
    monkeypatch.setattr(config, "_CACHE_DIR", str(tmp_path))
    _warm(tmp_path, cached)
    err = _train_stderr(["--neuron", neuron], monkeypatch, capsys)
    assert ("compiling Numba kernels once" in err) is notice, err


@pytest.mark.parametrize("label, shown", [(0.5, "0.5"), (np.nan, "nan"), (np.inf, "inf")])
def test_fractional_label_error_shows_the_number(tmp_path, label, shown):
    from edgesnn.export.run_data import _integer_labels

    y = np.array([1.0, label, 2.0], dtype=np.float64)
    with pytest.raises(UsageError) as err:
        _integer_labels(y, tmp_path / "d.npz", "--data", 10)
    message = str(err.value)
    assert f"holds non-integer labels (e.g. {shown}); expected integer class indices" in message, message
    assert "np." not in message and len(message.splitlines()) == 1
