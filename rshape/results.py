"""Sweep results: one row per setting, mean ± std over seeds, the best setting marked.

Per trial (a finished run directory) the numbers are:

    accuracy      final greedy eval accuracy            summary.json final_eval["eval/accuracy"]
    tokens        final eval mean completion tokens     final_eval["eval/length"]
    truncation    final eval truncation rate            final_eval["eval/truncation"]
    reward        mean training reward/total over the final window: the last 10% of steps (at least one)
    accuracy_dN   final eval accuracy on difficulty N   final_eval["eval/accuracy/difficulty_N"]
    tokens_dN     final eval mean tokens on difficulty N

A setting's row holds the mean and the sample standard deviation (n − 1) over its finished seeds. The
best setting has the highest mean of `rank_by` (default `accuracy`; ties go to fewer mean tokens);
`tokens` and `truncation` rank lowest-first, everything else highest-first, and a `min:` or `max:`
prefix (e.g. `min:tokens_d4`) says the direction explicitly.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINAL_WINDOW = 0.1  # the reward column averages reward/total over this last fraction of the steps
LOWER_IS_BETTER = ("tokens", "truncation")
SEED_SUFFIX = re.compile(r"(^|[,_-])seed[=_-]?(\d+)$")


class ResultsError(Exception):
    """A directory that holds no runs, or an unknown ranking column."""


@dataclass
class RunInfo:
    """One run directory and where it belongs: its setting (a group of seeds), seed and axis labels."""

    name: str
    run_dir: Path
    setting: str
    seed: int | None = None
    status: str = "done"
    labels: dict[str, str] = field(default_factory=dict)  # axis key → label
    error: str | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Like rshape.runs.read_jsonl, without importing torch; a torn last line (a run still writing) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _recipe_seed(run_dir: Path) -> int | None:
    f = run_dir / "recipe.yaml"
    if not f.is_file():
        return None
    import yaml

    try:
        return (yaml.safe_load(f.read_text()) or {}).get("seed")
    except yaml.YAMLError:
        return None


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "summary.json").is_file()


def find_runs(path: str | Path) -> list[RunInfo]:
    """The runs under `path`: the run itself, a sweep's trials (from trials.json), or any run directories below."""
    root = Path(path)
    if not root.is_dir():
        raise ResultsError(f"{root}: no such directory")
    if is_run_dir(root):
        status = "done" if (root / "summary.json").is_file() else "unfinished"
        return [RunInfo(root.name, root, root.name, _recipe_seed(root), status)]
    state = _read_json(root / "trials.json")
    if isinstance(state, dict) and state.get("trials"):
        return [RunInfo(r["name"], root / r.get("run_dir", r["name"]), r.get("setting", r["name"]), r.get("seed"),
                        r.get("status", "pending"), dict(r.get("axes") or {}), r.get("error"))
                for r in state["trials"]]
    runs = []
    for metrics in sorted(root.glob("*/metrics.jsonl")) + sorted(root.glob("*/*/metrics.jsonl")):
        d = metrics.parent
        name = str(d.relative_to(root))
        setting = SEED_SUFFIX.sub("", name) or name
        status = "done" if (d / "summary.json").is_file() else "unfinished"
        runs.append(RunInfo(name, d, setting, _recipe_seed(d), status))
    if not runs:
        raise ResultsError(f"{root}: no run directories (metrics.jsonl) and no trials.json found")
    return runs


def final_eval(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(first eval, final eval) from summary.json, else from eval.jsonl."""
    summary = _read_json(run_dir / "summary.json")
    if isinstance(summary, dict) and summary.get("final_eval"):
        return summary.get("first_eval"), summary["final_eval"]
    evals = read_jsonl(run_dir / "eval.jsonl")
    return (evals[0], evals[-1]) if evals else (None, None)


def final_window(records: list[dict[str, Any]], fraction: float = FINAL_WINDOW) -> list[dict[str, Any]]:
    """The last `fraction` of the step records (at least one)."""
    steps = [r for r in records if "step" in r]
    if not steps:
        return []
    n = max(1, math.ceil(fraction * len(steps)))
    return steps[-n:]


def run_metrics(run_dir: Path) -> dict[str, float]:
    """The results columns of one run (missing ones are left out)."""
    _, last = final_eval(run_dir)
    out: dict[str, float] = {}
    if last:
        for col, key in (("accuracy", "eval/accuracy"), ("tokens", "eval/length"), ("truncation", "eval/truncation")):
            if last.get(key) is not None:
                out[col] = float(last[key])
        for key, v in last.items():
            m = re.fullmatch(r"eval/(accuracy|length)/difficulty_(\w+)", key)
            if m and v is not None:
                out[f"{'accuracy' if m[1] == 'accuracy' else 'tokens'}_d{m[2]}"] = float(v)
    window = [r["reward/total"] for r in final_window(read_jsonl(run_dir / "metrics.jsonl"))
              if r.get("reward/total") is not None]
    if window:
        out["reward"] = sum(window) / len(window)
    return out


def mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _difficulty_sort(col: str) -> tuple[int, Any]:
    d = col.split("_d", 1)[1]
    return (0, int(d)) if d.isdigit() else (1, d)


def metric_columns(rows: list[dict[str, float]]) -> list[str]:
    seen = set().union(*[r.keys() for r in rows]) if rows else set()
    cols = [c for c in ("accuracy", "tokens", "reward", "truncation") if c in seen]
    cols += sorted((c for c in seen if c.startswith("accuracy_d")), key=_difficulty_sort)
    cols += sorted((c for c in seen if c.startswith("tokens_d")), key=_difficulty_sort)
    return cols


RANK_PATTERN = re.compile(r"((min|max):)?(accuracy|tokens|reward|truncation|(accuracy|tokens)_d\w+)")


def check_rank_by(rank_by: str) -> str | None:
    """An error message when `rank_by` cannot name a results column, else None."""
    if RANK_PATTERN.fullmatch(rank_by):
        return None
    return (f"unknown ranking column {rank_by!r}; valid: accuracy, tokens, reward, truncation, accuracy_dN, "
            "tokens_dN, optionally prefixed min: or max:")


def parse_rank(rank_by: str, columns: list[str]) -> tuple[str, bool]:
    """`accuracy` → ('accuracy', higher is better); `min:tokens_d4` → ('tokens_d4', False)."""
    direction = None
    col = rank_by
    if ":" in rank_by:
        direction, _, col = rank_by.partition(":")
        if direction not in ("min", "max"):
            raise ResultsError(f"rank_by {rank_by!r}: the prefix is min: or max:")
    if col not in columns:
        raise ResultsError(f"rank_by {rank_by!r}: unknown column; valid: {', '.join(columns)}")
    if direction is None:
        return col, not col.startswith(LOWER_IS_BETTER)
    return col, direction == "max"


@dataclass
class SettingRow:
    setting: str
    labels: dict[str, str]
    n_done: int
    n_trials: int
    stats: dict[str, tuple[float | None, float | None]]
    runs: list[RunInfo]
    best: bool = False


def aggregate(runs: list[RunInfo], rank_by: str = "accuracy") -> tuple[list[SettingRow], list[str], str, bool]:
    """Rows per setting (in first-seen order), the metric columns, and the ranking column and direction."""
    per_run = {r.name: run_metrics(r.run_dir) for r in runs if r.status == "done"}
    columns = metric_columns(list(per_run.values()))
    order: dict[str, list[RunInfo]] = {}
    for r in runs:
        order.setdefault(r.setting, []).append(r)
    rows = []
    for setting, members in order.items():
        done = [per_run[m.name] for m in members if m.name in per_run]
        stats = {c: mean_std([d[c] for d in done if c in d]) for c in columns}
        rows.append(SettingRow(setting, members[0].labels, len(done), len(members), stats, members))
    if not columns:
        return rows, columns, rank_by, True
    col, higher = parse_rank(rank_by, columns)
    ranked = [r for r in rows if r.stats[col][0] is not None]
    if ranked:
        def key(r: SettingRow) -> tuple[float, float]:
            v = r.stats[col][0]
            tok = r.stats.get("tokens", (None, None))[0]
            return (-v if higher else v, tok if tok is not None else math.inf)

        min(ranked, key=key).best = True
    return rows, columns, col, higher


def _fmt(col: str, v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.1f}" if col.startswith("tokens") else f"{v:.3f}"


HEADERS = {"accuracy": "accuracy", "tokens": "mean tokens", "reward": "reward (final 10%)", "truncation": "truncation"}


def _header(col: str) -> str:
    if col in HEADERS:
        return HEADERS[col]
    kind, _, d = col.partition("_d")
    return f"{'acc' if kind == 'accuracy' else 'tokens'} d{d}"


def write_results(path: str | Path, rank_by: str = "accuracy", out: str | Path | None = None) -> tuple[Path, Path]:
    """results.csv and results.md in `out` (default: the sweep directory)."""
    root = Path(path)
    runs = find_runs(root)
    rows, columns, col, higher = aggregate(runs, rank_by)
    out_dir = Path(out) if out else root
    out_dir.mkdir(parents=True, exist_ok=True)
    axis_keys = list(dict.fromkeys(k for r in rows for k in r.labels))

    csv_path = out_dir / "results.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", *axis_keys, "seeds_done", "seeds", *[f"{c}_{s}" for c in columns for s in ("mean", "std")],
                    "best"])
        for r in rows:
            w.writerow([r.setting, *[r.labels.get(k, "") for k in axis_keys], r.n_done, r.n_trials,
                        *["" if r.stats[c][i] is None else f"{r.stats[c][i]:.6g}" for c in columns for i in (0, 1)],
                        int(r.best)])

    shown = [c for c in columns if not c.startswith("tokens_d")]
    lines = [f"# Results: {root}", "",
             "Final greedy evaluation on the held-out split; mean ± std (sample std) over the seeds that finished; "
             "reward = mean `reward/total` over the last 10% of training steps.",
             f"★ best setting: {'highest' if higher else 'lowest'} mean `{col}`"
             + (" (ties: fewer mean tokens)." if col != "tokens" else "."), "",
             "| setting | seeds | " + " | ".join(_header(c) for c in shown) + " |",
             "|---|---:|" + "---:|" * len(shown)]
    for r in rows:
        cells = []
        for c in shown:
            m, s = r.stats[c]
            cell = "—" if m is None else _fmt(c, m) + (f" ± {_fmt(c, s)}" if s is not None else "")
            cells.append(f"**{cell}**" if r.best and c == col else cell)
        name = f"★ **{r.setting}**" if r.best else r.setting
        lines.append(f"| {name} | {r.n_done}/{r.n_trials} | " + " | ".join(cells) + " |")
    failed = [run for r in rows for run in r.runs if run.status != "done"]
    if failed:
        lines += ["", "Not finished:", ""]
        lines += [f"- `{run.name}`: {run.status}" + (f" — {run.error}" if run.error else "") for run in failed]
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
