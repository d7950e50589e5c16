"""``tools/bench_attention_memory.py`` at toy sizes: every row (edgesnn plain, ``optimize_memory``,
``optimize_memory`` + ``checkpoint_over_time``, and SpikingJelly's when it is installed) trains the
same model to the same gradients, so the benchmark's memory ratios compare equal computations; its
JSON names the baseline and holds each row's ratio to it. The real measurement is not run here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    spec = importlib.util.spec_from_file_location("_bench_attention_memory", TOOLS / "bench_attention_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def tool(monkeypatch):
    threads = torch.get_num_threads()  # the worker sets one PyTorch thread: restored for later tests
    yield _tool(monkeypatch)
    torch.set_num_threads(threads)


def test_every_row_computes_the_same_gradients(tool):
    rows = range(len(tool.ROWS)) if importlib.util.find_spec("spikingjelly") else range(3)
    sums = [tool.worker(r, 3, 2, 8, 2, 1)["grad_abs_sum"] for r in rows]
    assert sums[0] > 0
    for s in sums[1:]:
        assert s == pytest.approx(sums[0], rel=1e-5)


def test_json_names_its_baseline_and_holds_the_printed_ratios(tool, monkeypatch, tmp_path):
    peaks = [300, 200, 60, 600, 400]
    monkeypatch.setattr(tool, "run_fresh", lambda row, T, args: dict(
        row=tool.ROWS[row][0], T=T, batch=args.batch, peak_bytes=peaks[row] << 20, step_s=1.0, grad_abs_sum=1.0))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    out = tmp_path / "attn.json"
    assert tool.main(["-T", "4", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["baseline"] == tool.BASELINE
    base = next(r["peak_bytes"] for r in doc["rows"] if r["row"] == tool.BASELINE)
    for r in doc["rows"]:
        assert r["x_below_baseline"] == pytest.approx(base / r["peak_bytes"])


def test_an_existing_json_is_refused_without_force(tool, tmp_path):
    out = tmp_path / "attn.json"
    out.write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--json", str(out)])
    assert exit_.value.code == 2 and out.read_text() == "{}"
