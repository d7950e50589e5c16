"""Data handling under ``torchrun``: an epoch whose samples the ranks do not divide evenly.

``DistributedSampler`` pads every epoch to a multiple of the ranks by repeating the permutation's
first samples. Those repeats trained a second time (their gradient counted twice in the epoch's
last step) and were counted in the epoch's ``samples`` and loss: 2 ranks on 11 samples trained 12
and reported ``samples: 12``, and the last step's gradient was not one process's on the same batch.
Now the repeats weigh 0: 2 ranks x batch 3 step exactly as 1 process x batch 6 (no BatchNorm), and
the report counts every sample once.
"""

import os

import numpy as np
import torch
import torch.distributed as dist

from edgesnn.checkpoint import load_checkpoint
from edgesnn.training.data import load_image_folder
from edgesnn.training.loop import TrainConfig, evaluate, model_from_checkpoint, train

from _ranks import run_ranks


def _folder(root) -> str:
    """15 tiny PNGs in 2 class folders: 11 train and 4 test samples (odd: 2 ranks pad the epoch)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(8 - c):
            px = (rng.random((4, 4, 3)) * 127 + 128 * c).astype(np.uint8)
            Image.fromarray(px, "RGB").save(root / f"c{c}" / f"{k}.png")
    return str(root)


def _cfg(data: str, batch_size: int) -> TrainConfig:
    return TrainConfig(dataset="folder", data_path=data, model="mlp", hidden=[16], neuron="lif", timesteps=2,
                       epochs=2, batch_size=batch_size, lr=1e-2, seed=1, batchnorm=False, backend="torch")


def _rank(rank: int, world: int, init_file: str, data: str, ckpt: str) -> None:
    from edgesnn.training.distributed import configure_threads, import_before_group

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    configure_threads(1)
    import_before_group()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        report = train(_cfg(data, 3), checkpoint=ckpt, progress=False, log=lambda m: None)
        torch.save(report, f"{ckpt}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_padded_epoch_trains_every_sample_once_as_one_process(tmp_path):
    data = _folder(tmp_path / "imgs")
    ck2 = tmp_path / "two.ckpt"
    run_ranks(_rank, (2, str(tmp_path / "init"), data, str(ck2)), timeout=120.0)
    reports = [torch.load(f"{ck2}.rank{r}.pt", weights_only=False) for r in (0, 1)]
    one = train(_cfg(data, 6), checkpoint=str(tmp_path / "one.ckpt"), progress=False, log=lambda m: None)
    assert one["train_samples"] == 11 and reports[0]["train_samples"] == 11
    two = reports[0]
    # every sample counted once per epoch (the padded one was counted twice: 12 samples)
    assert [row["samples"] for row in two["history"]] == [11, 11] == [row["samples"] for row in one["history"]]
    assert two["steps"] == one["steps"] == 4
    # 2 ranks x 3 == 1 process x 6, the padded last step included (it added the repeat's gradient)
    a, b = load_checkpoint(tmp_path / "one.ckpt")["model_state"], load_checkpoint(ck2)["model_state"]
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5, f"2 ranks x 3 vs 1 process x 6 on 11 samples: max weight difference {worst:.3g}"
    for r1, r2 in zip(one["history"], two["history"]):  # the epoch loss: the mean over the 11 samples
        assert abs(r1["loss"] - r2["loss"]) <= 1e-5, (r1, r2)
    # the held-out accuracy the ranks report is one process's on the same weights and samples
    model = model_from_checkpoint(str(ck2))
    assert two["test_accuracy"] == reports[1]["test_accuracy"] == evaluate(model, load_image_folder(data, flat=True, seed=1).test)
