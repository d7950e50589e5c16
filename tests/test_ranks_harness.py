"""tests/_ranks.run_ranks: a rank that stalls or raises fails the test in bounded time, with its stack."""

import time

import pytest

from _ranks import run_ranks


def _stall(rank: int, seconds: float) -> None:
    if rank == 1:
        time.sleep(seconds)  # a collective without its peer, as far as the parent can tell


def _raise(rank: int) -> None:
    if rank == 0:
        raise RuntimeError("rank 0 broke")


def test_a_stalled_rank_prints_its_stack_and_fails_in_bounded_time(capfd):
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"exit codes \{1: 1\}"):
        run_ranks(_stall, (600.0,), timeout=3.0)
    assert time.monotonic() - t0 < 60
    assert "_stall" in capfd.readouterr().err  # faulthandler's dump names the stalled frame


def test_a_raising_rank_fails_with_its_traceback(capfd):
    with pytest.raises(AssertionError, match=r"exit codes \{0: 1\}"):
        run_ranks(_raise)
    assert "RuntimeError: rank 0 broke" in capfd.readouterr().err


def test_ranks_that_return_pass():
    run_ranks(_stall, (0.0,))
