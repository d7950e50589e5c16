"""``edgesnn plan``: plan a model's neurons and batch for a device and print the per-layer table.

    edgesnn plan --model vgg11 --input 3,32,32 --timesteps 8 --batch auto \\
                 --device jetson-orin-nano-8gb [--budget 2GiB] [--json plan.json] [--plot mem.png]
                 [--dataset cifar10 | --dataset-bytes 700MiB] [--eval-batch 256]

The budget holds the runtime, the parameters, gradients and optimizer state, the dataset the
training loop keeps in memory (``--dataset`` knows the built-in ones, ``--dataset-bytes`` gives
custom data's) and the larger of the training step and the evaluation pass at ``--eval-batch``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, TextIO, Tuple

from ..atomic import atomic_write, check_not_inside, check_output, user_path
from ..errors import refuse_empty
from ..output_guard import guarded
from ..memory_guard import human_bytes as _fmt
from ..models import POOLS, check_pool
from ..training.micro_batch import smallest_micro_batch

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Plan

__all__ = ["register", "run", "parse_bytes", "parse_shape"]

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "tb": 1000**4,
          "pib": 1024**5, "pb": 1000**5}


def parse_bytes(text: str, name: str = "--budget", allow_zero: bool = False) -> int:
    """``"2GiB"`` -> 2147483648, ``"1.5GB"`` -> 1500000000, ``"512MiB"``, ``"1000000"`` (bytes).

    Errors name ``name``; 0 is accepted only with ``allow_zero``.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{name}: expected a size like 2GiB, 1.5GB, 512MiB or a byte count, got {text!r}")
    unit, number = _UNITS[m.group(2).lower()], Fraction(m.group(1))  # (exact: no float rounding, no overflow)
    if unit == 1 and number.denominator != 1:  # ("2.5" was read as 2 bytes; 1.3GiB may round down)
        raise ValueError(f"{name}: expected a whole number of bytes (or a unit: 2.5GiB), got {text!r}")
    value = int(number * unit)
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a {'size >= 0' if allow_zero else 'positive size'}, got {text!r}")
    return value


def _positive_int(text: str, name: str, minimum: int = 1) -> int:
    """``text`` as an integer >= ``minimum`` (1: "a positive integer"); errors name ``name`` in one line."""
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}: expected {expected}, got {text!r}")
    return value


def parse_shape(text: str) -> Tuple[int, ...]:
    """``"3,32,32"`` -> (3, 32, 32); errors name ``--input``."""
    try:
        shape = tuple(int(s) for s in str(text).split(","))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"--input: expected comma-separated positive sizes of one sample, e.g. 3,32,32 or 784; got {text!r}")
    return shape


def _int_list(text: str, name: str, minimum: int = 1) -> List[int]:
    """``"128,64"`` -> [128, 64]; every value at least ``minimum`` (errors name ``name``)."""
    try:  # (an empty item, "128," or "2,,4", is an error too: it was dropped, planning another model)
        vals = [int(s) for s in text.split(",")]
    except ValueError:
        vals = []
    if not vals or any(v < minimum for v in vals):
        raise ValueError(f"{name}: expected comma-separated integers >= {minimum}, got {text!r}")
    return vals


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plan`` subcommand to the ``edgesnn`` command line's ``subparsers``."""
    p = subparsers.add_parser("plan", help="plan LIF/RevLIF per layer and the batch for a memory budget",
                              description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--model", help="mlp, convnet or vgg11 (required)")
    p.add_argument("--input", help="one sample's shape, e.g. 3,32,32 or 784 (required)")
    p.add_argument("--timesteps", "-T", help="time steps T (required)")
    p.add_argument("--batch", default="auto", help="batch size, or 'auto' for the largest that fits (default)")
    p.add_argument("--device", type=user_path, default="auto", help="catalogue name (see --list-devices), a JSON profile path, or 'auto' (this host; default)")
    p.add_argument("--budget", help="peak bytes the training process may use, e.g. 2GiB (default: device memory - reserved)")
    p.add_argument("--classes", default=None, help="number of classes (default: the --dataset's, else 10)")
    p.add_argument("--hidden", help="mlp hidden widths (default 128,128)")
    p.add_argument("--channels", help="convnet channel widths (default 16,32)")
    p.add_argument("--pool", default="avg", choices=POOLS, help="the conv models' 2x2 pools: avg (default) or max")
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd", "sgd-momentum"],
                   help="whose state to count (default adam: edgesnn train --plan takes only adam plans)")
    p.add_argument("--neurons", default=None, help="allowed kinds: lif,revlif (default), lif or revlif")
    p.add_argument("--groups", default="2", help="RevLIF group counts to consider, each >= 2, e.g. 2,4 (default 2)")
    p.add_argument("--max-batch", default="1024", help="cap for --batch auto (default 1024)")
    p.add_argument("--backend", default="auto", help="neuron backend the model will train with: auto (default), torch, numba, cuda or reference")
    p.add_argument("--dataset", help="the built-in dataset edgesnn train will hold in memory: digits, cifar10, nmnist, "
                   "dvsgesture or shd (its size is known; event frames are memory-mapped, only labels count)")
    p.add_argument("--dataset-bytes", metavar="SIZE",
                   help="bytes custom data holds in memory for the whole run, e.g. 300MiB (0: streamed); not with --dataset")
    p.add_argument("--eval-batch", default=None,
                   help="batch of the evaluation pass after every epoch (default: edgesnn train's, 256)")
    p.add_argument("--json", type=user_path, metavar="PATH", help="write the plan JSON here (for edgesnn train --plan; with --memopt a report, which "
                        "train --plan refuses)")
    p.add_argument("--plot", type=user_path, metavar="PATH.png", help="plot predicted memory vs T (all-LIF, all-RevLIF, plan, budget); "
                   ".png, .pdf or .svg (needs matplotlib); not with --memopt")
    p.add_argument("--memopt", action="store_true",
                   help="plan edgesnn.optimize_memory's chunked blocks for an all-LIF model: per-block chunk, "
                        "predicted peak, largest batch (whole-network memory)")
    p.add_argument("--list-devices", action="store_true", help="list the device catalogue and exit")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json / --plot file")
    p.set_defaults(func=run)


#: What each optional value flag expects, for the one-line error of an empty ``--flag ""``.
_NONEMPTY = {"--json": "a file path for the plan JSON", "--plot": "a file path ending in .png, .pdf or .svg",
             "--budget": "a size like 2GiB, 1.5GB, 512MiB or a byte count (omit --budget for memory - reserved)",
             "--hidden": "comma-separated integers >= 1, e.g. 128,128", "--channels": "comma-separated integers >= 1, e.g. 16,32"}


def _json_text(doc: dict, flag: str = "--json", indent: int = 2) -> str:
    """``doc`` as JSON text; a value JSON cannot hold (NaN, Infinity) is a one-line error naming ``flag``."""
    return _finite_json(lambda: json.dumps(doc, indent=indent, allow_nan=False) + "\n", flag)


def _finite_json(render: Callable[[], str], flag: str) -> str:
    """``render()``'s JSON text; its ``ValueError`` for a NaN or Infinity becomes one line naming ``flag``."""
    try:
        return render()
    except ValueError:
        raise ValueError(f"{flag}: the plan holds a non-finite number (NaN or Infinity), which JSON cannot hold; "
                         "check the device profile's figures") from None


def check_model_input(model: str, shape: Tuple[int, ...], text: str) -> None:
    """One line naming ``--model`` for an unknown model, or ``--input`` when ``shape`` cannot feed
    ``model``: the conv models take one sample as ``C,H,W`` (3 sizes), ``mlp`` any shape (flattened)."""
    from ..models import MODEL_NAMES

    if model not in MODEL_NAMES:
        raise ValueError(f"--model: expected one of {', '.join(MODEL_NAMES)}, got {model!r}")
    if model != "mlp" and len(shape) != 3:
        raise ValueError(f"--input: model {model!r} takes one sample as C,H,W (3 sizes, e.g. 3,32,32), got {text!r}")


def run(args: argparse.Namespace) -> int:
    """``edgesnn plan``: plan the model for the device and budget, print it, write ``--json`` /
    ``--plot``; returns the exit status (0; bad input raises a one-line error)."""
    from ..models import build_model
    from edgesnn import devices

    from ..training.loop import EVAL_BATCH_SIZE
    from .plan import make_plan, plan_text

    if args.list_devices:
        for name in devices.list_devices():
            print(name)
        return 0
    for flag, val in (("--model", args.model), ("--input", args.input), ("--timesteps", args.timesteps)):
        if val is None:
            raise ValueError(f"{flag} is required (see edgesnn plan --help)")
    shape = parse_shape(args.input)
    check_model_input(args.model, shape, args.input)
    timesteps = _positive_int(args.timesteps, "--timesteps")
    max_batch = _positive_int(args.max_batch, "--max-batch")
    from .datasets import dataset_classes

    classes = dataset_classes(args.dataset, None if args.classes is None else _positive_int(args.classes, "--classes",
                                                                                           minimum=2))
    from ..kernels.dispatch import BACKENDS

    if args.backend not in BACKENDS:
        raise ValueError(f"--backend: expected one of {', '.join(BACKENDS)}, got {args.backend!r}")
    for flag, val in (("--json", args.json), ("--plot", args.plot), ("--budget", args.budget),
                      ("--hidden", args.hidden), ("--channels", args.channels)):
        refuse_empty(val, flag, _NONEMPTY[flag], error=ValueError)
    if args.memopt and args.plot:
        raise ValueError("--plot: draws the LIF / RevLIF plan's memory vs T; not available with --memopt")
    # outputs first: refuse to overwrite before any planning work
    if args.json:
        check_output(args.json, "--json", args.force)
        args.json = guarded(args.json, "--json")  # written only over what it holds now (another run may write it)
    if args.plot:
        check_output(args.plot, "--plot", args.force)
        args.plot = guarded(args.plot, "--plot")
    profile = devices.profile_path(args.device)  # by path or by catalogue name (None: auto)
    if profile is not None:  # --force replaces an output, never the profile read
        for flag, out in (("--json", args.json), ("--plot", args.plot)):
            if out:
                check_not_inside(out, flag, device=profile)
    if args.json and args.plot and Path(args.json).resolve() == Path(args.plot).resolve():
        raise ValueError(f"--plot: {args.plot} is also the --json path; choose two files")
    if args.plot:  # the format and matplotlib before any work: an error after --json was written loses the pair
        from .plot import plot_format, require_matplotlib

        plot_fmt = plot_format(args.plot)
        require_matplotlib()
    if str(args.batch).lower() == "auto":
        batch = None
    else:
        try:
            batch = int(args.batch)
        except ValueError:
            batch = 0
        if batch < 1:
            raise ValueError(f"--batch: expected a positive integer or 'auto', got {args.batch!r}")
    neurons = "lif,revlif" if args.neurons is None else args.neurons
    kinds = [k.strip().lower() for k in neurons.split(",") if k.strip()]
    if not kinds or any(k not in ("lif", "revlif") for k in kinds):
        raise ValueError(f"--neurons: expected lif, revlif or lif,revlif; got {neurons!r}")
    if args.memopt and args.neurons is not None and kinds != ["lif"]:
        raise ValueError("--neurons: --memopt plans an all-LIF model (optimize_memory's blocks); drop --neurons")
    if args.hidden is not None and args.model != "mlp":
        raise ValueError(f"--hidden: the hidden widths of the mlp model; {args.model} has --channels (convnet) or none")
    if args.channels is not None and args.model != "convnet":
        raise ValueError(f"--channels: the channel widths of the convnet model; {args.model} does not take them")
    groups = _int_list(args.groups, "--groups", minimum=2)
    device = devices.load_device(args.device)
    if args.backend == "cuda" and device.accelerator != "cuda":  # the plan would drop the Numba runtime's bytes
        raise ValueError(f"--backend cuda: device {device.name} has no CUDA GPU (accelerator {device.accelerator!r}); "
                         "plan a CUDA board (e.g. --device jetson-orin-nano-8gb) or another --backend")
    budget = parse_bytes(args.budget) if args.budget is not None else None
    if budget is not None and budget > device.memory_bytes:
        raise ValueError(f"--budget: {_fmt(budget)} is more than the memory of device {device.name} "
                         f"({_fmt(device.memory_bytes)}); give at most that, or omit --budget for memory - reserved "
                         f"({_fmt(device.memory_bytes - device.reserved_bytes)})")
    dataset_bytes = None if args.dataset_bytes is None else parse_bytes(args.dataset_bytes, "--dataset-bytes", allow_zero=True)
    eval_batch = EVAL_BATCH_SIZE if args.eval_batch is None else _positive_int(args.eval_batch, "--eval-batch")
    kw = {}
    if args.hidden:
        kw["hidden"] = _int_list(args.hidden, "--hidden")
    if args.channels:
        kw["channels"] = _int_list(args.channels, "--channels")
    check_pool(args.model, args.pool, "--pool")
    _check_host_memory(args, shape, classes, timesteps, kw)
    model = build_model(args.model, shape, classes, timesteps, neuron="lif", node={"backend": args.backend},
                        pool=args.pool, **kw)
    from .plan import check_batchnorm_batch

    check_batchnorm_batch(model, batch, max_batch)  # --batch 1 / --max-batch 1 with BatchNorm: before any planning
    if args.memopt:
        from .memopt_cli import run_memopt

        return run_memopt(args, model, shape, device, budget, batch, dataset_bytes, eval_batch, timesteps, max_batch,
                          classes)
    plan = make_plan(model, device, timesteps, batch, budget, args.optimizer, kinds, groups, max_batch,
                     args.dataset, dataset_bytes, eval_batch)
    # every output is computed before the first is written; the plot is written inside the plan's
    # write, before its rename: a failed plot leaves the plan file as it was (old, or none)
    text = _finite_json(lambda: plan_text(plan), "--json") if args.json else None  # what save_plan writes
    picture = None
    if args.plot:
        from .plot import render_memory_vs_t

        picture = render_memory_vs_t(model, plan, plot_fmt)
    print_plan(plan)

    def write_plot() -> None:
        if picture is not None:
            atomic_write(args.plot, lambda fh: fh.write(picture))

    if text is not None:
        atomic_write(args.json, lambda fh: (fh.write(text), write_plot()), mode="w")
    else:
        write_plot()
    if args.json:
        print(f"plan written to {args.json}")
    if picture is not None:
        print(f"plot written to {args.plot}")
    return 0


def _check_host_memory(args: argparse.Namespace, shape, classes: int, timesteps: int, kw: dict) -> None:
    """Refuse (one line) a model whose parameters this machine cannot hold: the planner builds it
    here (``--memopt`` plans a copy too). Sized on the ``meta`` device, which allocates nothing."""
    import torch

    from ..memory_guard import check_fits_in_memory
    from ..models import build_model

    try:
        with torch.device("meta"):
            meta = build_model(args.model, shape, classes, timesteps, neuron="lif", pool=args.pool, **kw)
    except Exception:  # noqa: BLE001 - the real build below refuses it in its own words
        return
    tensors = [*meta.parameters(), *meta.buffers()]
    nbytes = sum(t.numel() * t.element_size() for t in tensors) * (2 if args.memopt else 1)
    widths = "".join(f" --{k} {','.join(map(str, v))}" for k, v in kw.items())
    check_fits_in_memory(nbytes, f"--model {args.model} --input {args.input}{widths}: the model's "
                         f"{sum(t.numel() for t in tensors)} parameter and buffer values (built on this machine by the "
                         f"planner{', twice: --memopt plans a copy' if args.memopt else ''})",
                         "lower --hidden/--channels or --input")


def print_plan(plan: "Plan", file: Optional[TextIO] = None) -> None:
    """The per-layer table, the batch and the predicted peak (bytes) to ``file`` (default stdout)."""
    out = file or sys.stdout
    d = plan.device
    pr = plan.predicted
    kernels = int(pr.get("runtime_overhead_bytes", d["runtime_overhead_bytes"])) - int(d["runtime_overhead_bytes"])
    numba = f" + Numba kernels {_fmt(kernels)}" if kernels > 0 else ""
    print(f"device: {d['name']} ({_fmt(d['memory_bytes'])}, reserved {_fmt(d['reserved_bytes'])}, runtime overhead "
          f"{_fmt(d['runtime_overhead_bytes'])}{numba}); budget {_fmt(plan.budget_bytes)}", file=out)
    print(f"model: {plan.model.get('name')} input {tuple(plan.model.get('in_shape', ()))}, T={plan.timesteps}, "
          f"batch={plan.batch}", file=out)
    print(f"{'layer':<10} {'neurons':>9} {'choice':<8} {'groups':>6} {'saved bytes':>14}", file=out)
    for L in plan.layers:
        print(f"{L['name']:<10} {L['neurons']:>9} {L['kind']:<8} {L['groups'] or '-':>6} {int(L['saved_bytes']):>14}",
              file=out)
    print(f"{'other':<10} {'':>9} {'fixed':<8} {'-':>6} {int(pr['fixed_activation_bytes']):>14}  "
          "(inputs of conv/linear/BN/pool, loss)", file=out)
    micro, parts = pr.get("micro_batch"), ""
    if micro is not None:  # plans from before --micro-batch have none
        bn = plan.model.get("batchnorm", True)
        least = smallest_micro_batch(bn)  # edgesnn train's smallest --micro-batch
        parts = (f" (a larger batch in parts, edgesnn train --micro-batch: at most {micro} samples per part, every "
                 "parameter gradient then held through the step)" if micro >= least else
                 " (no larger batch fits in parts, edgesnn train --micro-batch: with every parameter gradient held "
                 f"through the step {micro} samples per part fit{f', BatchNorm needs {least}' if bn and micro else ''})")
    print(f"batch: {plan.batch}{parts}", file=out)
    print(_dataset_line(plan.dataset), file=out)
    if "eval_bytes" in pr:
        capped = f" (the test split's {pr['eval_batch']} samples)" if pr["eval_batch"] < plan.eval_batch else ""
        print(f"evaluation: batch {plan.eval_batch}{capped} under no_grad: {_fmt(pr['eval_bytes'])} beside the resident "
              f"memory; training step {_fmt(pr['step_bytes'])}", file=out)
    print(f"predicted: activations {_fmt(pr['activation_bytes'])}, parameters+grads+optimizer {_fmt(pr['static_bytes'])}, "
          f"peak {_fmt(pr['peak_bytes'])} (in {pr['peak_phase']}), node time {pr['time_s'] * 1e3:.1f} ms/step", file=out)
    if "eval_bytes" in pr:
        resident = pr["peak_bytes"] - pr["dataset_bytes"] - max(pr["step_bytes"], pr["eval_bytes"])
        print(f"  peak = resident {_fmt(resident)} (runtime, parameters, optimizer state) + dataset "
              f"{_fmt(pr['dataset_bytes'])} + max(train step {_fmt(pr['step_bytes'])}, eval pass {_fmt(pr['eval_bytes'])})",
              file=out)
    for label, alt in plan.alternatives.items():
        print(f"  {label}: peak {_fmt(alt['peak_bytes'])}, node time {alt['time_s'] * 1e3:.1f} ms/step", file=out)
    for note in plan.notes:
        print(f"  note: {note}", file=out)


def _dataset_line(data: dict) -> str:
    """``dataset: ...`` for the summary: what is counted and how the data is held."""
    if not data or data.get("held") == "none":
        return "dataset: not counted (give --dataset or --dataset-bytes)"
    name = data.get("name") or "custom (--dataset-bytes)"
    if data.get("held") == "mmap":
        return (f"dataset: {name}, frames memory-mapped ({_fmt(data['mapped_bytes'])} of file-backed pages, not counted), "
                f"labels {_fmt(data['bytes'])} in memory")
    return f"dataset: {name}, {_fmt(data['bytes'])} held in memory"


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser(prog="edgesnn")
    register(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args()
    sys.exit(a.func(a))
