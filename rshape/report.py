"""Printed summaries: the eval table at the end of `rshape rl`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct_change(a: float, b: float) -> str:
    return f"{100 * (b - a) / a:+.0f}%" if a else "n/a"


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """Held-out eval at step 0 vs the last step, overall and per difficulty, the final accuracy's 95% interval."""
    first, last = summary["first_eval"], summary["final_eval"]
    k = int(last.get("eval/samples_per_problem") or 1)
    mode = f"avg@{k} sampled" if k > 1 else "greedy"
    n = last.get("eval/problems")
    size = f", {int(n)} problems" if n else ""
    eval_set = summary.get("eval_set", "held-out")
    table = Table(title=f"eval ({mode}, {eval_set}{size}) — step {first.get('step', 0)} → step {summary['steps']}")
    for col in ("split", "accuracy", "final 95% interval", "mean tokens"):
        table.add_column(col, justify="right")
    suffixes = [""] + sorted({k.removeprefix("eval/accuracy") for k in last if k.startswith("eval/accuracy/")})
    for s in suffixes:
        a0, a1 = first.get(f"eval/accuracy{s}"), last.get(f"eval/accuracy{s}")
        l0, l1 = first.get(f"eval/length{s}"), last.get(f"eval/length{s}")
        if a0 is None or a1 is None:
            continue
        lo, hi = last.get(f"eval/accuracy_low{s}"), last.get(f"eval/accuracy_high{s}")
        interval = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "-"
        table.add_row(s.strip("/").replace("difficulty_", "difficulty ") or "all",
                      f"{a0:.3f} → {a1:.3f} ({100 * (a1 - a0):+.1f} pts)", interval,
                      f"{l0:.1f} → {l1:.1f} ({_pct_change(l0, l1)})")
    console.print(table)
    console.print(f"run directory: {summary['run_dir']}")
