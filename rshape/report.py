"""Printed summaries: the eval table at the end of `rshape rl`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct_change(a: float, b: float) -> str:
    return f"{100 * (b - a) / a:+.0f}%" if a else "n/a"


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """Greedy eval at step 0 vs the last step, overall and per difficulty."""
    first, last = summary["first_eval"], summary["final_eval"]
    table = Table(title=f"eval (greedy, held-out) — step {first.get('step', 0)} → step {summary['steps']}")
    for col in ("split", "accuracy", "mean tokens"):
        table.add_column(col, justify="right")
    suffixes = [""] + sorted({k.removeprefix("eval/accuracy") for k in last if k.startswith("eval/accuracy/")})
    for s in suffixes:
        a0, a1 = first.get(f"eval/accuracy{s}"), last.get(f"eval/accuracy{s}")
        l0, l1 = first.get(f"eval/length{s}"), last.get(f"eval/length{s}")
        if a0 is None or a1 is None:
            continue
        table.add_row(s.strip("/").replace("difficulty_", "difficulty ") or "all",
                      f"{a0:.3f} → {a1:.3f} ({100 * (a1 - a0):+.1f} pts)", f"{l0:.1f} → {l1:.1f} ({_pct_change(l0, l1)})")
    console.print(table)
    console.print(f"run directory: {summary['run_dir']}")
