"""The ratios ``bench_network_memory.py`` prints after its table and stores in its JSON, derived
from the measured peaks: each row against SpikingJelly memopt at the same T, and each row's peak
growth over T. A sibling module of the tool (imported with the tools folder on ``sys.path``)."""

from __future__ import annotations

from typing import Sequence

__all__ = ["ratio_lines"]


def ratio_lines(results: list, rows: Sequence[str], Ts: Sequence[int], labels: dict) -> tuple:
    """The ratios printed after the table (and stored in ``results``): each row's peak against
    SpikingJelly memopt at the same T, when that row ran; each row's peak growth from the smallest
    to the largest T, when several ran. ``results``: the worker rows (``row``, ``T``,
    ``peak_bytes``: bytes); ``rows``: the row names in print order; ``Ts``: the time steps, ascending;
    ``labels``: the printed name of each row. Returns ``(lines, growth)``."""
    lines, growth = [], {}
    ok = {(r["row"], r["T"]): r for r in results if "error" not in r}
    memopt = {T: ok[("sj_memopt", T)] for T in Ts if ("sj_memopt", T) in ok}
    if memopt:
        lines.append(f"peak vs {labels['sj_memopt']} at the same T:")
        for row in rows:
            if row in ("sj_bptt", "sj_memopt"):
                continue
            cells = []
            for T in Ts:
                r = ok.get((row, T))
                if r is not None and T in memopt and r["peak_bytes"] > 0:
                    r["peak_x_less_than_sj_memopt"] = memopt[T]["peak_bytes"] / r["peak_bytes"]
                    cells.append(f"T={T} {r['peak_x_less_than_sj_memopt']:.1f}x less")
            if cells:
                lines.append(f"  {labels[row]}: " + ", ".join(cells))
    if len(Ts) >= 2:
        lo, hi = Ts[0], Ts[-1]
        head = f"peak growth from T={lo} to T={hi} ({hi / lo:.1f}x the steps):"
        for row in rows:
            a, b = ok.get((row, lo)), ok.get((row, hi))
            if a is None or b is None or a["peak_bytes"] <= 0:
                continue
            growth[row] = {"from_T": lo, "to_T": hi, "from_bytes": a["peak_bytes"], "to_bytes": b["peak_bytes"],
                           "x": b["peak_bytes"] / a["peak_bytes"]}
            if head:
                lines.append(head)
                head = None
            lines.append(f"  {labels[row]}: {a['peak_bytes'] / 2**20:.0f} -> {b['peak_bytes'] / 2**20:.0f} MiB, "
                         f"{growth[row]['x']:.1f}x")
    return lines, growth
