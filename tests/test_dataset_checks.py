"""Checks of the dataset loaders and the `edgesnn train` flags (an audit's findings).

Every dataset here is fabricated small in its real on-disk format: CIFAR-10 python batches
(pickled dicts of uint8 ``data [N, 3072]`` and ``labels``), image folders, and the event datasets
of ``test_datasets_events`` (N-MNIST .bin records, DVS Gesture .npy arrays, SHD HDF5).
"""

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesnn.cli import main
from edgesnn.errors import UsageError
from edgesnn.training import TrainConfig, load_dataset, train
from edgesnn.training.data import Dataset, Split

QUIET = dict(progress=False, log=lambda s: None)
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture
def ev():
    """The event-data fabricators (tonic and h5py needed)."""
    pytest.importorskip("tonic")
    pytest.importorskip("h5py")
    import test_datasets_events

    return test_datasets_events


def make_cifar(root: Path, n: int = 4, seed: int = 0) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in CIFAR_FILES:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def edit_batch(path: Path, key: str, fn) -> None:
    d = pickle.loads(path.read_bytes())
    d[key] = fn(d[key])
    path.write_bytes(pickle.dumps(d))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgesnn train: error: "), err
    return err.strip()


# ------------------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("key,fn,needle", [
    ("labels", lambda y: y[:-1], "has 4 images but 3 labels"),  # silently shifted every later label
    ("data", lambda x: x[:-1], "has 3 images but 4 labels"),  # an IndexError traceback
    ("data", lambda x: x.astype(np.float32) / 255, "'data' is float32 of shape [4, 3072]; expected uint8"),  # 0/1 images
    ("data", lambda x: x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(),
     "'data' is uint8 of shape [4, 32, 32, 3]; expected uint8 of shape [N, 3072]"),  # channels scrambled
    ("data", lambda x: x[:, :1000].copy(), "'data' is uint8 of shape [4, 1000]"),  # a reshape error naming no file
    ("labels", lambda y: [v + 0.5 for v in y], "is not a whole number"),  # truncated
])
def test_cifar10_batches_are_checked_per_file(tmp_path, key, fn, needle):
    folder = make_cifar(tmp_path)
    edit_batch(folder / "data_batch_2", key, fn)
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", str(tmp_path), flat=False)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"data: {folder / 'data_batch_2'}") and needle in msg, msg


def test_cifar10_length_mismatch_is_one_cli_line(tmp_path, capsys):
    folder = make_cifar(tmp_path)
    edit_batch(folder / "test_batch", "labels", lambda y: y[:-1])
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1", "--no-progress",
                 "--device", "cpu"]) == 2
    assert f"{folder / 'test_batch'} has 4 images but 3 labels" in one_error_line(capsys)


def test_tilde_is_expanded_for_cifar10_and_image_folders(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("HOME", str(tmp_path))
    make_cifar(tmp_path / "c")
    assert len(load_dataset("cifar10", "~/c", flat=False).train) == 20
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    assert load_dataset("folder", "~/imgs", flat=False).num_classes == 2


# ---------------------------------------------------------------------------------- image folders


def test_image_folder_logs_what_it_skips(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / c / f"{i}.png")
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "a" / "w.webp")
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "b" / "t.tif")
    (tmp_path / "b" / "nested").mkdir()
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "b" / "nested" / "0.png")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"")  # hidden: not counted
    lines = []
    d = load_dataset("folder", str(tmp_path), flat=False, log=lines.append)
    assert len(d.train) + len(d.test) == 6 and d.in_shape == (3, 32, 32)
    assert len(lines) == 1 and "skipped 3 entries" in lines[0] and "e.g. a/w.webp" in lines[0], lines


# --------------------------------------------------------------------------------- event datasets


@pytest.mark.parametrize("damage,needle", [
    ("Train/13", "unexpected folder"),  # tonic labelled it 3 (the last character of its path)
    ("Train/3 (copy)", "unexpected folder"),  # tonic: "invalid literal for int()", naming no path
    ("Test/3/sub5", "a folder inside a digit folder"),  # labelled 5
    ("Test/00000.bin", "a .bin file outside the digit folders"),
])
def test_nmnist_refuses_entries_tonic_would_mislabel(tmp_path, ev, damage, needle):
    import shutil

    ev.make_nmnist(tmp_path, per_class=(1, 1))
    target = tmp_path / "NMNIST" / damage
    if target.suffix == ".bin":
        shutil.copy(tmp_path / "NMNIST" / "Test" / "3" / "00000.bin", target)
    else:
        shutil.copytree(tmp_path / "NMNIST" / "Train" / "3", target)
    (tmp_path / "NMNIST" / "Train" / ".DS_Store").write_bytes(b"")  # files tonic does not read are let be
    with pytest.raises(FileNotFoundError, match=rf"^data: nmnist: {needle}.*: {re.escape(str(target))} \(tonic expects"):
        load_dataset("nmnist", str(tmp_path), timesteps=2)


def test_tonic_listing_errors_name_the_folder(tmp_path, ev):
    from edgesnn.training.events import tonic_dataset

    ev.make_nmnist(tmp_path, per_class=(1, 1))
    (tmp_path / "NMNIST" / "Train" / "3").rename(tmp_path / "NMNIST" / "Train" / "3 (copy)")
    with pytest.raises(ValueError, match=rf"^data: nmnist: tonic cannot list the samples under {tmp_path / 'NMNIST'} "
                                         r"\(invalid literal for int"):
        tonic_dataset("nmnist", tmp_path, True, 2)


def test_events_outside_the_sensor_are_refused_naming_the_file(tmp_path, ev):
    ev.make_dvsgesture(tmp_path)
    f = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_fluorescent" / "3.npy"
    a = np.load(f)
    a[:5, 0] = -2  # numpy indexing wrapped these into the frame's right edge
    np.save(f, a)
    with pytest.raises(ValueError, match=rf"^data: dvsgesture train: {f}: 5 events with x outside the sensor's "
                                         r"0..127 \(x spans -2\.\."):
        load_dataset("dvsgesture", str(tmp_path), timesteps=2)


def test_shd_errors_name_the_h5_file(tmp_path, ev):
    ev.make_shd(tmp_path, sizes=(4, 2))
    h5 = tmp_path / "SHD" / "shd_train.h5"
    with ev.h5py.File(h5, "a") as f:
        u = f["spikes/units"][1]
        u[:3] = 900
        f["spikes/units"][1] = u
    with pytest.raises(ValueError, match=rf"^data: shd train: {h5} sample 1: 3 events with unit outside the "
                                         r"sensor's 0..699 \(unit spans .*\.\.900\)"):
        load_dataset("shd", str(tmp_path), timesteps=2)
    ev.make_shd(tmp_path, sizes=(4, 2))
    with ev.h5py.File(h5, "a") as f:
        f["spikes/units"][2] = np.zeros(3, np.uint16)  # fewer units than times
    with pytest.raises(ValueError, match=rf"^data: shd train: {h5} sample 2: \d+ spike times but 3 units"):
        load_dataset("shd", str(tmp_path), timesteps=2)


def test_samples_without_binned_events_are_counted_in_one_line(tmp_path, ev):
    ev.make_dvsgesture(tmp_path)
    user = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_fluorescent"
    np.save(user / "2.npy", np.zeros((0, 4), np.int64))  # no events
    same = np.load(user / "5.npy")
    same[:, 3] = 7  # one timestamp: zero time span, tonic's bins have width 0
    np.save(user / "5.npy", same)
    lines = []
    d = load_dataset("dvsgesture", str(tmp_path), timesteps=3, log=lines.append)
    blank = [s for s in lines if "samples have" in s]
    assert blank == [f"  dvsgesture train: 2 of 22 samples have no events or a time span shorter than T=3 steps "
                     f"(all-zero frames): {user / '2.npy'}"], lines
    files = sorted((tmp_path / "DVSGesture" / "ibmGestureTrain").rglob("*.npy"), key=str)  # sample order
    empty = [i for i in range(len(files)) if int(d.train.x[i].sum()) == 0]
    assert empty == [files.index(user / n) for n in ("2.npy", "5.npy")]


def test_a_split_of_only_empty_frames_is_refused(tmp_path, ev):
    ev.make_nmnist(tmp_path, per_class=(1, 1))
    for f in (tmp_path / "NMNIST" / "Test").rglob("*.bin"):
        rec = np.frombuffer(f.read_bytes(), np.uint8).reshape(-1, 5).copy()
        rec[:, 2:] = 0  # every event at t = 0
        f.write_bytes(rec.tobytes())
    with pytest.raises(ValueError, match=r"^data: nmnist test: all 10 samples have no events or a time span shorter"):
        load_dataset("nmnist", str(tmp_path), timesteps=2)


# ------------------------------------------------------------------------------------ frame cache


def test_no_writable_frame_cache_is_one_line(tmp_path, ev, monkeypatch, capsys):
    ev.make_shd(tmp_path, sizes=(2, 2))
    (tmp_path / ".edgesnn-frames").write_text("a file, not a folder")
    (tmp_path / "home").write_text("a file: ~/.cache cannot be made")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGESNN_FRAME_CACHE", raising=False)
    with pytest.raises(UsageError, match="^data: no writable folder for the frame cache"):
        load_dataset("shd", str(tmp_path), timesteps=2)  # was a PermissionError traceback
    assert main(["train", "--dataset", "shd", "--data-dir", str(tmp_path), "--epochs", "1", "--no-progress",
                 "--device", "cpu"]) == 2
    assert "set EDGESNN_FRAME_CACHE" in one_error_line(capsys)


def test_an_unusable_frame_cache_variable_is_refused(tmp_path, ev, monkeypatch):
    ev.make_shd(tmp_path, sizes=(2, 2))
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("EDGESNN_FRAME_CACHE", str(tmp_path / "f" / "cache"))
    with pytest.raises(UsageError, match=rf"^EDGESNN_FRAME_CACHE: {tmp_path / 'f' / 'cache'} is not a writable folder"):
        load_dataset("shd", str(tmp_path), timesteps=2)
    assert not (tmp_path / ".edgesnn-frames").exists()  # not silently cached in the data folder
    monkeypatch.setenv("EDGESNN_FRAME_CACHE", str(tmp_path / "cache"))
    load_dataset("shd", str(tmp_path), timesteps=2)
    assert len(list((tmp_path / "cache").glob("*.frames.npy"))) == 2


def test_in_place_edits_with_restored_mtime_are_binned_again(tmp_path, ev):
    ev.make_shd(tmp_path, sizes=(4, 2))
    h5 = tmp_path / "SHD" / "shd_train.h5"
    assert load_dataset("shd", str(tmp_path), timesteps=2).train.y.tolist() == [0, 1, 2, 3]
    st = os.stat(h5)
    with ev.h5py.File(h5, "r+") as f:
        f["labels"][0] = 7  # same size
    os.utime(h5, ns=(st.st_atime_ns, st.st_mtime_ns))  # `touch -r`: the old mtime back
    assert (os.stat(h5).st_size, os.stat(h5).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert load_dataset("shd", str(tmp_path), timesteps=2).train.y.tolist() == [7, 1, 2, 3]


# --------------------------------------------------------------------------------------- --resume


def test_resume_is_refused_when_the_images_changed(tmp_path):
    folder = make_cifar(tmp_path)
    cfg = dict(dataset="cifar10", data_path=str(tmp_path), hidden=[8, 8], timesteps=2, batch_size=4)
    ck = tmp_path / "c.pt"
    train(TrainConfig(epochs=1, **cfg), checkpoint=str(ck), **QUIET)
    edit_batch(folder / "data_batch_3", "data", lambda x: np.roll(x, 1, axis=1))  # every image of a batch moved a pixel
    with pytest.raises(UsageError, match=r"^--resume: the inputs under .* changed since .*c\.pt was written"):
        train(TrainConfig(epochs=2, **cfg), checkpoint=str(ck), resume=True, **QUIET)
    make_cifar(tmp_path)  # the original data back: resumes
    assert len(train(TrainConfig(epochs=2, **cfg), checkpoint=str(ck), resume=True, **QUIET)["history"]) == 2

    def one_image(x):
        x = x.copy()
        x[1, 1024:1100] = 255 - x[1, 1024:1100]  # a small patch of one image's green channel
        return x

    edit_batch(folder / "test_batch", "data", one_image)
    with pytest.raises(UsageError, match="inputs under .* changed"):
        train(TrainConfig(epochs=3, **cfg), checkpoint=str(ck), resume=True, **QUIET)


def test_checkpoints_without_an_input_hash_still_resume(tmp_path):
    from edgesnn.checkpoint import load_checkpoint

    cfg = TrainConfig(epochs=1, hidden=[8, 8], timesteps=2)
    ck = tmp_path / "old.pt"
    train(cfg, checkpoint=str(ck), **QUIET)
    payload = load_checkpoint(ck)
    assert payload["data_content"].startswith("blake2b-")
    del payload["data_content"]  # as written by an older edgesnn
    torch.save(payload, ck)
    lines = []
    cfg.epochs = 2
    assert len(train(cfg, checkpoint=str(ck), resume=True, progress=False, log=lines.append)["history"]) == 2
    assert any("holds no hash of the inputs" in s for s in lines), lines


def test_the_input_hash_sees_single_values_and_moved_values(monkeypatch):
    import edgesnn.training.fingerprint as fp

    monkeypatch.setattr(fp, "HASH_BUDGET", 1024)  # strided: the per-sample sums must still see one value
    x = torch.rand(64, 3, 16, 16)

    def d(x, events=False):
        n = len(x)
        return Dataset("d", Split(x, torch.zeros(n, dtype=torch.long), events),
                       Split(x[:8], torch.zeros(8, dtype=torch.long), events), 2)

    base = fp.data_content_hash(d(x))
    assert base == fp.data_content_hash(d(x.clone())) and base.startswith("blake2b-s")
    y = x.clone()
    y[40, 2, 7, 5] = float(torch.nextafter(y[40, 2, 7, 5], torch.tensor(2.0)))  # one value, one ulp
    assert fp.data_content_hash(d(y)) != base
    assert fp.data_content_hash(d(x.flip(-1))) != base  # the same values, moved
    frames = torch.randint(0, 3, (10, 2, 2, 4, 4), dtype=torch.uint8)
    h = fp.data_content_hash(d(frames, events=True))
    frames[3, 1, 0, 2, 2] += 1
    assert fp.data_content_hash(d(frames, events=True)) != h


# --------------------------------------------------------------------------------- flags, early


@pytest.mark.parametrize("argv,needle", [
    (["--model", "convnet", "--dataset", "shd"], "--model convnet: needs C, H, W samples, but --dataset shd gives 1x700"),
    (["--neuron", "revlif:3", "--dataset", "cifar10"], "--neuron: 3 groups do not divide the 128 channels"),
    (["--neuron", "lif,lif,lif", "--dataset", "nmnist"], "--neuron: this model has 2 spiking layers, got 3 neuron specs"),
    (["--model", "vgg11", "--neuron", "revlif:3", "--dataset", "folder"], "--neuron: 3 groups do not divide the 64"),
])
def test_model_and_neuron_mismatches_are_refused_before_the_data_is_read(tmp_path, capsys, argv, needle):
    missing = tmp_path / "not-there"  # the data would be a later error: the flags are checked first
    rc = main(["train", *argv, "--data-dir", str(missing), "--epochs", "1", "--no-progress", "--device", "cpu"])
    assert rc == 2 and needle in one_error_line(capsys)


def test_sync_batchnorm_outside_torchrun_is_warned(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["train", "--sync-batchnorm", "--epochs", "1", "--max-steps", "1", "--no-progress",
                 "--device", "cpu", "-T", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning: --sync-batchnorm has no effect outside torchrun" in err and err.count("--sync-batchnorm") == 1
