"""N-MNIST, DVS Gesture and SHD through tonic, from small files in each dataset's real on-disk format.

Nothing is downloaded: the files are written here in the formats tonic 1.7 reads (N-MNIST's
5-byte event records in Train|Test/<digit>/*.bin, DVS Gesture's per-sample [N, 4] .npy in
ibmGesture{Train,Test}/user<NN>_<lighting>/<label>.npy, SHD's HDF5 with ragged spikes/times and
spikes/units) and loaded through tonic's own readers and ToFrame transform.
"""

from pathlib import Path

import os

import numpy as np
import pytest

pytest.importorskip("tonic")
h5py = pytest.importorskip("h5py")

from edgesnn.cli import main  # noqa: E402
from edgesnn.training.events import check_layout, load_event_dataset  # noqa: E402


# ------------------------------------------------------------------------------ the real formats


def write_nmnist_bin(path: Path, label: int, rng, n: int = 200) -> None:
    """N-MNIST record (Orchard et al.): 40 bits per event, x(8) y(8) p(1) t(23 bits, microseconds)."""
    x = (rng.integers(0, 8, n) + 3 * label) % 34
    y = rng.integers(0, 34, n)
    p = rng.integers(0, 2, n)
    t = np.sort(rng.integers(0, 300_000, n))
    rec = np.zeros((n, 5), np.uint8)
    rec[:, 0], rec[:, 1] = x, y
    rec[:, 2] = (p << 7) | ((t >> 16) & 0x7F)
    rec[:, 3], rec[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    path.write_bytes(rec.tobytes())


def make_nmnist(root: Path, per_class=(2, 1), seed=0) -> None:
    rng = np.random.default_rng(seed)
    for split, k in zip(("Train", "Test"), per_class):
        for d in range(10):
            folder = root / "NMNIST" / split / str(d)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(k):
                write_nmnist_bin(folder / f"{i:05d}.bin", d, rng)


def make_dvsgesture(root: Path, seed=0) -> None:
    """tonic's pre-processed DVS Gesture: one [N, 4] array (x, y, p, t in ms) per sample, named <label>.npy."""
    rng = np.random.default_rng(seed)
    for split, users in (("ibmGestureTrain", ("user01_fluorescent", "user02_led")), ("ibmGestureTest", ("user24_led",))):
        for user in users:
            folder = root / "DVSGesture" / split / user
            folder.mkdir(parents=True, exist_ok=True)
            for label in range(11):
                n = 300
                ev = np.stack([(rng.integers(0, 11, n) + 11 * label) % 128, rng.integers(0, 128, n),
                               rng.integers(0, 2, n), np.sort(rng.integers(0, 1500, n))], 1).astype(np.int64)
                np.save(folder / f"{label}.npy", ev)


def make_shd(root: Path, sizes=(40, 20), seed=0) -> None:
    """SHD's HDF5 layout: ragged spikes/times (s) and spikes/units, labels, extra/keys, extra/speaker."""
    rng = np.random.default_rng(seed)
    folder = root / "SHD"
    folder.mkdir(parents=True, exist_ok=True)
    for split, k in zip(("train", "test"), sizes):
        labels = np.arange(k) % 20
        with h5py.File(folder / f"shd_{split}.h5", "w") as f:
            times = f.create_dataset("spikes/times", (k,), dtype=h5py.vlen_dtype(np.float16))
            units = f.create_dataset("spikes/units", (k,), dtype=h5py.vlen_dtype(np.uint16))
            for i, lab in enumerate(labels):
                m = int(rng.integers(50, 150))
                times[i] = np.sort(rng.random(m)).astype(np.float16)
                units[i] = ((rng.integers(0, 35, m) + 35 * lab) % 700).astype(np.uint16)
            f.create_dataset("labels", data=labels.astype(np.uint16))
            f.create_dataset("extra/keys", data=np.array([f"digit-{i}".encode() for i in range(20)]))
            f.create_dataset("extra/speaker", data=rng.integers(0, 12, k).astype(np.uint16))


MAKERS = {"nmnist": make_nmnist, "dvsgesture": make_dvsgesture, "shd": make_shd}
SHAPES = {"nmnist": (2, 34, 34), "dvsgesture": (2, 32, 32), "shd": (1, 700)}
SIZES = {"nmnist": (20, 10), "dvsgesture": (22, 11), "shd": (40, 20)}


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("name", ["nmnist", "dvsgesture", "shd"])
def test_loads_through_tonic_into_cached_frames(tmp_path, name):
    MAKERS[name](tmp_path)
    d = load_event_dataset(name, str(tmp_path), timesteps=3)
    assert (len(d.train), len(d.test)) == SIZES[name]
    assert d.train.events and tuple(d.train.x.shape) == (SIZES[name][0], 3, *SHAPES[name]) and d.in_shape == SHAPES[name]
    assert int(d.train.x.sum()) > 0 and d.train.y.max() < d.num_classes
    batch = d.train.inputs(np.array([0, 1]))
    assert tuple(batch.shape) == (3, 2, *SHAPES[name]) and batch.dtype.is_floating_point  # time-major for the model
    cache = tmp_path / ".edgesnn-frames"
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 4 and not any(f.endswith(".tmp") for f in files)  # frames + labels per split, no temp files
    stamp = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    again = load_event_dataset(name, str(tmp_path), timesteps=3)  # served from the cache, same values
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == stamp
    assert bool((again.train.x == d.train.x).all())
    flat = load_event_dataset(name, str(tmp_path), timesteps=3, flat=True)
    assert flat.in_shape == (int(np.prod(SHAPES[name])),)


def test_frames_match_tonic_directly(tmp_path):
    """The cached frames are what tonic's own NMNIST + ToFrame give for each sample."""
    import tonic
    import tonic.transforms as tt

    make_nmnist(tmp_path, per_class=(1, 1))
    d = load_event_dataset("nmnist", str(tmp_path), timesteps=4)
    files = sorted((tmp_path / "NMNIST" / "Train").rglob("*.bin"))
    for i in (0, 5, 9):
        ev = tonic.io.read_mnist_file(str(files[i]), dtype=tonic.datasets.NMNIST.dtype)
        frames = tt.ToFrame(sensor_size=(34, 34, 2), n_time_bins=4)(ev)
        assert np.array_equal(d.train.x[i].numpy(), frames) and int(d.train.y[i]) == i


@pytest.mark.parametrize("name,model", [("nmnist", "convnet"), ("dvsgesture", "mlp"), ("shd", "mlp")])
def test_trains_end_to_end_from_the_cli(tmp_path, capsys, name, model):
    MAKERS[name](tmp_path)
    rc = main(["train", "--dataset", name, "--data-dir", str(tmp_path), "--model", model, "-T", "3", "--epochs", "2",
               "--batch-size", "8", "--no-progress", "--device", "cpu", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "final test accuracy" in out and "epoch 2/2" in out
    assert f"{SIZES[name][1]} test samples" in out


@pytest.mark.parametrize("name,damage,expect", [
    ("nmnist", None, "needs --data-dir DIR with DIR/NMNIST/Train/<digit 0-9>/*.bin"),
    ("nmnist", "NMNIST", "missing {d}/NMNIST (tonic expects"),
    ("nmnist", "NMNIST/Test", "missing {d}/NMNIST/Test (tonic expects"),
    ("nmnist", "NMNIST/Train/7", "no .bin files for digit(s) 7 in {d}/NMNIST/Train"),
    ("dvsgesture", "DVSGesture/ibmGestureTest", "missing {d}/DVSGesture/ibmGestureTest (tonic expects"),
    ("shd", "SHD/shd_test.h5", "missing {d}/SHD/shd_test.h5 (tonic expects DIR/SHD/shd_train.h5"),
    ("shd", "truncate", "unreadable HDF5"),
    ("shd", "nolabels", "data: shd: no labels in {d}/SHD/shd_train.h5 (tonic expects"),  # not "unreadable"
    ("shd", "scalar_labels", "'labels' is a scalar (one value per sample expected) in {d}/SHD/shd_train.h5"),
])
def test_missing_or_partial_data_is_one_line(tmp_path, capsys, name, damage, expect):
    import shutil

    MAKERS[name](tmp_path)
    if damage == "truncate":
        p = tmp_path / "SHD" / "shd_train.h5"
        p.write_bytes(p.read_bytes()[:1000])
    elif damage in ("nolabels", "scalar_labels"):
        with h5py.File(tmp_path / "SHD" / "shd_train.h5", "a") as f:
            del f["labels"]
            if damage == "scalar_labels":  # h5py's len() raised a TypeError traceback
                f["labels"] = np.uint16(3)
    elif damage:
        target = tmp_path / damage
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    argv = ["train", "--dataset", name, "--epochs", "1", "--no-progress", "--device", "cpu"]
    if damage is not None:
        argv += ["--data-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgesnn train: error: data:"), err
    assert expect.format(d=tmp_path) in err, err
    assert (damage == "truncate") == ("unreadable" in err) and err.count(str(tmp_path)) <= 1, err  # said once
    assert not (tmp_path / ".edgesnn-frames").exists() or not any((tmp_path / ".edgesnn-frames").iterdir())


def test_layout_accepts_the_dataset_folder_itself(tmp_path):
    make_shd(tmp_path, sizes=(2, 2))
    assert check_layout("shd", str(tmp_path / "SHD")) == tmp_path
    assert check_layout("shd", str(tmp_path)) == tmp_path


def test_edited_source_files_are_binned_again(tmp_path):
    make_shd(tmp_path, sizes=(4, 2))
    load_event_dataset("shd", str(tmp_path), timesteps=2)
    make_shd(tmp_path, sizes=(6, 2), seed=1)  # new train file: new cache entry
    d = load_event_dataset("shd", str(tmp_path), timesteps=2)
    assert len(d.train) == 6
    assert len(list((tmp_path / ".edgesnn-frames").glob("shd-train-*.frames.npy"))) == 2


def test_unsorted_and_empty_samples_are_binned(tmp_path):
    """Events out of time order are sorted before binning (tonic's bins assume order and dropped
    them); a sample without events becomes all-zero frames (it was an error or a traceback)."""
    import tonic
    import tonic.transforms as tt

    make_nmnist(tmp_path, per_class=(1, 1))
    files = sorted((tmp_path / "NMNIST" / "Train").rglob("*.bin"))
    rec = np.frombuffer(files[3].read_bytes(), np.uint8).reshape(-1, 5)
    files[3].write_bytes(rec[np.random.default_rng(1).permutation(len(rec))].tobytes())  # same events, shuffled
    files[0].write_bytes(b"")  # no events
    d = load_event_dataset("nmnist", str(tmp_path), timesteps=4)
    ev = tonic.io.read_mnist_file(str(files[3]), dtype=tonic.datasets.NMNIST.dtype)
    want = tt.ToFrame(sensor_size=(34, 34, 2), n_time_bins=4)(ev[np.argsort(ev["t"], kind="stable")])
    assert np.array_equal(d.train.x[3].numpy(), want) and int(d.train.x[3].sum()) >= len(rec) - 1  # (tonic: the last edge)
    assert d.train.x.shape[1:] == (4, 2, 34, 34) and int(d.train.x[0].sum()) == 0


def test_samples_follow_file_order_and_a_truncated_file_is_named(tmp_path, monkeypatch):
    """Samples come in path order whatever order the filesystem lists them in (tonic's os.walk
    order made the same --seed train on another order on another machine); a truncated .bin was
    a numpy broadcast error."""
    import edgesnn.training.events as events

    make_nmnist(tmp_path, per_class=(2, 1))
    real_walk = os.walk
    monkeypatch.setattr(os, "walk", lambda *a, **k: reversed(list(real_walk(*a, **k))))  # another filesystem's order
    d = load_event_dataset("nmnist", str(tmp_path), timesteps=2)
    files = sorted((tmp_path / "NMNIST" / "Train").rglob("*.bin"), key=str)
    assert d.train.y.tolist() == [int(f.parent.name) for f in files]
    monkeypatch.setattr(os, "walk", real_walk)
    for cut, bad in ((3, files[5]), (4, files[6])):  # 4: one byte over a record, which tonic dropped silently
        whole = bad.read_bytes()
        bad.write_bytes(whole[:-cut])  # not a whole number of 5-byte events
        with pytest.raises(ValueError, match=rf"^data: nmnist train: cannot read {bad}"):
            events.load_event_dataset("nmnist", str(tmp_path), timesteps=2)
        bad.write_bytes(whole)
