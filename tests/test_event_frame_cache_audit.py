"""Audit of the event-data frame cache (``.edgesnn-frames``, ``EDGESNN_FRAME_CACHE``) on fabricated
DVS Gesture, N-MNIST and SHD datasets: every change to the source files is binned again (never a
stale entry), an interrupted, killed or failed binning leaves nothing a later run reads, and the
frames always equal the independent reading of :mod:`_dvs_reference`; a killed binning's temp file
goes with the next binning of that entry.

Finding pinned here (the test fails on the code before the fix): ``EDGESNN_FRAME_CACHE`` inside
the dataset folder (the cached ``.npy`` files became samples on the next run).
"""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tonic")
pytest.importorskip("h5py")

import test_datasets_events as ev  # noqa: E402
from _dvs_reference import USER, ref_split  # noqa: E402
from edgesnn.errors import UsageError  # noqa: E402
from edgesnn.training.events import load_event_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def _default_cache(monkeypatch):
    monkeypatch.delenv("EDGESNN_FRAME_CACHE", raising=False)


# ----------------------------------------------------------------------------------- the cache


def _entries(root: Path, split: str = "train") -> int:
    return len(list((root / ".edgesnn-frames").glob(f"*-{split}-*.frames.npy")))


def _matches(root: Path, d, steps: int) -> bool:
    x, y = ref_split(root, "ibmGestureTrain", steps)
    xt, yt = ref_split(root, "ibmGestureTest", steps)
    return (np.array_equal(d.train.x.numpy(), x) and d.train.y.tolist() == y.tolist()
            and np.array_equal(d.test.x.numpy(), xt) and d.test.y.tolist() == yt.tolist())


def test_every_source_change_is_binned_again(tmp_path):
    """In-place edit with the mtime put back, files swapped by rename (mtimes put back), added,
    removed, renamed, a user folder renamed, split folders swapped, T changed: each run gives what
    the files hold now, never a stale entry."""
    ev.make_dvsgesture(tmp_path)
    user = tmp_path.joinpath(*USER)
    train = tmp_path / "DVSGesture" / "ibmGestureTrain"
    assert _matches(tmp_path, load_event_dataset("dvsgesture", str(tmp_path), 3), 3)

    def edit_in_place():
        f = user / "3.npy"
        st = os.stat(f)
        a = np.load(f)
        a[:, 2] = 1 - a[:, 2]
        np.save(f, a)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (os.stat(f).st_size, os.stat(f).st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    def swap():
        a, b = user / "3.npy", user / "4.npy"
        sa, sb = os.stat(a), os.stat(b)
        os.rename(a, tmp_path / "t.npy")
        os.rename(b, a)
        os.rename(tmp_path / "t.npy", b)
        os.utime(a, ns=(sa.st_atime_ns, sa.st_mtime_ns))
        os.utime(b, ns=(sb.st_atime_ns, sb.st_mtime_ns))

    def swap_splits():
        test = tmp_path / "DVSGesture" / "ibmGestureTest"
        os.rename(train, tmp_path / "DVSGesture" / "x")
        os.rename(test, train)
        os.rename(tmp_path / "DVSGesture" / "x", test)

    changes = [edit_in_place, swap, lambda: shutil.copy(user / "3.npy", user / "10.npy"),
               lambda: (user / "10.npy").unlink(), lambda: os.rename(user / "9.npy", user / "10.npy"),
               lambda: os.rename(train / "user02_led", train / "user03_led"), swap_splits]
    for i, change in enumerate(changes):
        before = _entries(tmp_path)
        change()
        assert _matches(tmp_path, load_event_dataset("dvsgesture", str(tmp_path), 3), 3), change
        assert _entries(tmp_path) == before + 1, i
    for steps in (5, 3):
        assert _matches(tmp_path, load_event_dataset("dvsgesture", str(tmp_path), steps), steps)


def test_an_interrupted_binning_leaves_nothing_a_later_run_reads(tmp_path, monkeypatch):
    import edgesnn.atomic as atomic
    import tonic

    ev.make_dvsgesture(tmp_path)
    real = tonic.datasets.DVSGesture.__getitem__
    calls = []

    def interrupted(self, index):
        calls.append(index)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(self, index)

    monkeypatch.setattr(tonic.datasets.DVSGesture, "__getitem__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_event_dataset("dvsgesture", str(tmp_path), 3)
    assert not any((tmp_path / ".edgesnn-frames").iterdir())  # no entry, no temp file
    monkeypatch.setattr(tonic.datasets.DVSGesture, "__getitem__", real)

    def killed(path, write, *a, **k):  # the frames in place, the labels (written last) never
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "atomic_write", killed)
    with pytest.raises(KeyboardInterrupt):
        load_event_dataset("dvsgesture", str(tmp_path), 3)
    assert _entries(tmp_path) == 1 and not list((tmp_path / ".edgesnn-frames").glob("*.labels.npy"))
    monkeypatch.undo()
    monkeypatch.delenv("EDGESNN_FRAME_CACHE", raising=False)
    frames = next((tmp_path / ".edgesnn-frames").glob("*-train-*.frames.npy"))
    np.lib.format.open_memmap(frames, mode="r+")[:] = 0  # were it read, the check below would fail
    assert _matches(tmp_path, load_event_dataset("dvsgesture", str(tmp_path), 3), 3)


def test_a_frame_cache_inside_the_dataset_is_refused_before_it_is_made(tmp_path, monkeypatch):
    """The cached .npy files in a user folder were read as samples by the next run."""
    ev.make_dvsgesture(tmp_path)
    inside = tmp_path.joinpath(*USER, "cache")
    monkeypatch.setenv("EDGESNN_FRAME_CACHE", str(inside))
    with pytest.raises(UsageError, match=rf"^EDGESNN_FRAME_CACHE: {re.escape(str(inside))} is inside the dataset "
                                         rf"folder {re.escape(str(tmp_path / 'DVSGesture'))} "):
        load_event_dataset("dvsgesture", str(tmp_path), 2)
    assert not inside.exists()
    monkeypatch.setenv("EDGESNN_FRAME_CACHE", str(tmp_path / "DVSGesture"))
    with pytest.raises(UsageError, match="is inside the dataset folder"):
        load_event_dataset("dvsgesture", str(tmp_path), 2)
    monkeypatch.setenv("EDGESNN_FRAME_CACHE", str(tmp_path / "frames"))  # beside it: fine
    assert len(load_event_dataset("dvsgesture", str(tmp_path), 2).train) == 22


def test_nmnist_and_shd_in_place_edits_are_binned_again(tmp_path):
    """The same cache path for the other two: an edit with the mtime put back is seen."""
    ev.make_nmnist(tmp_path, per_class=(1, 1))
    ev.make_shd(tmp_path, sizes=(4, 2))
    for name, f in (("nmnist", tmp_path / "NMNIST" / "Train" / "4" / "00000.bin"),
                    ("shd", tmp_path / "SHD" / "shd_train.h5")):
        first = load_event_dataset(name, str(tmp_path), 2).train.x.numpy().copy()
        st = os.stat(f)
        if name == "nmnist":
            rec = np.frombuffer(f.read_bytes(), np.uint8).reshape(-1, 5).copy()
            rec[:, 0] = (rec[:, 0].astype(int) + 5) % 34  # every event moved 5 pixels
            f.write_bytes(rec.tobytes())
        else:
            with ev.h5py.File(f, "r+") as h:
                u = h["spikes/units"][1]
                h["spikes/units"][1] = (u.astype(int) + 5) % 700
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        again = load_event_dataset(name, str(tmp_path), 2).train.x.numpy()
        assert again.shape == first.shape and not np.array_equal(again, first), name


def test_a_killed_binnings_temp_file_goes_with_the_next_binning(tmp_path):
    """A binning killed outright left its (for N-MNIST, GB-sized) temp frames file in the cache
    forever: the next binning of the same entry removes it; a temp file of a live binning (locked)
    and the user's own files stay."""
    fcntl = pytest.importorskip("fcntl")
    ev.make_dvsgesture(tmp_path)
    cache = tmp_path / "DVSGesture" / ".." / ".edgesnn-frames"
    load_event_dataset("dvsgesture", str(tmp_path), 2)
    entries = sorted(p.name for p in cache.iterdir())
    frames = [n for n in entries if n.endswith(".frames.npy")]
    assert len(frames) == 2 and not [n for n in entries if n.endswith(".tmp")]
    dead = cache / f".{frames[0]}.k1ll3d00.tmp"   # what a SIGKILLed binning left
    live = cache / f".{frames[1]}.l1ve0000.tmp"   # another process binning now
    mine = cache / f".{frames[0]}.backup.tmp"     # not a name the writer gives its temp files
    for p in (dead, live, mine):
        p.write_bytes(b"\0" * 64)
        os.utime(p, (1, 1))
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        for f in cache.glob("*.npy"):
            f.unlink()  # the entries must be binned again
        load_event_dataset("dvsgesture", str(tmp_path), 2)
        assert not dead.exists() and live.exists() and mine.exists()
    assert sorted(p.name for p in cache.glob("*.npy")) == sorted(n for n in entries if not n.startswith("."))


def test_a_failed_binning_leaves_no_temp_file_and_no_entry(tmp_path, monkeypatch):
    from edgesnn.training import event_frames

    ev.make_dvsgesture(tmp_path)
    cache = tmp_path / ".edgesnn-frames"
    real = event_frames._sample
    calls = []

    def failing(ds, i, label):
        calls.append(i)
        if len(calls) > 1:
            raise ValueError(f"data: {label}: boom")
        return real(ds, i, label)

    monkeypatch.setattr(event_frames, "_sample", failing)
    with pytest.raises(ValueError, match="boom"):
        load_event_dataset("dvsgesture", str(tmp_path), 2)
    assert cache.is_dir() and list(cache.iterdir()) == []
