"""The memory checks of ``bench_device_runner.py``'s sweep: the onnx-step runner's peak RSS growth
over T (RevLIF's against LIF's) and the onnx-step runner against the onnx-training one at the
largest T, as printable lines with their raw figures (for the JSON)."""

from __future__ import annotations

from typing import Optional

__all__ = ["MIN_LIF_GROWTH_MB", "sweep_checks"]

#: The growth check compares RevLIF's growth with LIF's only when LIF grew at least this much (MiB):
#: below it the ratio is RSS noise (it passed when neither grew).
MIN_LIF_GROWTH_MB = 2.0


def sweep_checks(rows: list, figures: Optional[list] = None) -> list:
    """The two memory checks per model, as printable lines (and a pass flag: ``None`` when the
    check could not be made, e.g. the growth check with one T). ``figures``, when given, receives
    one dict per check with its raw figures, ratio, target and baseline (for the JSON)."""
    out = []
    figures = [] if figures is None else figures
    by = {(r["model"], r["neuron"], r["T"]): r for r in rows}
    for name in sorted({r["model"] for r in rows}):
        Ts = sorted({r["T"] for r in rows if r["model"] == name})
        lo, hi = Ts[0], Ts[-1]
        if len(Ts) < 2:
            out.append((None, f"{name}: onnx-step peak RSS growth over T: not checked (needs two or more --timesteps, "
                              f"got T {lo})"))
            figures.append({"check": "growth", "model": name, "passed": None, "reason": "one T only", "T": [lo]})
        else:
            try:
                g_lif = by[(name, "lif", hi)]["onnx_step"]["peak_rss_mb"] - by[(name, "lif", lo)]["onnx_step"]["peak_rss_mb"]
                g_rev = by[(name, "revlif", hi)]["onnx_step"]["peak_rss_mb"] - by[(name, "revlif", lo)]["onnx_step"]["peak_rss_mb"]
            except KeyError:
                g_lif = None
            if g_lif is not None and g_lif < MIN_LIF_GROWTH_MB:
                # nothing to compare against: a ratio would pass on RSS noise (RevLIF "did not grow" either)
                out.append((None, f"{name}: onnx-step peak RSS growth T {lo} -> {hi}: not checked: LIF grew "
                                  f"{g_lif:+.1f} MiB (< {MIN_LIF_GROWTH_MB} MiB: RSS noise; widen --timesteps), "
                                  f"RevLIF {g_rev:+.1f} MiB"))
                figures.append({"check": "growth", "model": name, "passed": None, "T": [lo, hi],
                                "reason": f"LIF grew less than {MIN_LIF_GROWTH_MB} MiB",
                                "lif_growth_mb": g_lif, "revlif_growth_mb": g_rev})
            elif g_lif is not None:
                ratio = g_lif / g_rev if g_rev > 0 else float("inf")
                how = f"LIF/RevLIF {ratio:.1f}x" if g_rev > 0 else "RevLIF did not grow"
                out.append((ratio >= 4.0, f"{name}: onnx-step peak RSS growth T {lo} -> {hi}: LIF {g_lif:+.1f} MiB, RevLIF {g_rev:+.1f} MiB "
                                          f"({how}; target >= 4x)"))
                figures.append({"check": "growth", "model": name, "passed": ratio >= 4.0, "T": [lo, hi],
                                "lif_growth_mb": g_lif, "revlif_growth_mb": g_rev, "baseline": "LIF growth",
                                "lif_over_revlif": ratio if g_rev > 0 else None, "target_at_least": 4.0})
        r = by.get((name, "revlif", hi), {})
        if r.get("onnx_training"):
            a, b = r["onnx_step"]["peak_rss_mb"], r["onnx_training"]["peak_rss_mb"]
            out.append((a <= 0.5 * b, f"{name}: RevLIF T={hi}: onnx-step {a:.1f} MiB vs onnx-training {b:.1f} MiB "
                                      f"({a / b:.2f}x; target <= 0.5x)"))
            figures.append({"check": "step_vs_training", "model": name, "passed": a <= 0.5 * b, "T": hi,
                            "onnx_step_peak_rss_mb": a, "onnx_training_peak_rss_mb": b, "baseline": "onnx-training",
                            "step_over_training": a / b, "target_at_most": 0.5})
    return out
