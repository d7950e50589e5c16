"""torch's cosine learning-rate sequence: the oracle of the ``--lr-schedule cosine`` tests."""

from __future__ import annotations

from typing import List

import torch


def torch_cosine(lr: float, total: int) -> List[float]:
    """The rate of every step 0..total-1 under CosineAnnealingLR(T_max=total), stepped per batch
    (an SGD optimizer: the tests that count Adam's steps stay undisturbed)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.0)
    rates = []
    for _ in range(total):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates
