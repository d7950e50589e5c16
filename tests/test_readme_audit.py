"""README audit: a remedy the README says an error names is one that then works.

*Micro-batches* ("With a plan"): when ``edgesnn plan --batch B`` does not fit, "the error names the
batch that does and the ``--micro-batch`` a plan at that batch holds". For the README's own VGG-11
example (T = 8, ``--device raspberry-pi-4-4gb --budget 2GiB --dataset cifar10 --eval-batch 32``)
``--batch 256`` named ``--micro-batch 64``, while the plan at the batch it named (65) holds parts of
at most 62, so the ``edgesnn train --plan ... --micro-batch 64`` it suggested was refused. The hint
took its part from the neuron choice that fits the largest batch; the plan at that batch picks the
fastest choice that fits, which can hold fewer samples per part.
"""

from __future__ import annotations

import json
import re

from edgesnn.cli import main

_VGG = ["plan", "--model", "vgg11", "--input", "3,32,32", "-T", "8", "--device", "raspberry-pi-4-4gb",
        "--budget", "2GiB", "--dataset", "cifar10", "--eval-batch", "32"]


def test_plan_batch_hint_names_the_part_the_plan_at_that_batch_holds(tmp_path, capsys):
    assert main([*_VGG, "--batch", "256"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    bmax = int(re.search(r"use --batch (\d+) or less", err).group(1))
    hint = int(re.search(r"edgesnn train --micro-batch (\d+) still steps on batches of 256", err).group(1))
    out = tmp_path / "plan.json"
    assert main([*_VGG, "--batch", str(bmax), "--json", str(out)]) == 0
    held = json.loads(out.read_text())["predicted"]["micro_batch"]
    assert hint == held, (hint, held, bmax)
