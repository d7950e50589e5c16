"""Shared by the planner tests that compare a prediction with peak RSS measured in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Tuple

import pytest


def measured_and_predicted(script: str, timeout: int = 300) -> Tuple[int, int]:
    """Run ``script`` (Python source) in a fresh interpreter and return the ``[measured, predicted]``
    bytes it prints as JSON on its last line. A fresh process, because earlier tests leave freed
    heap a measured pass would reuse unseen. Skips where VmHWM cannot be read or reset, or where
    glibc's ``mallopt`` is missing (the script prints ``null``)."""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        if "clear_refs" in proc.stderr or "VmHWM" in proc.stderr:
            pytest.skip("cannot read or reset VmHWM here")
        raise AssertionError(proc.stderr[-2000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res is None:
        pytest.skip("needs glibc's mallopt (freed tensors returned to the OS)")
    return res[0], res[1]
