"""The planner's dataset table (:data:`edgesnn.planner.datasets.DATASET_SPECS`) and the loaders of
:mod:`edgesnn.training` agree: class counts come from the loaders' constants (one source), and the
shapes and dtypes the plan counts are what each loader gives on small files in its real format."""

import json
import subprocess
import sys

import pytest

from edgesnn.planner.datasets import DATASET_SPECS, dataset_classes, model_input_shape

_PATCHED = """
import dataclasses, json
import edgesnn.training.data as data
import edgesnn.training.events as events
data.DIGITS_CLASSES, data.CIFAR10_CLASSES = 7, 9
events.EVENT_SPECS["shd"] = dataclasses.replace(events.EVENT_SPECS["shd"], num_classes=35)
from edgesnn.planner.datasets import DATASET_SPECS, dataset_classes
print(json.dumps([DATASET_SPECS[k].num_classes for k in ("digits", "cifar10", "shd")] + [dataset_classes("shd")]))
"""


def test_class_counts_have_one_source():
    """Changing a loader's class count changes the plan's: the planner holds no copy of its own."""
    proc = subprocess.run([sys.executable, "-c", _PATCHED], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [7, 9, 35, 35]


def test_importing_the_planner_loads_no_loader_dependency():
    code = "import sys, edgesnn.planner; print([m for m in ('tonic', 'h5py', 'sklearn') if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", (proc.stdout, proc.stderr[-2000:])


def _check(name: str, ds, events: bool) -> None:
    """``ds`` (a loaded :class:`edgesnn.training.data.Dataset`, ``flat=False``) against ``DATASET_SPECS[name]``."""
    spec = DATASET_SPECS[name]
    x = ds.train.x
    per_sample = tuple(x.shape[2:] if events else x.shape[1:])
    assert ds.num_classes == spec.num_classes == dataset_classes(name), name
    assert per_sample == spec.sample_shape == model_input_shape(name, "convnet"), name
    assert x.element_size() == spec.dtype_bytes and bool(ds.train.events) == spec.events, name
    assert int(ds.train.y.max()) < spec.num_classes and ds.train.y.dtype.itemsize == 8, name


def test_digits_loader_agrees():
    pytest.importorskip("sklearn")
    from edgesnn.training.data import load_digits_dataset

    ds = load_digits_dataset(flat=False)
    _check("digits", ds, events=False)
    assert (len(ds.train), len(ds.test)) == (DATASET_SPECS["digits"].train_samples, DATASET_SPECS["digits"].test_samples)


def test_cifar10_loader_agrees(tmp_path):
    from edgesnn.training.data import load_dataset
    from test_dataset_checks import make_cifar  # tests/ helper (pytest puts tests/ on sys.path)

    _check("cifar10", load_dataset("cifar10", str(make_cifar(tmp_path)), flat=False), events=False)


@pytest.mark.parametrize("name", ["nmnist", "dvsgesture", "shd"])
def test_event_loaders_agree(tmp_path, name):
    pytest.importorskip("tonic")
    pytest.importorskip("h5py")
    from edgesnn.training.data import load_dataset
    from test_datasets_events import MAKERS  # the datasets' real on-disk formats, small

    MAKERS[name](tmp_path)
    _check(name, load_dataset(name, str(tmp_path), flat=False, timesteps=2), events=True)
