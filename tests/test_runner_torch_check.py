"""The step runner's torch-free check names what the run itself imported: called from a process that had
loaded torch before (right after an export in the same script), ``finetune`` trained every epoch, wrote its
outputs and then raised "['torch', ...] were imported during fine-tuning"."""

from __future__ import annotations

import sys
import types

import pytest

from _step_compare import small_runner_case
from test_export_common import needs_onnx_runtime


@needs_onnx_runtime
def test_a_callers_torch_is_not_the_runs_import(tmp_path, monkeypatch):
    from edgesnn.export.runner import finetune

    assert "torch" in sys.modules  # (pytest's process: loaded before the run)
    case = small_runner_case(tmp_path, "lif", 24)
    metrics = finetune(case / "art", case / "data.npz", 1, out_dir=tmp_path / "ft", threads=1, log=lambda s: None)
    assert metrics["forbidden_modules"] == [] and metrics["torch_imported"] is True
    assert (tmp_path / "ft" / "params.npz").is_file()

    from edgesnn.export import step_runner

    real = step_runner.import_plain_ort

    def imports_during_the_run():  # (a module the run itself loads: still refused)
        sys.modules.setdefault("torch._loaded_by_the_run", types.ModuleType("torch._loaded_by_the_run"))
        return real()

    monkeypatch.setattr(step_runner, "import_plain_ort", imports_during_the_run)
    try:
        with pytest.raises(RuntimeError, match=r"\['torch\._loaded_by_the_run'\] were imported during fine-tuning"):
            finetune(case / "art", case / "data.npz", 1, out_dir=tmp_path / "ft2", threads=1, log=lambda s: None)
    finally:
        sys.modules.pop("torch._loaded_by_the_run", None)
