"""Run a test's ranks in spawned processes that cannot hang the suite.

``torch.multiprocessing.spawn(..., join=True)`` waits without a limit: a rank that never returns
(a collective without its peer) or never exits (stuck in the interpreter's shutdown while gloo's
native threads still run) stops the whole test run; CI once sat in such a test until its
90-minute limit, with nothing printed. :func:`run_ranks` instead

* arms ``faulthandler`` in every rank: past ``timeout`` seconds the rank prints every thread's
  stack to the test's captured stderr and exits with code 1;
* ends a rank whose ``target`` returned with ``os._exit(0)`` after flushing its output: these
  ranks check what training computes, so they skip the interpreter's teardown (atexit handlers,
  module finalisation beside native threads). How a real rank leaves the group and exits is
  tested through the CLI (``tests/test_resume_and_ranks.py``, ``tests/test_ddp.py``'s torchrun
  test), which keep the normal exit;
* kills what is still alive after the deadline and fails the test in one line naming the rank;
* leaves the process group to ``os._exit``: ``torch.distributed.destroy_process_group`` is a no-op
  inside these ranks. On torch 2.5.1 a rank hung inside it after a successful run (CI, once in
  three full runs: faulthandler showed rank 1 in ``destroy_process_group()`` and gloo's native
  thread, 5 minutes after ``train`` returned past its final barrier); ending the process closes
  the sockets without that handshake. The CLI rank tests keep the real call.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import traceback
from typing import Callable, Sequence

import torch.multiprocessing as mp


def _rank_main(rank: int, target: Callable, args: Sequence, timeout: float) -> None:
    import torch.distributed as dist

    faulthandler.enable(all_threads=True)
    faulthandler.dump_traceback_later(timeout, exit=True)
    dist.destroy_process_group = lambda *a, **k: None  # the group ends with the process (module docstring)
    code = 0
    try:
        target(rank, *args)
    except BaseException:  # the parent sees the exit code; the traceback goes to the captured stderr
        traceback.print_exc()
        code = 1
    finally:
        faulthandler.cancel_dump_traceback_later()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_ranks(target: Callable, args: Sequence = (), world: int = 2, timeout: float = 300.0) -> None:
    """Run ``target(rank, *args)`` for rank 0 .. world-1 in spawned processes; fail past ``timeout`` s."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, target, tuple(args), timeout)) for r in range(world)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout + 30.0)  # the rank's own faulthandler deadline fires first
    finally:
        stuck = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10.0)
    assert not stuck, f"rank(s) {stuck} still running after {timeout + 30.0:.0f} s; killed"
    failed = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode != 0}
    assert not failed, f"rank(s) ended with exit codes {failed} (a traceback or the ranks' stacks are in the captured stderr)"
