"""`rshape plot DIR`: the figures of a run or a sweep, PNG (150 dpi) and PDF, in one style.

    curves         reward total and components, accuracy, mean length, truncation rate per step: the mean
                   over seeds with a 95% confidence band (t-based), one colour per setting; the budget
                   schedule (`schedule/budget`) dashed over the length panel when a curriculum is set
    length_budget  mean length against the budget schedule (only when a run logs schedule/budget)
    pareto         final eval accuracy against final eval mean tokens per setting (± 95% CI, seeds faint),
                   the accuracy–tokens Pareto front drawn, the step-0 policy marked
    length_hist    completion lengths of correct vs wrong samples, first vs last 20% of training steps
    difficulty     final eval accuracy and mean tokens per difficulty bucket, step 0 in grey

Runs are grouped by setting (the seeds of one sweep setting), or by one axis with `group_by`. Only
finished runs are drawn once any has finished (a sweep still running plots its partial runs until then).
Figures have fixed sizes (no tight bounding box), so a PNG is exactly width × height × 150 pixels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycler import cycler

from rshape.results import ResultsError, RunInfo, final_eval, find_runs, read_jsonl

DPI = 150
FORMATS = ("png", "pdf")
# Okabe–Ito: distinguishable for colour-blind readers and in greyscale print.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
CORRECT, WRONG, START = "#009E73", "#D55E00", "#9a9a9a"
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.prop_cycle": cycler(color=PALETTE),
    "lines.linewidth": 1.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text for journals
    "ps.fonttype": 42,
}
DEFAULT_CURVES = ["reward/total", "<components>", "accuracy", "length/mean", "truncation_rate"]
TITLES = {"reward/total": "reward (total)", "accuracy": "training accuracy", "length/mean": "mean length (tokens)",
          "truncation_rate": "truncation rate", "eval/accuracy": "eval accuracy", "eval/length": "eval mean tokens"}
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (beyond: 1.96).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


class PlotError(Exception):
    """A directory without runs, an unknown metric or axis."""


@contextlib.contextmanager
def style() -> Iterator[Any]:
    """The one style of every rshape figure (Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        yield plt


# --------------------------------------------------------------------------- data


@dataclass
class Run:
    info: RunInfo
    group: str
    metrics: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    first_eval: dict[str, Any] | None
    final_eval: dict[str, Any] | None


@dataclass
class Group:
    name: str
    color: str
    runs: list[Run] = field(default_factory=list)


def _label_from_recipe(run_dir: Path, key: str) -> str | None:
    import yaml

    from rshape.sweep import value_label

    f = run_dir / "recipe.yaml"
    if not f.is_file():
        return None
    node: Any = yaml.safe_load(f.read_text()) or {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return value_label(node)


def group_label(info: RunInfo, group_by: str | None) -> str | None:
    """The group of a run: its setting, or its value of one axis (a sweep axis, its short name, or any recipe key)."""
    if not group_by:
        return info.setting
    if group_by in info.labels:
        return info.labels[group_by]
    for key, label in info.labels.items():
        if key.endswith("." + group_by):
            return label
    return _label_from_recipe(info.run_dir, group_by)


def load(path: str | Path, group_by: str | None = None) -> list[Group]:
    """Every run with metrics under `path`, grouped (by setting unless `group_by` names an axis)."""
    try:
        infos = find_runs(path)
    except ResultsError as exc:
        raise PlotError(str(exc)) from None
    if any(i.status == "done" for i in infos):  # unfinished runs only when nothing has finished yet
        infos = [i for i in infos if i.status == "done"]
    groups: dict[str, Group] = {}
    for info in infos:
        metrics = read_jsonl(info.run_dir / "metrics.jsonl")
        if not metrics:
            continue
        label = group_label(info, group_by)
        if label is None:
            raise PlotError(f"--group-by {group_by}: not an axis of this sweep nor a key of {info.run_dir}/recipe.yaml")
        first, last = final_eval(info.run_dir) if info.status == "done" else (None, None)
        evals = read_jsonl(info.run_dir / "eval.jsonl")
        if first is None and evals:
            first = evals[0]
        run = Run(info, label, [m for m in metrics if "step" in m], evals,
                  read_jsonl(info.run_dir / "samples.jsonl"), first, last)
        groups.setdefault(label, Group(label, PALETTE[len(groups) % len(PALETTE)])).runs.append(run)
    if not groups:
        raise PlotError(f"{path}: no run with metrics.jsonl yet")
    return list(groups.values())


def t975(n: int) -> float:
    return T975[n - 2] if 2 <= n <= len(T975) + 1 else 1.96


def mean_ci(values: list[float], kind: str = "ci95") -> tuple[float, float]:
    """Mean and the half-width of its band: `ci95` = t(0.975, n−1)·sem, `sem` = 1.96·sem (0 for one value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, (t975(n) if kind == "ci95" else 1.96) * sd / math.sqrt(n)


def smooth(xs: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    if window <= 1:
        return list(xs)
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= window:
            acc -= xs[i - window]
        out.append(acc / min(i + 1, window))
    return out


def series(run: Run, key: str) -> tuple[list[int], list[float]]:
    rows = run.evals if key.startswith("eval/") else run.metrics
    pts = [(r["step"], float(r[key])) for r in rows if r.get(key) is not None and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def band(group: Group, key: str, window: int, kind: str = "ci95"
         ) -> tuple[list[int], list[float], list[float], list[float]] | None:
    """Steps, mean over seeds, band half-width, and every seed's value (each seed smoothed first)."""
    by_step: dict[int, list[float]] = {}
    for run in group.runs:
        steps, ys = series(run, key)
        for s, y in zip(steps, smooth(ys, 1 if key.startswith("eval/") else window)):
            by_step.setdefault(s, []).append(y)
    if not by_step:
        return None
    steps = sorted(by_step)
    stats = [mean_ci(by_step[s], kind) for s in steps]
    return steps, [m for m, _ in stats], [h for _, h in stats], [v for s in steps for v in by_step[s]]


def _draw_bands(ax: Any, groups: list[Group], key: str, window: int, kind: str) -> None:
    """Mean curve and band per group. The y range follows the seeds' own values, not the bands: with two
    seeds a t-based 95% band is ±9 standard deviations and would flatten every curve."""
    seen: list[float] = []
    for g in groups:
        b = band(g, key, window, kind)
        if b is None:
            continue
        steps, mean, half, values = b
        ax.plot(steps, mean, color=g.color, marker="o" if key.startswith("eval/") else None, ms=3)
        ax.fill_between(steps, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                        color=g.color, alpha=0.18, lw=0)
        seen += values
    if seen:
        lo, hi = min(seen), max(seen)
        pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 0.05)
        ax.set_ylim(lo - pad, hi + pad)


def available_metrics(groups: list[Group]) -> list[str]:
    keys: set[str] = set()
    for g in groups:
        for run in g.runs:
            for rows in (run.metrics[:1], run.metrics[-1:], run.evals[-1:]):
                for r in rows:
                    keys.update(k for k, v in r.items() if isinstance(v, (int, float)) and k != "step")
    return sorted(keys)


def curve_metrics(groups: list[Group], requested: list[str] | None) -> list[str]:
    avail = available_metrics(groups)
    if requested:
        unknown = [m for m in requested if m not in avail]
        if unknown:
            raise PlotError(f"--metrics: unknown {', '.join(unknown)}; logged: {', '.join(avail)}")
        return requested
    comps = sorted(k for k in avail if k.startswith("reward/") and k.endswith("/raw"))
    out = []
    for m in DEFAULT_CURVES:
        out += comps if m == "<components>" else ([m] if m in avail else [])
    return out


def _title(key: str) -> str:
    if key in TITLES:
        return TITLES[key]
    if key.startswith("reward/") and key.endswith("/raw"):
        return f"reward: {key[7:-4]} (raw)"
    return key


def _save(fig: Any, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in FORMATS:
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=DPI)
        paths.append(p)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def _legend(fig: Any, groups: list[Group], extra: list[tuple[Any, str]] = ()) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=g.color, lw=2) for g in groups] + [h for h, _ in extra]
    labels = [f"{g.name} (n={len(g.runs)})" for g in groups] + [lab for _, lab in extra]
    per_row = int(fig.get_figwidth() * 13 // (max(len(lab) for lab in labels) + 6))  # ~13 characters an inch
    fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(len(labels), 3, per_row)))


# --------------------------------------------------------------------------- figures


def _budget(group: Group) -> tuple[list[int], list[float]] | None:
    for run in group.runs:
        steps, ys = series(run, "schedule/budget")
        if steps:
            return steps, ys
    return None


def _draw_budget(ax: Any, groups: list[Group]) -> str | None:
    """The budget schedule, dashed: black when every run shares one, else in each group's colour.
    Returns the legend label, or None when no run has a budget."""
    with_budget = [(g, b) for g in groups if (b := _budget(g)) is not None]
    if not with_budget:
        return None
    shared = len({(tuple(b[0]), tuple(b[1])) for _, b in with_budget}) == 1
    for g, b in with_budget[:1] if shared else with_budget:
        ax.plot(b[0], b[1], ls="--", lw=1.2, color="black" if shared else g.color, drawstyle="steps-post", zorder=3)
    values = [v for _, b in with_budget for v in b[1]]
    lo, hi = ax.get_ylim()
    pad = 0.05 * (max(hi, *values) - min(lo, *values))
    ax.set_ylim(min(lo, min(values) - pad), max(hi, max(values) + pad))  # the whole budget stays in view
    if len(with_budget) < len(groups):
        return "budget schedule of " + ", ".join(g.name for g, _ in with_budget)
    return "budget schedule"


def _columns(n: int) -> int:
    if n <= 3:
        return n
    return 4 if n % 4 in (0, 3) else 3


def fig_curves(groups: list[Group], out: Path, metrics: list[str], window: int, kind: str = "ci95"
               ) -> tuple[list[Path], tuple[float, float]]:
    n = len(metrics)
    cols = _columns(n)
    rows = math.ceil(n / cols)
    size = (3.4 * cols, 2.6 * rows + 0.6)
    with style() as plt:
        fig, axes = plt.subplots(rows, cols, figsize=size, layout="constrained", squeeze=False)
        budget_label = None
        for ax, key in zip(axes.flat, metrics):
            _draw_bands(ax, groups, key, window, kind)
            if key.startswith("length/"):
                budget_label = _draw_budget(ax, groups) or budget_label
            ax.set_title(_title(key))
            ax.set_xlabel("step")
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        from matplotlib.lines import Line2D

        extra = [(Line2D([], [], color="black", ls="--"), budget_label)] if budget_label else []
        _legend(fig, groups, extra)
        fig.suptitle(f"training curves: mean over seeds, {_band_text(kind)} band"
                     + (f", moving average over {window} steps" if window > 1 else ""), fontsize=9, fontweight="normal")
        return _save(fig, out, "curves"), size


def _band_text(kind: str) -> str:
    return "95% CI (t)" if kind == "ci95" else "±1.96·s.e.m."


def fig_length_budget(groups: list[Group], out: Path, window: int, kind: str = "ci95"
                      ) -> tuple[list[Path], tuple[float, float]]:
    size = (5.0, 3.6)
    with style() as plt:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        _draw_bands(ax, groups, "length/mean", window, kind)
        label = _draw_budget(ax, groups)
        ax.set_xlabel("step")
        ax.set_ylabel("tokens")
        ax.set_title("mean length under the budget schedule")
        from matplotlib.lines import Line2D

        _legend(fig, groups, [(Line2D([], [], color="black", ls="--"), label or "budget schedule")])
        return _save(fig, out, "length_budget"), size


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both fewer tokens (x) and higher accuracy (y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def fig_pareto(groups: list[Group], out: Path, kind: str = "ci95") -> tuple[list[Path], tuple[float, float]]:
    size = (5.6, 4.4)
    with style() as plt:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        means, names, colors, seen = [], [], [], []
        starts = []
        for g in groups:
            pts = [(r.final_eval["eval/length"], r.final_eval["eval/accuracy"]) for r in g.runs
                   if r.final_eval and r.final_eval.get("eval/length") is not None]
            starts += [(r.first_eval["eval/length"], r.first_eval["eval/accuracy"]) for r in g.runs
                       if r.first_eval and r.first_eval.get("eval/length") is not None]
            if not pts:
                continue
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=g.color, alpha=0.35, s=14, lw=0)
            (mx, hx), (my, hy) = mean_ci([p[0] for p in pts], kind), mean_ci([p[1] for p in pts], kind)
            ax.errorbar(mx, my, xerr=hx, yerr=hy, color=g.color, marker="o", ms=6, capsize=2.5, lw=1.2,
                        label=f"{g.name} (n={len(pts)})", zorder=4)
            means.append((mx, my))
            names.append(g.name)
            colors.append(g.color)
            seen += pts
        if starts:
            sx = sum(p[0] for p in starts) / len(starts)
            sy = sum(p[1] for p in starts) / len(starts)
            ax.scatter([sx], [sy], marker="*", s=110, color=START, zorder=3, label="step 0 (start)")
            seen.append((sx, sy))
        if means:
            xs, ys = [p[0] for p in seen], [p[1] for p in seen]
            px, py = 0.08 * (max(xs) - min(xs) or max(xs) or 1), 0.08 * (max(ys) - min(ys) or 0.1)
            x0, x1, y0, y1 = min(xs) - px, max(xs) + px, min(ys) - py, min(max(ys) + py, 1.0 + py / 2)
            front = pareto_front(means)
            # the front as a staircase: from each front point rightwards to the next one's accuracy
            fx, fy = [means[front[0]][0]], [y0]
            for i in front:
                fx += [means[i][0], means[i][0]]
                fy += [fy[-1], means[i][1]]
            fx.append(x1)
            fy.append(fy[-1])
            ax.plot(fx, fy, color="black", lw=1.0, ls=":", zorder=2, label="Pareto front")
            ax.fill_between(fx, y0, fy, color="black", alpha=0.04, lw=0, zorder=1)
            for i, (name, color) in enumerate(zip(names, colors)):
                ax.annotate(name, means[i], textcoords="offset points", xytext=(6, 5 + 9 * (i % 2)), fontsize=7,
                            color=color, fontweight="bold" if i in front else "normal")
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
        else:
            ax.text(0.5, 0.5, "no finished run yet", transform=ax.transAxes, ha="center")
        ax.set_xlabel("mean tokens (final eval)  ← shorter")
        ax.set_ylabel("accuracy (final eval)  ↑")
        ax.set_title("accuracy vs length: Pareto front over settings")
        ax.legend(loc="lower right", title=f"mean ± {_band_text(kind)} over seeds;\nfaint dots: single seeds",
                  title_fontsize=7)
        return _save(fig, out, "pareto"), size


def _phase(samples: list[dict[str, Any]], n_steps: int, phase: str, fraction: float = 0.2) -> list[dict[str, Any]]:
    k = max(1, math.ceil(fraction * n_steps))
    if phase == "start":
        return [s for s in samples if s.get("step", 0) <= k]
    return [s for s in samples if s.get("step", 0) > n_steps - k]


def fig_length_hist(groups: list[Group], out: Path) -> tuple[list[Path], tuple[float, float]]:
    rows = len(groups)
    size = (7.0, 2.1 * rows + 0.7)
    with style() as plt:
        from matplotlib.ticker import MaxNLocator

        fig, axes = plt.subplots(rows, 2, figsize=size, layout="constrained", squeeze=False, sharex=True)
        lengths = [s["length"] for g in groups for r in g.runs for s in r.samples if s.get("length") is not None]
        lo, hi = min(lengths, default=0), max(lengths, default=1)
        width = max(1, math.ceil((hi + 1 - lo) / 24))  # whole tokens per bin: lengths are integers
        bins = [lo - 0.5 + width * i for i in range(math.ceil((hi + 1 - lo) / width) + 1)]
        for row, g in zip(axes, groups):
            for ax, phase in zip(row, ("start", "end")):
                sel = []
                for r in g.runs:
                    n_steps = max((m["step"] for m in r.metrics), default=0)
                    sel += _phase(r.samples, n_steps, phase)
                good = [s["length"] for s in sel if s.get("correct")]
                bad = [s["length"] for s in sel if not s.get("correct") and s.get("length") is not None]
                if good:
                    ax.hist(good, bins=bins, color=CORRECT, alpha=0.55, label=f"correct ({len(good)})")
                if bad:
                    ax.hist(bad, bins=bins, color=WRONG, alpha=0.55, label=f"wrong ({len(bad)})")
                if not sel:
                    ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center", color=START)
                else:
                    ax.legend(loc="upper right")
                ax.set_title(f"{g.name} — {'first' if phase == 'start' else 'last'} 20% of steps",
                             fontsize=8, color=g.color)
                ax.set_ylabel("samples")
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes[-1]:
            ax.set_xlabel("completion length (tokens)")
        fig.suptitle("length of correct vs wrong completions (training samples)", fontsize=9, fontweight="normal")
        return _save(fig, out, "length_hist"), size


def _difficulties(groups: list[Group]) -> list[str]:
    ds = set()
    for g in groups:
        for r in g.runs:
            for e in (r.final_eval, r.first_eval):
                ds.update(k.rsplit("difficulty_", 1)[1] for k in (e or {}) if k.startswith("eval/accuracy/difficulty_"))
    return sorted(ds, key=lambda d: (0, int(d)) if d.isdigit() else (1, d))


def fig_difficulty(groups: list[Group], out: Path, kind: str = "ci95") -> tuple[list[Path], tuple[float, float]]:
    diffs = _difficulties(groups)
    size = (max(7.0, 1.6 * len(diffs) + 1.0), 3.6)
    with style() as plt:
        fig, axes = plt.subplots(1, 2, figsize=size, layout="constrained")
        bars = [("step 0", START, [r.first_eval for g in groups for r in g.runs if r.first_eval])]
        bars += [(g.name, g.color, [r.final_eval for r in g.runs if r.final_eval]) for g in groups]
        bars = [b for b in bars if b[2]]
        width = 0.8 / max(1, len(bars))
        for ax, metric, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "length", "mean tokens")):
            for j, (name, color, evals) in enumerate(bars):
                xs, ms, hs = [], [], []
                for i, d in enumerate(diffs):
                    vals = [e[f"eval/{metric}/difficulty_{d}"] for e in evals
                            if e.get(f"eval/{metric}/difficulty_{d}") is not None]
                    if vals:
                        m, h = mean_ci(vals, kind)
                        xs.append(i - 0.4 + width * (j + 0.5))
                        ms.append(m)
                        hs.append(h)
                ax.bar(xs, ms, width=width * 0.92, yerr=hs, color=color, capsize=2, label=name,
                       error_kw={"lw": 0.8})
            ax.set_xticks(range(len(diffs)), [f"d={d}" for d in diffs])
            ax.set_xlabel("difficulty bucket")
            ax.set_ylabel(label)
            ax.set_title(f"final eval {label} per difficulty")
            if metric == "accuracy":
                ax.set_ylim(0, 1.05)
        if not diffs:
            axes[0].text(0.5, 0.5, "no per-difficulty eval", transform=axes[0].transAxes, ha="center")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4))
        fig.suptitle(f"mean over seeds, error bars: {_band_text(kind)}", fontsize=9, fontweight="normal")
        return _save(fig, out, "difficulty"), size


@dataclass
class Figure:
    name: str
    paths: list[Path]
    size_in: tuple[float, float]

    @property
    def size_px(self) -> tuple[int, int]:
        return round(self.size_in[0] * DPI), round(self.size_in[1] * DPI)


def plot(path: str | Path, out: str | Path | None = None, metrics: list[str] | None = None,
         group_by: str | None = None, smooth_window: int | None = None, band_kind: str = "ci95") -> list[Figure]:
    """Write every figure for the run or sweep in `path` to `out` (default `path/figures`).

    smooth_window: moving average of the training curves in steps (default steps/10; 1 = raw);
    band_kind: `ci95` (t-based 95% confidence interval of the mean over seeds) or `sem` (±1.96·sem).
    """
    if band_kind not in ("ci95", "sem"):
        raise PlotError(f"band: ci95 or sem, got {band_kind!r}")
    groups = load(path, group_by)
    out_dir = Path(out) if out else Path(path) / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    n_steps = max(len(r.metrics) for g in groups for r in g.runs)
    window = smooth_window if smooth_window is not None else max(1, round(n_steps / 10))
    figs = []
    p, s = fig_curves(groups, out_dir, curve_metrics(groups, metrics), window, band_kind)
    figs.append(Figure("curves", p, s))
    if any(_budget(g) for g in groups):
        p, s = fig_length_budget(groups, out_dir, window, band_kind)
        figs.append(Figure("length_budget", p, s))
    for name, fn in (("pareto", fig_pareto), ("length_hist", fig_length_hist), ("difficulty", fig_difficulty)):
        p, s = fn(groups, out_dir, band_kind) if name != "length_hist" else fn(groups, out_dir)
        figs.append(Figure(name, p, s))
    return figs
