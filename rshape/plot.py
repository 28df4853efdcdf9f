"""`rshape plot DIR`: the figures of a run or a sweep, PNG (150 dpi) and PDF, in one style.

    curves         one panel each for reward total, every reward component (raw), accuracy, mean length and
                   truncation rate per step: the mean over seeds with a band over seeds, one colour per setting;
                   the budget schedule (`schedule/budget`) dashed over the length panel when a curriculum is set
    length_budget  mean length against the budget schedule (only when a run logs schedule/budget)
    pareto         final eval accuracy against final eval mean tokens per setting: the setting means with error
                   bars (band rule below), single seeds faint, the Pareto front of the means as a staircase
                   behind the points, the step-0 policy as a labelled star, every setting labelled by its point
    length_hist    completion lengths of correct vs wrong samples, first vs last 20% of training steps
    difficulty     final eval accuracy and mean tokens per difficulty bucket, step 0 in grey

Bands and error bars (`band_kind`, `--band`) describe the spread over the seeds of a setting:

    auto    (default) min–max over seeds when the fewest seeds of a multi-seed setting is n ≤ 4, a t-based
            95% confidence interval of the mean from n ≥ 5 (with 2 seeds a t-interval is ±12.7 s.e.m.
            and hides every curve; with 2–4 seeds the range shows what was actually measured)
    range   min–max over seeds (`minmax` is the same)
    ci95    t-based 95% confidence interval of the mean: mean ± t(0.975, n−1)·sd/√n
    sem     mean ± one standard error of the mean, sd/√n
    none    the means only

A figure uses one rule for all its settings, and says in its caption which rule and how many seeds per
setting. A setting with one run gets no band or error bar, and is called a "single run", never a CI.

Axes: accuracy and rates are shown in percent, spanning at least 10 points (`MIN_SPAN_FRACTION`) inside
[0, 100%], so a 0.6-point difference is not blown up to the panel height; token axes start at 0; other
metrics (rewards) span at least 0.1 or 10% of their magnitude. The y range follows the seeds' values.

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
from rshape.stats import t975

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
# "<components>": one panel per reward component (its raw value), after the total
DEFAULT_CURVES = ["reward/total", "<components>", "accuracy", "length/mean", "truncation_rate"]
TITLES = {"reward/total": "reward (total)", "accuracy": "training accuracy", "length/mean": "mean length (tokens)",
          "truncation_rate": "truncation rate", "eval/accuracy": "eval accuracy", "eval/length": "eval mean tokens",
    "eval/truncation": "eval truncation rate"}
BAND_KINDS = ("auto", "range", "minmax", "ci95", "sem", "none")
AUTO_RANGE_MAX_N = 4  # `auto`: min–max over seeds up to this many seeds, a 95% t-interval from one more
BAND_TEXT = {"range": "min–max over seeds", "ci95": "95% CI of the mean (t)", "sem": "±1 s.e.m.", "none": "none"}
MIN_SPAN_FRACTION = 0.10  # accuracy / rate axes span at least 10 points
MIN_SPAN_OTHER = 0.10  # other axes (rewards): at least 0.1, or 10% of the largest magnitude


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


# --------------------------------------------------------------------------- statistics


def resolve_band(kind: str, ns: list[int]) -> str:
    """The band rule one figure uses for settings of `ns` seeds: `range`, `ci95`, `sem` or `none`.

    `auto` is `range` when the fewest seeds of a multi-seed setting is ≤ AUTO_RANGE_MAX_N, else `ci95`;
    `minmax` is `range`; without any setting of two or more seeds there is no band."""
    if kind not in BAND_KINDS:
        raise PlotError(f"band: one of {', '.join(BAND_KINDS)}, got {kind!r}")
    multi = [n for n in ns if n >= 2]
    if not multi or kind == "none":
        return "none"
    if kind == "auto":
        return "range" if min(multi) <= AUTO_RANGE_MAX_N else "ci95"
    return "range" if kind == "minmax" else kind


def spread(values: list[float], kind: str) -> tuple[float, float, float]:
    """Mean and the band (low, high) of `values` under a resolved rule; the band is the mean itself for
    one value or `none`. range: (min, max); sem: mean ± sd/√n; ci95: mean ± t(0.975, n−1)·sd/√n."""
    n = len(values)
    m = sum(values) / n
    if n < 2 or kind == "none":
        return m, m, m
    if kind == "range":  # the mean of equal floats can be an ulp outside them: keep low ≤ mean ≤ high
        return m, min(min(values), m), max(max(values), m)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = (t975(n - 1) if kind == "ci95" else 1.0) * sd / math.sqrt(n)
    return m, m - half, m + half


def seeds_text(ns: list[int]) -> str:
    lo, hi = min(ns), max(ns)
    if hi == 1:
        return "single run" if len(ns) == 1 else "a single run per setting"
    return f"n={lo} seeds per setting" if lo == hi else f"n={lo}–{hi} seeds per setting"


def caption(ns: list[int], kind: str, what: str = "band") -> str:
    """What a figure shows over seeds: the number of seeds per setting and the (resolved) band rule.
    Single runs are called so, and get no band wording."""
    if not ns or max(ns) < 2:
        return seeds_text(ns or [1])
    text = f"mean over {seeds_text(ns)}; "
    if kind == "none":
        return text + f"no {what}s"
    return text + f"{what}s: {BAND_TEXT[kind]}" + (" (none for single runs)" if min(ns) < 2 else "")


def n_label(n: int) -> str:
    return "single run" if n == 1 else f"n={n}"


def axis_kind(key: str) -> str:
    """`fraction` (accuracy, rates: 0–1, shown in percent), `tokens` (lengths, budget) or `other`."""
    if key in ("accuracy", "eval/accuracy", "truncation_rate", "eval/truncation") or key.endswith("_rate") \
            or key.startswith(("accuracy/", "eval/accuracy/")):
        return "fraction"
    if key.startswith(("length/", "eval/length")) or key == "schedule/budget":
        return "tokens"
    return "other"


def y_range(lo: float, hi: float, axis: str = "other", min_span: float | None = None) -> tuple[float, float]:
    """Axis limits for data in [lo, hi] that do not magnify small differences: `tokens` from 0; `fraction`
    spans at least MIN_SPAN_FRACTION inside [0, 1]; `other` at least MIN_SPAN_OTHER or 10% of the largest
    magnitude; then a 5% margin on each side (3% above 0 for tokens)."""
    if axis == "tokens":
        top = max(hi, 0.0) or 1.0
        return 0.0, top * 1.08
    if min_span is None:
        min_span = MIN_SPAN_FRACTION if axis == "fraction" else max(MIN_SPAN_OTHER, 0.1 * max(abs(lo), abs(hi)))
    span = max(hi - lo, min_span)
    if axis == "fraction":
        span = min(span, 1.0)
    mid = (lo + hi) / 2
    a, b = mid - span / 2, mid + span / 2
    if axis == "fraction":
        if a < 0:
            a, b = 0.0, max(span, hi)
        if b > 1:
            a, b = min(1.0 - span, lo), 1.0
    pad = 0.05 * (b - a)
    return a - pad, b + pad


def _set_y(ax: Any, key: str, values: list[float]) -> None:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return
    axis = axis_kind(key)
    ax.set_ylim(*y_range(min(values), max(values), axis))
    if axis == "fraction":
        _percent(ax.yaxis)


def _percent(axis: Any) -> None:
    """Fractions shown as whole percents, ticks at 1, 2, 5 or 10 points and their decades."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    axis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 5, 10]))
    axis.set_major_formatter(PercentFormatter(1.0, decimals=0))


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


def band(group: Group, key: str, window: int, kind: str = "range"
         ) -> tuple[list[int], list[float], list[float], list[float], list[float]] | None:
    """Steps, mean over seeds, band low and high (resolved rule), and every seed's value (each seed smoothed
    first)."""
    by_step: dict[int, list[float]] = {}
    for run in group.runs:
        steps, ys = series(run, key)
        for s, y in zip(steps, smooth(ys, 1 if key.startswith("eval/") else window)):
            by_step.setdefault(s, []).append(y)
    if not by_step:
        return None
    steps = sorted(by_step)
    stats = [spread(by_step[s], kind) for s in steps]
    return (steps, [m for m, _, _ in stats], [lo for _, lo, _ in stats], [hi for _, _, hi in stats],
            [v for s in steps for v in by_step[s]])


def _draw_bands(ax: Any, groups: list[Group], key: str, window: int, kind: str) -> list[float]:
    """Mean curve and band per group (none for a single run); returns the seeds' values, which the y range
    follows (a band wider than the seeds, a t-interval of few seeds, may run off the panel)."""
    seen: list[float] = []
    for g in groups:
        b = band(g, key, window, kind)
        if b is None:
            continue
        steps, mean, lo, hi, values = b
        ax.plot(steps, mean, color=g.color, marker="o" if key.startswith("eval/") else None, ms=3, zorder=3)
        if len(g.runs) >= 2 and kind != "none":
            ax.fill_between(steps, lo, hi, color=g.color, alpha=0.15, lw=0, zorder=2)
        seen += values
    return seen


def available_metrics(groups: list[Group]) -> list[str]:
    keys: set[str] = set()
    for g in groups:
        for run in g.runs:
            for rows in (run.metrics[:1], run.metrics[-1:], run.evals[-1:]):
                for r in rows:
                    keys.update(k for k, v in r.items() if isinstance(v, (int, float)) and k != "step")
    return sorted(keys)


def curve_metrics(groups: list[Group], requested: list[str] | None) -> list[str]:
    """The panels of `curves`, one metric each: the requested ones, or reward total, each reward component
    (raw) on its own panel since their scales differ, accuracy, mean length, truncation rate."""
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
    labels = [f"{g.name} ({n_label(len(g.runs))})" for g in groups] + [lab for _, lab in extra]
    fig.legend(handles, labels, loc="outside lower center", ncol=_legend_columns(fig, labels))


def _legend_columns(fig: Any, labels: list[str], most: int = 3) -> int:
    """The most columns (up to `most`) whose labels fit the figure's width, at ~13 characters an inch."""
    for ncol in range(min(most, len(labels)), 1, -1):
        rows = math.ceil(len(labels) / ncol)  # a legend fills its columns top to bottom
        cols = [labels[i:i + rows] for i in range(0, len(labels), rows)]
        if sum(max(len(lab) for lab in col) + 6 for col in cols) <= fig.get_figwidth() * 13:
            return ncol
    return 1


def _suptitle(fig: Any, text: str) -> None:
    """The caption above the panels, wrapped to the figure's width (~13 characters an inch at 9 pt)."""
    import textwrap

    fig.suptitle(textwrap.fill(text, int(fig.get_figwidth() * 13)), fontsize=9, fontweight="normal")


def _step_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _sizes(groups: list[Group]) -> list[int]:
    return [len(g.runs) for g in groups]


# --------------------------------------------------------------------------- figures
# Each fig_* builds and returns a matplotlib figure (inside `style()`); `plot` saves and closes them.


def _budget(group: Group) -> tuple[list[int], list[float]] | None:
    for run in group.runs:
        steps, ys = series(run, "schedule/budget")
        if steps:
            return steps, ys
    return None


def _draw_budget(ax: Any, groups: list[Group]) -> tuple[str | None, list[float]]:
    """The budget schedule, dashed: black when every run shares one, else in each group's colour.
    Returns the legend label (None when no run has a budget) and the budget values (for the y range)."""
    with_budget = [(g, b) for g in groups if (b := _budget(g)) is not None]
    if not with_budget:
        return None, []
    shared = len({(tuple(b[0]), tuple(b[1])) for _, b in with_budget}) == 1
    for g, b in with_budget[:1] if shared else with_budget:
        ax.plot(b[0], b[1], ls="--", lw=1.2, color="black" if shared else g.color, drawstyle="steps-post", zorder=4)
    values = [v for _, b in with_budget for v in b[1]]
    if len(with_budget) < len(groups):
        return "budget schedule of " + ", ".join(g.name for g, _ in with_budget), values
    return "budget schedule", values


def _columns(n: int) -> int:
    if n <= 3:
        return n
    return 4 if n % 4 in (0, 3) else 3


def fig_curves(groups: list[Group], metrics: list[str], window: int, kind: str = "auto") -> Any:
    """One panel per metric (so one per reward component), the legend and the caption below/above."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(metrics)
    cols = _columns(n)
    rows = math.ceil(n / cols)
    kind = resolve_band(kind, _sizes(groups))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows + 0.6), layout="constrained", squeeze=False)
    budget_label = None
    for ax, key in zip(axes.flat, metrics):
        values = _draw_bands(ax, groups, key, window, kind)
        if key.startswith("length/"):
            label, budget = _draw_budget(ax, groups)
            budget_label = label or budget_label
            values += budget
        _set_y(ax, key, values)
        ax.set_title(_title(key))
        _step_axis(ax)
    for ax in list(axes.flat)[n:]:
        ax.remove()
    extra = [(Line2D([], [], color="black", ls="--"), budget_label)] if budget_label else []
    _legend(fig, groups, extra)
    _suptitle(fig, f"training curves: {caption(_sizes(groups), kind)}"
              + (f"; moving average over {window} steps" if window > 1 else ""))
    return fig


def fig_length_budget(groups: list[Group], window: int, kind: str = "auto") -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    kind = resolve_band(kind, _sizes(groups))
    fig, ax = plt.subplots(figsize=(5.0, 3.6), layout="constrained")
    values = _draw_bands(ax, groups, "length/mean", window, kind)
    label, budget = _draw_budget(ax, groups)
    _set_y(ax, "length/mean", values + budget)
    _step_axis(ax)
    ax.set_ylabel("tokens")
    ax.set_title("mean length under the budget schedule")
    _legend(fig, groups, [(Line2D([], [], color="black", ls="--"), label or "budget schedule")])
    _suptitle(fig, caption(_sizes(groups), kind) + (f"; moving average over {window} steps" if window > 1 else ""))
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both fewer tokens (x) and higher accuracy (y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


LABEL_OFFSETS = [(7, 5, "left", "bottom"), (7, -5, "left", "top"), (-7, 5, "right", "bottom"),
                 (-7, -5, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top"),
                 (10, 0, "left", "center"), (-10, 0, "right", "center"), (14, 16, "left", "bottom"),
                 (-14, 16, "right", "bottom"), (14, -16, "left", "top"), (-14, -16, "right", "top"),
                 (0, 22, "center", "bottom"), (0, -22, "center", "top"), (24, 28, "left", "bottom"),
                 (-24, 28, "right", "bottom"), (24, -28, "left", "top"), (-24, -28, "right", "top")]
LEADER_FROM = 14  # offsets this far (points) get a thin line back to their point


def place_labels(ax: Any, labels: list[tuple[str, tuple[float, float], str, dict[str, Any]]],
                 obstacles: list[tuple[float, float]], faint: list[tuple[float, float]] = ()) -> list[Any]:
    """Annotate each (text, data point, colour, text kwargs) next to its point: the nearest offset whose text
    box stays inside the axes and clear of the labelled points, the labels already placed and (weighing less)
    the `faint` points, else the one with the least overlap. Call after the limits are set."""
    fig = ax.figure
    fig.canvas.draw()  # settle the layout, so display coordinates are final
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pts = [(*ax.transData.transform(p), 1.0) for p in obstacles] + [(*ax.transData.transform(p), 0.2) for p in faint]
    r = 5.0 * fig.dpi / 72  # a marker's radius, in pixels
    placed: list[Any] = []
    out = []

    def cost(bb: Any) -> float:
        c = 0.0
        for x, y, w in pts:
            c += w * max(0.0, min(bb.x1, x + r) - max(bb.x0, x - r)) * max(0.0, min(bb.y1, y + r) - max(bb.y0, y - r))
        for p in placed:
            c += max(0.0, min(bb.x1, p.x1) - max(bb.x0, p.x0)) * max(0.0, min(bb.y1, p.y1) - max(bb.y0, p.y0))
        outside = (max(0.0, frame.x0 - bb.x0) + max(0.0, bb.x1 - frame.x1) + max(0.0, frame.y0 - bb.y0)
                   + max(0.0, bb.y1 - frame.y1))
        return c + 1000.0 * outside

    for text, xy, color, kw in labels:
        best = None
        for dx, dy, ha, va in LABEL_OFFSETS:
            leader = {"arrowprops": {"arrowstyle": "-", "lw": 0.5, "color": color, "shrinkA": 1, "shrinkB": 4}} \
                if max(abs(dx), abs(dy)) >= LEADER_FROM else {}
            ann = ax.annotate(text, xy, textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, color=color,
                              fontsize=7, zorder=6, annotation_clip=False, **leader, **kw)
            ann.set_in_layout(False)
            bb = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            c = cost(bb)
            if best is None or c < best[0]:
                if best is not None:
                    best[1].remove()
                best = (c, ann, bb)
            else:
                ann.remove()
            if c == 0:
                break
        assert best is not None
        placed.append(best[2])
        out.append(best[1])
    return out


def fig_pareto(groups: list[Group], kind: str = "auto") -> Any:
    """x = final eval mean tokens (from 0), y = final eval accuracy (percent, minimum span)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(5.6, 4.4), layout="constrained")
    finals = [[(r.final_eval["eval/length"], r.final_eval["eval/accuracy"]) for r in g.runs
               if r.final_eval and r.final_eval.get("eval/length") is not None] for g in groups]
    ns = [len(p) for p in finals if p]
    kind = resolve_band(kind, ns)
    starts = [(r.first_eval["eval/length"], r.first_eval["eval/accuracy"]) for g in groups for r in g.runs
              if r.first_eval and r.first_eval.get("eval/length") is not None]
    means, labels, seen = [], [], []
    for g, pts in zip(groups, finals):
        if not pts:
            continue
        (mx, x0, x1), (my, y0, y1) = spread([p[0] for p in pts], kind), spread([p[1] for p in pts], kind)
        if len(pts) >= 2:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=g.color, alpha=0.35, s=14, lw=0, zorder=3)
        if len(pts) >= 2 and kind != "none":
            ax.errorbar(mx, my, xerr=[[mx - x0], [x1 - mx]], yerr=[[my - y0], [y1 - my]], color=g.color, lw=1.0,
                        capsize=2.5, fmt="none", zorder=4)
        ax.scatter([mx], [my], color=g.color, s=36, zorder=5, edgecolors="white", linewidths=0.6)
        means.append((mx, my))
        labels.append((g.name, g.color))
        seen += pts + [(x0, y0), (x1, y1)]
    start = None
    if starts:
        start = (sum(p[0] for p in starts) / len(starts), sum(p[1] for p in starts) / len(starts))
        ax.scatter([start[0]], [start[1]], marker="*", s=150, color=START, edgecolors="black", linewidths=0.6,
                   zorder=5)
        seen.append(start)
    legend = []
    if means:
        xs, ys = [p[0] for p in seen], [p[1] for p in seen]
        ax.set_xlim(*y_range(min(xs), max(xs), "tokens"))
        ya, yb = y_range(min(ys), max(ys), "fraction")
        ax.set_ylim(ya, yb + 0.06 * (yb - ya))  # headroom for the labels above the best points
        xb = ax.get_xlim()[1]
        front = pareto_front(means) if len(means) > 1 else []  # a front of one setting says nothing
        # the front as a staircase behind the points: up from the axis at the cheapest front point, then to
        # the right at each front point's accuracy until the next one
        if front:
            fx, fy = [means[front[0]][0]], [ya]
            for i in front:
                fx += [means[i][0], means[i][0]]
                fy += [fy[-1], means[i][1]]
            fx.append(xb)
            fy.append(fy[-1])
            ax.plot(fx, fy, color="#555555", lw=1.0, zorder=1)
            ax.fill_between(fx, ya, fy, color="black", alpha=0.04, lw=0, zorder=0)
        marks = [(name, means[i], color, {"fontweight": "bold" if i in front else "normal"})
                 for i, (name, color) in enumerate(labels)]
        if start is not None:
            marks.append(("step 0", start, "#555555", {"fontstyle": "italic"}))
        place_labels(ax, marks, means + ([start] if start is not None else []), [p for p in seen if p not in means])
        n_text = caption(ns, kind, "error bar")
        legend.append((Line2D([], [], color="#555555", marker="o", ls="none", ms=5),
                       "setting mean" if max(ns) >= 2 else "setting (single run)"))
        if max(ns) >= 2:
            legend.append((Line2D([], [], color="#555555", marker="o", ls="none", ms=3.5, alpha=0.35), "single seed"))
        if front:
            legend.append((Line2D([], [], color="#555555", lw=1.0), "Pareto front (bold labels)"))
        if start is not None:
            legend.append((Line2D([], [], color=START, marker="*", ls="none", ms=9, mec="black", mew=0.6),
                           "step 0 policy" + (f" (mean, {len(starts)} runs)" if len(starts) > 1 else "")))
        _percent(ax.yaxis)
    else:
        n_text = "no finished run yet"
        ax.text(0.5, 0.5, "no finished run yet", transform=ax.transAxes, ha="center")
    ax.set_xlabel("mean tokens (final eval)  ← shorter")
    ax.set_ylabel("accuracy (final eval)")
    ax.set_title("accuracy vs length over settings")
    if legend:
        fig.legend([h for h, _ in legend], [lab for _, lab in legend], loc="outside lower center",
                   ncol=_legend_columns(fig, [lab for _, lab in legend], 2))
    _suptitle(fig, f"final eval: {n_text}")
    return fig


def _phase(samples: list[dict[str, Any]], n_steps: int, phase: str, fraction: float = 0.2) -> list[dict[str, Any]]:
    k = max(1, math.ceil(fraction * n_steps))
    if phase == "start":
        return [s for s in samples if s.get("step", 0) <= k]
    return [s for s in samples if s.get("step", 0) > n_steps - k]


def fig_length_hist(groups: list[Group]) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = len(groups)
    fig, axes = plt.subplots(rows, 2, figsize=(7.0, 2.1 * rows + 0.7), layout="constrained", squeeze=False,
                             sharex=True)
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
    ns = _sizes(groups)
    pooled = "" if max(ns) < 2 else f", pooled over {seeds_text(ns).removeprefix('n=')}"
    where = seeds_text(ns) if max(ns) < 2 else ""
    _suptitle(fig, "length of correct vs wrong completions (training samples"
              + (f"; {where}" if where else pooled) + ")")
    return fig


def _difficulties(groups: list[Group]) -> list[str]:
    ds = set()
    for g in groups:
        for r in g.runs:
            for e in (r.final_eval, r.first_eval):
                ds.update(k.rsplit("difficulty_", 1)[1] for k in (e or {}) if k.startswith("eval/accuracy/difficulty_"))
    return sorted(ds, key=lambda d: (0, int(d)) if d.isdigit() else (1, d))


def fig_difficulty(groups: list[Group], kind: str = "auto") -> Any:
    import matplotlib.pyplot as plt

    diffs = _difficulties(groups)
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.6 * len(diffs) + 1.0), 3.6), layout="constrained")
    starts = [r.first_eval for g in groups for r in g.runs if r.first_eval]
    bars = [(f"step 0 ({n_label(len(starts))})", START, starts)] if starts else []
    bars += [(f"{g.name} ({n_label(len(ev))})", g.color, ev) for g in groups
             if (ev := [r.final_eval for r in g.runs if r.final_eval])]
    ns = [len(ev) for _, _, ev in bars[1 if starts else 0:]] or [len(starts)]
    kind = resolve_band(kind, ns)
    width = 0.8 / max(1, len(bars))
    for ax, metric, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "length", "mean tokens")):
        for j, (name, color, evals) in enumerate(bars):
            xs, ms, err = [], [], [[], []]
            for i, d in enumerate(diffs):
                vals = [e[f"eval/{metric}/difficulty_{d}"] for e in evals
                        if e.get(f"eval/{metric}/difficulty_{d}") is not None]
                if vals:
                    m, lo, hi = spread(vals, kind)
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ms.append(m)
                    err[0].append(m - lo)
                    err[1].append(hi - m)
            show = kind != "none" and len(evals) >= 2
            ax.bar(xs, ms, width=width * 0.92, yerr=err if show else None, color=color, capsize=2, label=name,
                   error_kw={"lw": 0.8})
        ax.set_xticks(range(len(diffs)), [f"d={d}" for d in diffs])
        ax.set_xlabel("difficulty bucket")
        ax.set_ylabel(label)
        ax.set_title(f"final eval {label} per difficulty")
        if metric == "accuracy":
            ax.set_ylim(0, 1.05)
            _percent(ax.yaxis)
    if not diffs:
        axes[0].text(0.5, 0.5, "no per-difficulty eval", transform=axes[0].transAxes, ha="center")
    handles, labels = axes[0].get_legend_handles_labels()
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncol=_legend_columns(fig, labels, 4))
    pooled = "" if not starts else "; step 0: the first eval" if len(starts) == 1 else \
        f"; step 0: the first evals of all {len(starts)} runs pooled"
    _suptitle(fig, caption(ns, kind, "error bar") + pooled)
    return fig


@dataclass
class Figure:
    name: str
    paths: list[Path]
    size_in: tuple[float, float]

    @property
    def size_px(self) -> tuple[int, int]:
        return round(self.size_in[0] * DPI), round(self.size_in[1] * DPI)


def build(groups: list[Group], metrics: list[str] | None = None, smooth_window: int | None = None,
          band_kind: str = "auto") -> Iterator[tuple[str, Any]]:
    """(name, matplotlib figure) for every figure of `groups`; iterate inside `style()`, close each figure."""
    resolve_band(band_kind, [1])  # validates the name
    n_steps = max(len(r.metrics) for g in groups for r in g.runs)
    window = smooth_window if smooth_window is not None else max(1, round(n_steps / 10))
    yield "curves", fig_curves(groups, curve_metrics(groups, metrics), window, band_kind)
    if any(_budget(g) for g in groups):
        yield "length_budget", fig_length_budget(groups, window, band_kind)
    yield "pareto", fig_pareto(groups, band_kind)
    yield "length_hist", fig_length_hist(groups)
    yield "difficulty", fig_difficulty(groups, band_kind)


def plot(path: str | Path, out: str | Path | None = None, metrics: list[str] | None = None,
         group_by: str | None = None, smooth_window: int | None = None, band_kind: str = "auto") -> list[Figure]:
    """Write every figure for the run or sweep in `path` to `out` (default `path/figures`).

    smooth_window: moving average of the training curves in steps (default steps/10; 1 = raw);
    band_kind: the band and error bars over seeds, one of BAND_KINDS (see the module docstring).
    """
    resolve_band(band_kind, [1])
    groups = load(path, group_by)
    metric_list = curve_metrics(groups, metrics)
    out_dir = Path(out) if out else Path(path) / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = []
    with style():
        for name, fig in build(groups, metric_list, smooth_window, band_kind):
            size = tuple(float(v) for v in fig.get_size_inches())
            figs.append(Figure(name, _save(fig, out_dir, name), (size[0], size[1])))
    return figs
