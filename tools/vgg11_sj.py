"""The VGG-11 the whole-network benchmarks measure (``bench_network_memory.py``,
``memopt_phases.py --model vgg11-max``, ``validate_planner.py --network``): SpikingJelly 2.0
multi-step Conv2d / BatchNorm2d / MaxPool2d layers on 3x32x32, only the spiking node differing
between rows. Needs SpikingJelly (``pip install --no-deps spikingjelly==2.0.0 loguru``)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

__all__ = ["CFG", "build_vgg"]

CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def build_vgg(node: str, grouped: bool = False) -> Tuple[Any, Optional[type]]:
    """VGG-11 of SpikingJelly multi-step layers with ``node`` in {"sj", "lif", "revlif"}: ``[T, B, 3, 32, 32]`` ->
    logits ``[T, B, 10]``. Returns ``(model, Block class or None)``.

    ``grouped``: the layers wrapped per conv -> BatchNorm -> node (-> max-pool) in a ``Block``
    (an ``nn.Sequential`` subclass), the unit SpikingJelly's ``memopt`` checkpoints.
    """
    from torch import nn
    from spikingjelly.activation_based import layer, neuron, surrogate

    from edgesnn.nn import LIF, RevLIF

    def make_node():
        if node == "sj":
            return neuron.LIFNode(tau=2.0, surrogate_function=surrogate.Sigmoid(), step_mode="m")
        return LIF() if node == "lif" else RevLIF(groups=2)

    class Block(nn.Sequential):
        pass

    mods, c = [], 3
    for item in CFG:
        if item == "M":
            mods.append(layer.MaxPool2d(2, step_mode="m"))
            continue
        mods += [layer.Conv2d(c, item, 3, padding=1, bias=False, step_mode="m"),
                 layer.BatchNorm2d(item, step_mode="m"), make_node()]
        c = item
    head = [layer.Flatten(step_mode="m"), layer.Linear(512, 10, step_mode="m")]
    if not grouped:
        return nn.Sequential(*mods, *head), None
    blocks, cur = [], []
    for m in mods:
        if isinstance(m, layer.Conv2d) and cur:
            blocks.append(Block(*cur))
            cur = []
        cur.append(m)
    blocks.append(Block(*cur))
    return nn.Sequential(*blocks, *head), Block
