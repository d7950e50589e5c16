"""A command whose output pipe closes early (``edgesnn plan ... | head -1`` where the reader quits
before the output is written) stops quietly with the shell's 141, as a shell tool does: it printed a
BrokenPipeError traceback and exited 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["plan", "--list-devices"],
                                  ["plan", "--model", "mlp", "--input", "784", "-T", "4", "--device", "raspberry-pi-4-4gb"]])
def test_a_closed_output_pipe_is_a_quiet_stop(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-m", "edgesnn", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, cwd=str(ROOT))
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141, err
    assert err == "", err
