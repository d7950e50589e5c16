"""``edgesnn warmup --jobs N`` stopped by a signal while its compile processes work.

* ``kill <warmup pid>`` (SIGTERM: a service manager, ``subprocess.terminate``, a CI step's timeout)
  ended the warm-up process but not its compile processes: they finished their parts and then
  waited forever for more work, each holding ~0.5 GB (measured 450 MB RSS each, still there minutes
  later), on a small board until the next reboot.
* Ctrl-C waited for the parts already handed out to finish (37 s on the 2-core VM when the SIGINT
  reached only the warm-up process; a terminal's Ctrl-C interrupted the compile processes too,
  which then took the next part, and printed their own tracebacks when hit while starting).

The compile processes here run a stand-in part that sleeps (``_SLOW_PART``), so nothing compiles.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and /proc: Linux")

_SLOW_PART = """
import os, time

def part(name, folder):
    with open(os.path.join(folder, "pid-" + name), "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(60)
    return name
"""

_DRIVER = """
import sys
import warnings

if __name__ == "__main__":
    import slowpart
    from edgesnn.kernels import cli as kcli
    from edgesnn.cli import main

    kcli._compile_part = slowpart.part
    kcli._cache_filled = lambda folder: False
    warnings.filterwarnings("error", message="edgesnn warmup: a compile process died")  # never compile here
    sys.exit(main(["warmup", "--jobs", "2", "--cache-dir", sys.argv[1]]))
"""


def _alive(pid: int) -> bool:
    """``pid`` is a running process (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start(tmp_path: Path) -> subprocess.Popen:
    """``edgesnn warmup --jobs 2`` with the stand-in part, in a session of its own."""
    (tmp_path / "slowpart.py").write_text(_SLOW_PART)
    (tmp_path / "driver.py").write_text(_DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("EDGESNN_CACHE_DIR", None)
    return subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "cache")], cwd=str(tmp_path),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _workers(tmp_path: Path, proc: subprocess.Popen) -> List[int]:
    """The pids of the two compile processes, once both run their part."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        files = list((tmp_path / "cache").rglob("pid-*"))
        if len(files) == 2 and all(f.read_text() for f in files):
            return [int(f.read_text()) for f in files]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("the compile processes did not start")


def _kill_all(proc: subprocess.Popen, pids: List[int]) -> None:
    for pid in [proc.pid] + pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


def _wait_dead(pids: List[int], seconds: float) -> List[int]:
    """The ``pids`` still running after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_sigterm_to_warmup_ends_its_compile_processes(tmp_path):
    proc = _start(tmp_path)
    pids: List[int] = []
    try:
        pids = _workers(tmp_path, proc)
        os.kill(proc.pid, signal.SIGTERM)  # the warm-up process only, as `kill PID` does
        proc.wait(timeout=30)
        assert _wait_dead(pids, 10) == [], "compile processes outlived the warm-up process"
    finally:
        _kill_all(proc, pids)


@pytest.mark.parametrize("to_group", [True, False], ids=["terminal-ctrl-c", "sigint-to-warmup-only"])
def test_ctrl_c_stops_warmup_at_once_in_one_line(tmp_path, to_group):
    proc = _start(tmp_path)
    pids: List[int] = []
    try:
        pids = _workers(tmp_path, proc)
        t0 = time.monotonic()
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("warmup still running 20 s after Ctrl-C (it waits for the parts handed out)")
        assert time.monotonic() - t0 < 20
        assert proc.returncode == 130, err
        assert err.strip() == "edgesnn warmup: interrupted", err
        assert _wait_dead(pids, 10) == []
    finally:
        _kill_all(proc, pids)
