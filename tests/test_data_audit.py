"""Dataset loading audit: what users get wrong in each dataset's real on-disk format.

Every bad input is a one-line error naming the file and what was expected; none is loaded as
silently different data. DVS Gesture's ``.npy`` arrays and SHD's HDF5 rows are checked as stored,
before tonic casts them (int16 x/y, bool polarity, ms x 1000 in the array's dtype; SHD times x 1e6
to int64, labels ``astype(int)``). The fabricators are those of ``test_datasets_events`` and
``test_dataset_checks``.
"""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgesnn.cli import main
from edgesnn.training import load_dataset
from test_dataset_checks import edit_batch, make_cifar

tonic = pytest.importorskip("tonic")
h5py = pytest.importorskip("h5py")
import test_datasets_events as ev  # noqa: E402

USER = ("DVSGesture", "ibmGestureTrain", "user01_fluorescent")


def _dvs(tmp_path: Path, edit) -> Path:
    ev.make_dvsgesture(tmp_path)
    f = tmp_path.joinpath(*USER, "3.npy")
    np.save(f, edit(np.load(f)))
    return f


def _polarity_pm1(a):
    a = a.copy()
    a[:, 2] = np.where(a[:, 2] == 0, -1, 1)
    return a


def _nan_time(a):
    a = a.astype(np.float64)
    a[0, 3] = np.nan
    return a


def _fractional_x(a):
    a = a.astype(np.float64)
    a[:, 0] += 0.5
    return a


def _wrapping_x(a):
    a = a.copy()
    a[0, 0] = 65536 + 5  # int16: 5, inside the sensor
    return a


# --------------------------------------------------------------------------------- DVS Gesture


@pytest.mark.parametrize("edit,needle", [
    # tonic's bool cast put OFF (-1) and ON (1) events all in the ON channel
    (_polarity_pm1, r"\d+ events with polarity outside 0\.\.1 \(polarity spans -1\.\.1\); expected 0 \(OFF\) or 1 \(ON\)"),
    (_nan_time, r"1 events with a NaN or Inf t"),  # NaN cast to INT64_MIN: every other event in one bin
    (_fractional_x, r"300 events with a fractional x \(tonic would truncate it\)"),
    (_wrapping_x, r"1 events with x outside the sensor's 0\.\.127 \(x spans \d+\.\.65541\)"),  # wrapped to x = 5
    (lambda a: a.astype(np.int16), r"times 0\.\.\d+ ms overflow int16 when tonic converts them to microseconds"),
])
def test_dvsgesture_arrays_are_checked_as_stored(tmp_path, edit, needle):
    f = _dvs(tmp_path, edit)
    with pytest.raises(ValueError) as info:
        load_dataset("dvsgesture", str(tmp_path), timesteps=2)
    msg = str(info.value)
    assert "\n" not in msg and re.match(rf"data: dvsgesture train: {re.escape(str(f))}: {needle}", msg), msg


def test_dvsgesture_polarity_is_one_cli_line(tmp_path, capsys):
    f = _dvs(tmp_path, _polarity_pm1)
    assert main(["train", "--dataset", "dvsgesture", "--data-dir", str(tmp_path), "--epochs", "1", "--no-progress",
                 "--device", "cpu", "-T", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"edgesnn train: error: data: dvsgesture train: {f}: "), err


def test_dvsgesture_sample_outside_the_user_folders_is_refused(tmp_path):
    """tonic reads only ibmGesture*/user<NN>_<lighting>/: a sample beside them was left out silently."""
    ev.make_dvsgesture(tmp_path)
    stray = tmp_path / "DVSGesture" / "ibmGestureTrain" / "4.npy"
    shutil.copy(tmp_path.joinpath(*USER, "4.npy"), stray)
    with pytest.raises(FileNotFoundError, match=rf"^data: dvsgesture: a sample outside the user<NN>_<lighting> "
                                                rf"folders \(tonic does not read it\): {re.escape(str(stray))} "):
        load_dataset("dvsgesture", str(tmp_path), timesteps=2)


def test_valid_dvsgesture_frames_are_unchanged_and_both_polarities_kept(tmp_path):
    """A guard: the checks change nothing for good data (float64 arrays included)."""
    import tonic.transforms as tt

    ev.make_dvsgesture(tmp_path)
    f = tmp_path.joinpath(*USER, "3.npy")
    np.save(f, np.load(f).astype(np.float64))
    d = load_dataset("dvsgesture", str(tmp_path), timesteps=2, flat=False)
    i = sorted((tmp_path / "DVSGesture" / "ibmGestureTrain").rglob("*.npy"), key=str).index(f)
    ds = tonic.datasets.DVSGesture
    ev_ = np.load(f)
    ev_[:, 3] *= 1000
    ev_ = np.lib.recfunctions.unstructured_to_structured(ev_, ds.dtype)
    ev_ = tt.Downsample(spatial_factor=0.25)(ev_[np.argsort(ev_["t"], kind="stable")])
    want = tt.ToFrame(sensor_size=(32, 32, 2), n_time_bins=2)(ev_)
    assert np.array_equal(d.train.x[i].numpy(), want) and int(want[:, 0].sum()) > 0 and int(want[:, 1].sum()) > 0


# ------------------------------------------------------------------------------------------ SHD


def _shd(tmp_path: Path, edit) -> Path:
    ev.make_shd(tmp_path, sizes=(4, 2))
    h5 = tmp_path / "SHD" / "shd_train.h5"
    with h5py.File(h5, "a") as f:
        edit(f)
    return h5


def _set_row(key, i, fn):
    def edit(f):
        v = f[key][i].copy()
        f[key][i] = fn(v)
    return edit


def _replace_labels(fn):
    def edit(f):
        y = fn(f["labels"][()])
        del f["labels"]
        f.create_dataset("labels", data=y)
    return edit


def _float_units(f):
    del f["spikes/units"]
    u = f.create_dataset("spikes/units", (4,), dtype=h5py.vlen_dtype(np.float32))
    for i in range(4):
        u[i] = (np.arange(len(f["spikes/times"][i])) % 700 + 0.5).astype(np.float32)


@pytest.mark.parametrize("edit,needle", [
    # NaN cast to INT64_MIN: all the sample's spikes landed in the first time bin
    (_set_row("spikes/times", 1, lambda t: np.where(np.arange(len(t)) == 0, np.nan, t).astype(t.dtype)),
     r"data: shd train: {h5} sample 1: 1 events with a NaN or Inf time; remove or replace it"),
    (_float_units, r"data: shd train: {h5} sample 0: \d+ events with a fractional unit"),  # truncated
    # tonic broadcast a single unit to every spike time: the whole sample on one unit
    (_set_row("spikes/units", 1, lambda u: u[:1]),
     r"data: shd train: {h5} sample 1: \d+ spike times but 1 units; the file's rows must pair one unit"),
    # tonic's astype(int): label 2.5 trained as class 2
    (_replace_labels(lambda y: np.where(np.arange(len(y)) == 1, 2.5, y).astype(np.float32)),
     r"data: shd: {h5}: 1 labels outside 0\.\.19 or not whole numbers \(sample 1: 2\.5\)"),
    (_replace_labels(lambda y: y[:, None]), r"data: shd: {h5}: 'labels' is uint16 of shape \[4, 1\]; expected one "
                                            r"whole number 0\.\.19 per sample"),  # a TypeError traceback
])
def test_shd_rows_and_labels_are_checked_as_stored(tmp_path, capsys, edit, needle):
    h5 = _shd(tmp_path, edit)
    assert main(["train", "--dataset", "shd", "--data-dir", str(tmp_path), "--epochs", "1", "--no-progress",
                 "--device", "cpu", "-T", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert re.match("edgesnn train: error: " + needle.format(h5=re.escape(str(h5))), err), err


# ------------------------------------------------------------------------------------ CIFAR-10


def test_cifar10_empty_split_is_named(tmp_path):
    """A test batch with no images failed in training as 'cannot reshape array of size 0', naming nothing."""
    folder = make_cifar(tmp_path)
    edit_batch(folder / "test_batch", "data", lambda x: x[:0])
    edit_batch(folder / "test_batch", "labels", lambda y: [])
    with pytest.raises(ValueError, match=rf"^data: {re.escape(str(folder))}: test_batch holds no images"):
        load_dataset("cifar10", str(tmp_path), flat=False)


def test_cifar10_ragged_data_names_the_file(tmp_path):
    folder = make_cifar(tmp_path)
    edit_batch(folder / "data_batch_4", "data", lambda x: [list(x[0]), list(x[1][:5])])
    with pytest.raises(ValueError, match=rf"^data: {re.escape(str(folder / 'data_batch_4'))}: 'data' is not an array"):
        load_dataset("cifar10", str(tmp_path), flat=False)


def test_unreadable_files_and_folders_are_one_line(tmp_path, monkeypatch, capsys):
    """Permission denied (simulated: the tests may run as root) was a PermissionError traceback."""
    import builtins

    import edgesnn.training.data as data

    folder = make_cifar(tmp_path / "c")
    locked = folder / "data_batch_2"

    def fake_open(path, *a, **k):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(data, "open", fake_open, raising=False)
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "c"), "--epochs", "1",
                 "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == f"edgesnn train: error: data: cannot read CIFAR-10 batch file {locked} (Permission denied)\n", err
    monkeypatch.undo()

    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
    real = Path.iterdir

    def iterdir(self):
        if self == tmp_path / "img" / "b":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(ValueError, match=rf"^data: folder: cannot read {re.escape(str(tmp_path / 'img' / 'b'))} "
                                         r"\(Permission denied\)$"):
        load_dataset("folder", str(tmp_path / "img"), flat=False)


def test_a_data_dir_that_is_a_file_is_called_one(tmp_path):
    f = tmp_path / "data.zip"
    f.write_bytes(b"PK")
    with pytest.raises(FileNotFoundError, match=rf"^data: {re.escape(str(f))} is not a folder; expected one sub-folder"):
        load_dataset("folder", str(f))
    with pytest.raises(FileNotFoundError, match=rf"^data: {re.escape(str(f))} is not a folder; expected the CIFAR-10"):
        load_dataset("cifar10", str(f))


# --------------------------------------------------------------------------------- fingerprint


def test_the_fingerprint_follows_the_events_not_the_cache(tmp_path, monkeypatch):
    """A guard: frames binned again (another cache folder) hash the same; one event's polarity changed
    changes the input hash and not the counts-and-labels fingerprint."""
    from edgesnn.training.fingerprint import data_content_hash, data_fingerprint

    ev.make_dvsgesture(tmp_path)
    monkeypatch.setenv("EDGESNN_FRAME_CACHE", str(tmp_path / "c1"))
    a = load_dataset("dvsgesture", str(tmp_path), timesteps=2, flat=False)
    monkeypatch.setenv("EDGESNN_FRAME_CACHE", str(tmp_path / "c2"))
    b = load_dataset("dvsgesture", str(tmp_path), timesteps=2, flat=False)
    assert (data_fingerprint(a), data_content_hash(a)) == (data_fingerprint(b), data_content_hash(b))
    f = tmp_path.joinpath(*USER, "6.npy")
    arr = np.load(f)
    arr[10, 2] = 1 - arr[10, 2]
    np.save(f, arr)
    c = load_dataset("dvsgesture", str(tmp_path), timesteps=2, flat=False)
    assert data_fingerprint(c) == data_fingerprint(a) and data_content_hash(c) != data_content_hash(a)


def test_events_left_out_of_every_frame_are_counted_in_one_line(tmp_path):
    """tonic's bins are (t_last - t0) // T wide: a sample's last event(s) fall after the last bin.
    The binning dropped them without a word; it now says how many, and the frames stay tonic's."""
    ev.make_dvsgesture(tmp_path)
    train = tmp_path.joinpath(*USER)
    for f in train.glob("*.npy"):
        a = np.load(f)
        a[:, 3] = np.arange(len(a))  # one event per ms: span len - 1 ms, the last one in no bin
        np.save(f, a)
    lines = []
    d = load_dataset("dvsgesture", str(tmp_path), timesteps=4, flat=False, log=lines.append)
    files = sorted((tmp_path / "DVSGesture" / "ibmGestureTrain").rglob("*.npy"), key=str)
    given = sum(len(np.load(f)) for f in files)
    counted = int(d.train.x.numpy().astype(np.int64).sum())
    left = [line for line in lines if "are in no frame" in line and "dvsgesture train" in line]
    assert len(left) == 1 and f"{given - counted} of {given} events" in left[0], lines
    assert given - counted >= len(list(train.glob("*.npy")))  # at least each edited sample's last event
    assert "(t_last - t0) // T wide" in left[0]
