"""Differential fuzz audit of the event-dataset loaders, DVS Gesture first (the frame cache:
``test_event_frame_cache_audit.py``).

DVS Gesture datasets are fabricated at random in tonic's pre-processed layout
(``ibmGesture{Train,Test}/user<NN>_<lighting>/<label>.npy``, ``[N, 4]`` x, y, p, t in ms) and the
frames ``load_event_dataset`` gives are compared with an independent numpy reading
(:mod:`_dvs_reference`: no edgesnn, no tonic): t x 1000 in microseconds, ``T`` bins of width
``(max - min) // T`` from the first event, half-open (so the events at the last timestamp fall past
the last bin, and a span shorter than ``T`` microseconds bins nothing: tonic 1.7's
``ToFrame(n_time_bins=T)``), x and y divided by 4 rounding down (``Downsample(spatial_factor=0.25)``
then the ``int16`` cast), counts saturated at 255, samples in path order, labels from the file names.

Findings pinned here (each test fails on the code before the fix): a pixel with 65,536 + k events
in one bin was k (tonic counts in ``int16``); float16 arrays (times x 1000 overflow to inf), uint64
times beyond int64 and int8/uint8 arrays (an ``OverflowError`` traceback); an ``.npz`` under a
``.npy`` name (an ``AttributeError`` traceback); a folder inside a user folder (its files read as
more samples), a symlinked user folder or N-MNIST digit folder (tonic's walk skips it: samples
left out without a word), a ``10npy`` file (read as label 1).
"""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tonic")
pytest.importorskip("h5py")

import test_datasets_events as ev  # noqa: E402
from _dvs_reference import USER, ref_frames, ref_split  # noqa: E402
from edgesnn.training.events import load_event_dataset  # noqa: E402

LIGHTING = ("fluorescent", "fluorescent_led", "lab", "led", "natural")


@pytest.fixture(autouse=True)
def _default_cache(monkeypatch):
    monkeypatch.delenv("EDGESNN_FRAME_CACHE", raising=False)


# ------------------------------------------------------------------------- random datasets


def random_events(rng) -> np.ndarray:
    n = int(rng.choice([0, 1, 2, 3, rng.integers(4, 40), rng.integers(40, 400)]))
    if rng.random() < 0.3:  # on the sensor's edges and the 4-pixel block boundaries
        x, y = rng.choice([0, 3, 4, 123, 124, 127], n), rng.choice([0, 3, 4, 123, 124, 127], n)
    else:
        x, y = rng.integers(0, 128, n), rng.integers(0, 128, n)
    p = rng.integers(0, 2, n)
    t = rng.integers(0, int(rng.choice([0, 1, 2, 19, 20, 21, 300, 6000])) + 1, n)  # duplicates, unsorted
    if rng.random() < 0.3:
        t = np.sort(t)
    if rng.random() < 0.1 and n:
        x[:], y[:], p[:] = x[0], y[0], p[0]  # one hot pixel: saturation
    a = np.stack([x, y, p, t], 1).astype(rng.choice(["<i8", "<i4", "<f8", "<f4", ">i8", ">f8", "<u4"]))
    return np.asfortranarray(a) if rng.random() < 0.2 else a


def random_dataset(root: Path, rng) -> None:
    for split in ("ibmGestureTrain", "ibmGestureTest"):
        users, count = set(), int(rng.integers(1, 5))
        while len(users) < count:
            users.add(f"user{int(rng.integers(1, 30)):02d}_{rng.choice(LIGHTING)}")
        one_class = int(rng.integers(0, 11)) if rng.random() < 0.3 else None
        for user in users:
            folder = root / "DVSGesture" / split / user
            folder.mkdir(parents=True)
            labels = [one_class] if one_class is not None else sorted(set(rng.integers(0, 11, 4).tolist()))
            for label in labels:
                np.save(folder / f"{label}.npy", random_events(rng))


@pytest.mark.parametrize("seed", range(24))
def test_dvsgesture_frames_match_an_independent_reading(tmp_path, seed):
    rng = np.random.default_rng(seed)
    random_dataset(tmp_path, rng)
    steps = int(rng.integers(1, 21))
    want = {s: ref_split(tmp_path, s, steps) for s in ("ibmGestureTrain", "ibmGestureTest")}
    if any(not x.any() for x, _ in want.values()):  # a split with no binned event at all is refused
        with pytest.raises(ValueError, match=r"samples have no events|none of the \d+ samples holds an event"):
            load_event_dataset("dvsgesture", str(tmp_path), steps)
        return
    d = load_event_dataset("dvsgesture", str(tmp_path), steps)
    for split, got in (("ibmGestureTrain", d.train), ("ibmGestureTest", d.test)):
        x, y = want[split]
        assert got.x.dtype == torch.uint8 and tuple(got.x.shape) == x.shape
        assert got.y.tolist() == y.tolist()
        assert np.array_equal(got.x.numpy(), x), split


# ------------------------------------------------------------------------------- counts, dtypes


def _dvs(tmp_path: Path, array: np.ndarray, **save) -> Path:
    ev.make_dvsgesture(tmp_path)
    f = tmp_path.joinpath(*USER, "3.npy")
    np.save(f, array, **save)
    return f


def _index(tmp_path: Path, f: Path) -> int:
    return sorted((tmp_path / "DVSGesture" / "ibmGestureTrain").rglob("*.npy"), key=str).index(f)


def test_counts_past_int16_saturate_instead_of_wrapping(tmp_path):
    """65,541 events on one pixel in one bin: tonic's int16 count wrapped to 5 (kept as 5)."""
    hot = np.zeros((65_542, 4), np.int64)
    hot[:, :2] = 64
    hot[-1, 3] = 10  # the last timestamp: past the last bin
    f = _dvs(tmp_path, hot)
    lines = []
    d = load_event_dataset("dvsgesture", str(tmp_path), 1, log=lines.append)
    frames = d.train.x[_index(tmp_path, f)].numpy()
    assert frames[0, 0, 16, 16] == 255 and int(frames.astype(int).sum()) == 255
    assert np.array_equal(frames, ref_frames(hot, 1))
    assert any("frame values above 255 events saturated at 255" in s for s in lines), lines


def test_count_frames_equal_tonic_when_the_counts_fit():
    """A guard: where int16 holds every count, the counts are tonic's own (also on the exact path)."""
    import tonic.transforms as tt

    from edgesnn.training.event_frames import CountFrames

    rng = np.random.default_rng(3)
    n = 40_000
    dtype = np.dtype([("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])
    ev_ = np.zeros(n, dtype)
    ev_["x"], ev_["y"] = np.where(rng.random(n) < 0.9, 5, rng.integers(0, 32, n)), 7  # 36k on one pixel overall
    ev_["p"], ev_["t"] = True, np.sort(rng.integers(0, 10**6, n))
    for steps in (2, 5, 8):  # per bin under 32768: the exact count equals tonic's
        got = CountFrames((32, 32, 2), steps)(ev_.copy())
        assert np.array_equal(got, tt.ToFrame(sensor_size=(32, 32, 2), n_time_bins=steps)(ev_.copy()))


@pytest.mark.parametrize("make,needle", [
    (lambda a: a.astype(np.float16), r"times 0\.\.\d+ ms overflow float16 when tonic converts them"),  # inf -> INT64_MIN
    (lambda a: a.astype(np.uint64) + np.array([0, 0, 0, 2**63 // 1000 - 100], np.uint64),
     r"times .* ms overflow int64 when tonic converts them"),  # wrapped negative in tonic's int64 cast
    (lambda a: np.zeros((5, 4), np.int8), r"an array of int8: tonic converts its times to microseconds"),  # OverflowError
    (lambda a: np.zeros((0, 4), np.uint8), r"an array of uint8: tonic converts"),  # even empty
    (lambda a: np.concatenate([a, a[:, :1]], 1), r"an array of int64 and shape \[300, 5\]; expected \[N, 4\]"),
    (lambda a: a[:, 0].copy(), r"an array of int64 and shape \[300\]"),
    (lambda a: a.astype(bool), r"an array of bool and shape \[300, 4\]"),
])
def test_stored_arrays_tonic_would_misread_are_one_line(tmp_path, make, needle):
    ev.make_dvsgesture(tmp_path)
    f = tmp_path.joinpath(*USER, "3.npy")
    np.save(f, make(np.load(f)))
    with pytest.raises(ValueError) as info:
        load_event_dataset("dvsgesture", str(tmp_path), 2)
    msg = str(info.value)
    assert "\n" not in msg and re.match(rf"data: dvsgesture train: {re.escape(str(f))}: {needle}", msg), msg


@pytest.mark.parametrize("layout", ["big-endian", "fortran", "float32", "float64", "int32", "strided"])
def test_other_layouts_of_the_same_events_give_the_same_frames(tmp_path, layout):
    ev.make_dvsgesture(tmp_path)
    f = tmp_path.joinpath(*USER, "3.npy")
    a = np.load(f)
    b = {"big-endian": lambda: a.astype(">i8"), "fortran": lambda: np.asfortranarray(a),
         "float32": lambda: a.astype(np.float32), "float64": lambda: a.astype(np.float64),
         "int32": lambda: a.astype(np.int32), "strided": lambda: np.repeat(a, 2, axis=0)[::2]}[layout]()
    np.save(f, b)
    d = load_event_dataset("dvsgesture", str(tmp_path), 3)
    assert np.array_equal(d.train.x[_index(tmp_path, f)].numpy(), ref_frames(a, 3))


class _Planted:
    """Unpickling this runs ``os.system``: it must never happen."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self):
        return (os.system, (f"touch {self.mark}",))


@pytest.mark.parametrize("kind", ["object array", "raw pickle", "npz", "empty", "truncated"])
def test_foreign_files_are_one_line_and_never_unpickled(tmp_path, kind):
    import io
    import pickle

    ev.make_dvsgesture(tmp_path)
    f = tmp_path.joinpath(*USER, "3.npy")
    mark = tmp_path / "unpickled"
    if kind == "object array":
        np.save(f, np.array([_Planted(mark)], dtype=object), allow_pickle=True)
    elif kind == "raw pickle":
        f.write_bytes(pickle.dumps(_Planted(mark)))
    elif kind == "npz":  # was an AttributeError traceback
        buf = io.BytesIO()
        np.savez(buf, a=np.load(f))
        f.write_bytes(buf.getvalue())
    elif kind == "empty":
        f.write_bytes(b"")
    else:
        f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(ValueError) as info:
        load_event_dataset("dvsgesture", str(tmp_path), 2)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("data: dvsgesture train: ") and str(f) in msg, msg
    assert not mark.exists()


# ------------------------------------------------------------------------------------ layout


def _symlink(target: Path, link: Path) -> None:
    try:
        os.symlink(target, link, target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("no symlinks here")


@pytest.mark.parametrize("damage,needle", [
    ("nested", "a folder inside a user folder"),  # backup/3.npy: one more sample of that user
    ("linked user", "a symlinked folder (tonic's file walk does not follow links"),  # 11 samples left out
    ("10npy", "a sample whose name is not a label 0-10"),  # tonic: int("1"), label 1
    ("npy folder", "a folder inside a user folder"),
])
def test_dvsgesture_entries_tonic_would_misread_are_refused(tmp_path, damage, needle):
    ev.make_dvsgesture(tmp_path)
    user = tmp_path.joinpath(*USER)
    if damage == "nested":
        (user / "backup").mkdir()
        shutil.copy(user / "3.npy", user / "backup" / "3.npy")
        target = user / "backup"
    elif damage == "linked user":
        target = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user02_led"
        shutil.move(str(target), tmp_path / "elsewhere")
        _symlink(tmp_path / "elsewhere", target)
    elif damage == "10npy":
        target = user / "10npy"
        shutil.copy(user / "3.npy", target)
    else:
        target = user / "4.npy"
        target.unlink()
        target.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_event_dataset("dvsgesture", str(tmp_path), 2)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"data: dvsgesture: {needle}") and f"{target} (tonic expects" in msg, msg


def test_symlinked_split_folders_and_files_are_read(tmp_path):
    """A guard: tonic's walk follows the split folder itself and linked files; those stay accepted."""
    ev.make_dvsgesture(tmp_path)
    split = tmp_path / "DVSGesture" / "ibmGestureTest"
    shutil.move(str(split), tmp_path / "real-test")
    _symlink(tmp_path / "real-test", split)
    f = tmp_path.joinpath(*USER, "3.npy")
    shutil.move(str(f), tmp_path / "three.npy")
    os.symlink(tmp_path / "three.npy", f)
    d = load_event_dataset("dvsgesture", str(tmp_path), 2)
    assert (len(d.train), len(d.test)) == (22, 11)


def test_nmnist_symlinked_digit_folder_is_refused(tmp_path):
    """tonic's walk did not go into it: digit 7 was left out of training without a word."""
    ev.make_nmnist(tmp_path, per_class=(1, 1))
    seven = tmp_path / "NMNIST" / "Train" / "7"
    shutil.move(str(seven), tmp_path / "seven")
    _symlink(tmp_path / "seven", seven)
    with pytest.raises(FileNotFoundError, match=rf"^data: nmnist: a symlinked folder .*: {re.escape(str(seven))} "):
        load_event_dataset("nmnist", str(tmp_path), 2)
