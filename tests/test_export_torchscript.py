"""TorchScript export: load and train in a fresh process, compare with eager training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_export_common import make_batch, make_model, run_python

STEPS = 5
LR = 0.1

_TRAIN_IN_FRESH_PROCESS = r"""
import json, sys, warnings
import numpy as np, torch
warnings.simplefilter("ignore")
torch.set_num_threads(1)
module = torch.jit.load(sys.argv[1])
data = np.load(sys.argv[2])
opt = torch.optim.SGD(module.parameters(), lr=float(sys.argv[4]))
losses = []
for i in range(data["x"].shape[0]):
    loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(data["x"][i])), torch.from_numpy(data["y"][i]))
    opt.zero_grad(); loss.backward(); opt.step()
    losses.append(loss.item())
np.savez(sys.argv[3], **{n: p.detach().numpy() for n, p in module.named_parameters()})
print(json.dumps({"losses": losses, "edgesnn_imported": any(m.startswith("edgesnn") for m in sys.modules)}))
"""


@pytest.mark.parametrize("name,neuron,surrogate", [("mlp", "lif", "sigmoid"), ("convnet", "revlif", "atan")])
def test_torchscript_trains_in_fresh_process_like_eager(tmp_path, name, neuron, surrogate):
    from edgesnn.export.prepare import export_copy
    from edgesnn.export.torchscript import export_torchscript, load_torchscript

    model = make_model(name, neuron, surrogate)
    path = export_torchscript(model, tmp_path / "model.pt", batch_size=4)
    # batch 6 != the traced batch 4: the batch dimension stays symbolic
    batches = [make_batch(name, 6, seed=10 + i) for i in range(STEPS)]
    np.savez(tmp_path / "data.npz", x=np.stack([b[0].numpy() for b in batches]), y=np.stack([b[1].numpy() for b in batches]))
    proc = run_python(_TRAIN_IN_FRESH_PROCESS, str(path), str(tmp_path / "data.npz"), str(tmp_path / "after.npz"), str(LR))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["edgesnn_imported"]  # the archive is self-contained

    ref = export_copy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    losses = []
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(ref(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    np.testing.assert_allclose(result["losses"], losses, atol=1e-6)
    after = np.load(tmp_path / "after.npz")
    assert sorted(after.files) == sorted(n for n, _ in ref.named_parameters())
    for n, p in ref.named_parameters():
        np.testing.assert_allclose(after[n], p.detach().numpy(), atol=1e-6, err_msg=n)
    assert load_torchscript(path) is not None


def test_torchscript_load_errors(tmp_path):
    from edgesnn.export.torchscript import load_torchscript

    with pytest.raises(FileNotFoundError, match="no such file"):
        load_torchscript(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="bad.pt is corrupt"):
        load_torchscript(bad)
