"""Every call of a ``parallel=True`` CPU kernel goes through :func:`launch`.

Numba's ``workqueue`` threading layer is not thread-safe: two Python threads that launch parallel
kernels at the same time end the whole process (SIGABRT, "Numba workqueue threading layer is
terminating: Concurrent access has been detected"). That layer is the remedy the README gives for
forked DataLoader workers (GNU OpenMP is not fork-safe), and a model used from several threads (a
server answering requests, a data thread beside the training loop) launches kernels concurrently.

So, only when the layer Numba actually started is ``workqueue``, :func:`launch` holds one
process-wide lock for each launch: concurrent kernels take turns (each still runs on every Numba
thread) instead of aborting. The ``omp`` and ``tbb`` layers accept concurrent launches and are
called directly. Which case holds is decided once, at the first launch, after Numba's layer has
started (:func:`numba.threading_layer` names it only then; starting it goes through the wrapper of
:func:`edgesnn.kernels.config.configure_threading_layer`). The direct path costs one global read
and a call that returns the kernel: 20-45 ns per launch on the 2-core test VM (``python -m
edgesnn.kernels.launch``), where a parallel kernel's own launch on a tiny input takes 5-10 us; the
locked path about 1.4 us.

A child forked while another thread held the lock gets a fresh, unlocked one. Numba parallel
code of the user's own, launched concurrently with edgesnn's kernels on ``workqueue``, is not
covered by the lock.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..fork_safe_lock import ForkSafeLock

__all__ = ["launch", "serialized"]

_LOCK = ForkSafeLock()  # renewed, unlocked, in a forked child
#: ``None`` until the first launch; then ``True`` when launches are serialized (workqueue layer).
_SERIAL: Optional[bool] = None


def launch(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """What to call for one launch of the ``parallel=True`` Numba ``kernel``: ``launch(kernel)(*args)``.

    ``kernel`` itself, or, when Numba runs its ``workqueue`` layer, a callable that makes the launch
    while holding the process-wide lock (one launch at a time; see the module docstring)."""
    if _SERIAL is False:
        return kernel
    return _checked(kernel)


class _Serialized:
    """``kernel(*args)`` under the process-wide launch lock (the ``workqueue`` layer)."""

    __slots__ = ("kernel",)

    def __init__(self, kernel: Callable[..., Any]) -> None:
        self.kernel = kernel

    def __call__(self, *args: Any) -> Any:
        with _LOCK:
            return self.kernel(*args)


def _checked(kernel: Callable[..., Any]) -> Callable[..., Any]:
    serial = _SERIAL if _SERIAL is not None else _decide()
    return _Serialized(kernel) if serial else kernel


def _decide() -> bool:
    """Start Numba's threading layer (once per process; a layer it cannot start raises edgesnn's
    one-line error and nothing is decided) and record whether launches must be serialized."""
    global _SERIAL
    import numba

    numba.get_num_threads()  # starts the layer if it has not started yet
    _SERIAL = str(numba.threading_layer()) == "workqueue"
    return _SERIAL


def serialized() -> Optional[bool]:
    """Whether kernel launches are serialized (``True`` on ``workqueue``), ``None`` before the first launch."""
    return _SERIAL


def _measure_overhead(calls: int = 200_000) -> float:
    """Nanoseconds :func:`launch` adds per call on its direct path (a 12-argument no-op stand-in
    for a kernel, best of 5 rounds)."""
    import time

    def noop(*args: Any) -> None:
        return None

    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            noop(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
        direct = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(calls):
            launch(noop)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
        best = min(best, (time.perf_counter() - t0 - direct) / calls * 1e9)
    return best


if __name__ == "__main__":  # pragma: no cover - the measurement quoted in the module docstring
    from edgesnn.kernels.config import configure

    configure()
    _decide()
    print(f"threading layer {__import__('numba').threading_layer()}, serialized={_SERIAL}: "
          f"launch adds {_measure_overhead():.0f} ns per call")
