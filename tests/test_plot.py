"""`rshape plot`: every figure from synthetic run directories, opened back as images of the right size."""

import json
import math
import random
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from rshape.plot import (
    DPI,
    PlotError,
    build,
    caption,
    curve_metrics,
    load,
    pareto_front,
    plot,
    resolve_band,
    smooth,
    spread,
    style,
    y_range,
)


def synth_run(d: Path, *, seed: int, method: str, steps: int = 20, budget: bool = False, acc_end: float = 0.8,
              len_end: float = 40.0) -> None:
    """A run directory as `rshape rl` writes it, with made-up numbers."""
    rng = random.Random(hash((seed, method)) % 1000)
    d.mkdir(parents=True)
    recipe = {"seed": seed, "rewards": {"correctness": {"weight": 1.0}, "length": {"type": method, "weight": 0.4}}}
    (d / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    metrics, samples = [], []
    for s in range(1, steps + 1):
        p = s / steps
        length = 60 + (len_end - 60) * p + rng.uniform(-3, 3)
        m = {"step": s, "reward/total": 0.5 + 0.3 * p + rng.uniform(-0.05, 0.05),
             "reward/correctness/raw": 0.6 + 0.2 * p, "reward/length/raw": -0.2 + 0.2 * p,
             "accuracy": 0.6 + (acc_end - 0.6) * p + rng.uniform(-0.05, 0.05), "length/mean": length,
             "length/p50": length, "length/p90": length * 1.3, "truncation_rate": max(0.0, 0.1 - 0.1 * p),
             "accuracy/difficulty_1": 0.9, "accuracy/difficulty_2": 0.5}
        if budget:
            m["schedule/budget"] = 80 * 0.75 ** (s // 5)
        metrics.append(m)
        for i in range(4):
            samples.append({"step": s, "correct": i < 3, "length": int(length + rng.uniform(-10, 10)) + 5 * (i == 3)})
    evals = []
    for s in (0, steps // 2, steps):
        p = s / steps
        e = {"step": s, "eval/accuracy": 0.6 + (acc_end - 0.6) * p, "eval/length": 60 + (len_end - 60) * p,
             "eval/truncation": 0.05 * (1 - p)}
        for k, (a, n) in {1: (0.95, 30), 2: (0.8, 50), 3: (0.5, 70)}.items():
            e[f"eval/accuracy/difficulty_{k}"] = a * (0.8 + 0.2 * (acc_end + p) / 2)
            e[f"eval/length/difficulty_{k}"] = n * (1 - 0.3 * p)
        evals.append(e)
    for name, rows in (("metrics", metrics), ("samples", samples), ("eval", evals)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({"first_eval": evals[0], "final_eval": evals[-1], "steps": steps}))


@pytest.fixture()
def sweep_dir(tmp_path):
    out = tmp_path / "sweep"
    trials = []
    for method, budget, acc, length in (("kimi_length", False, 0.82, 45.0), ("tlts_length", True, 0.78, 35.0)):
        label = method.split("_")[0]
        for seed in (0, 1, 2):
            name = f"length={label},seed={seed}"
            synth_run(out / name, seed=seed, method=method, budget=budget, acc_end=acc + 0.01 * seed, len_end=length)
            trials.append({"name": name, "setting": f"length={label}", "seed": seed, "run_dir": name, "status": "done",
                           "axes": {"rewards.length": label}})
    (out / "trials.json").write_text(json.dumps({"trials": trials}))
    return out


def check_images(figures, out: Path, expected: dict[str, tuple[float, float]]):
    names = {f.name for f in figures}
    assert names == set(expected)
    for f in figures:
        png, pdf = f.paths
        assert png == out / f"{f.name}.png" and pdf == out / f"{f.name}.pdf"
        w, h = expected[f.name]
        with Image.open(png) as img:
            img.load()
            assert img.format == "PNG" and img.size == (round(w * DPI), round(h * DPI)), f.name
            assert len(img.convert("L").getcolors(1 << 16)) > 10  # something was drawn
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 2000


def test_every_figure_from_a_synthetic_sweep(sweep_dir):
    figures = plot(sweep_dir)
    out = sweep_dir / "figures"
    # curves: reward total + 2 components + accuracy + length + truncation = 6 panels, 3 columns × 2 rows
    check_images(figures, out, {"curves": (3 * 3.4, 2 * 2.6 + 0.6), "length_budget": (5.0, 3.6),
                                "pareto": (5.6, 4.4), "length_hist": (7.0, 2 * 2.1 + 0.7), "difficulty": (7.0, 3.6)})


def test_single_run_custom_metrics_group_by_and_out(sweep_dir, tmp_path):
    run = sweep_dir / "length=kimi,seed=0"
    figures = plot(run, out=tmp_path / "figs", metrics=["accuracy", "eval/accuracy", "length/p90"])
    # no budget in this run: no length_budget figure; 3 metrics → one row of 3; one run → one histogram row
    check_images(figures, tmp_path / "figs", {"curves": (3 * 3.4, 2.6 + 0.6), "pareto": (5.6, 4.4),
                                              "length_hist": (7.0, 2.1 + 0.7), "difficulty": (7.0, 3.6)})
    with pytest.raises(PlotError, match="unknown policy/none"):
        plot(run, out=tmp_path / "figs2", metrics=["accuracy", "policy/none"])
    # group by a sweep axis (short name), by any recipe key, or by setting (default)
    assert [g.name for g in load(sweep_dir, "length")] == ["kimi", "tlts"]
    assert [g.name for g in load(sweep_dir, "rewards.length.type")] == ["kimi_length", "tlts_length"]
    assert [len(g.runs) for g in load(sweep_dir, "seed")] == [2, 2, 2]
    assert [g.name for g in load(sweep_dir)] == ["length=kimi", "length=tlts"]
    with pytest.raises(PlotError, match="--group-by nope"):
        load(sweep_dir, "nope")
    assert curve_metrics(load(sweep_dir), None) == ["reward/total", "reward/correctness/raw", "reward/length/raw",
                                                    "accuracy", "length/mean", "truncation_rate"]


def test_statistics_by_hand():
    m, lo, hi = spread([1.0, 2.0, 3.0], "ci95")  # sd 1, n 3, t(0.975, 2) = 4.303
    assert m == 2.0 and (lo, hi) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))
    assert spread([1.0, 2.0, 3.0], "sem") == pytest.approx((2.0, 2 - 1 / math.sqrt(3), 2 + 1 / math.sqrt(3)))
    assert spread([1.0, 2.0, 4.0], "range") == pytest.approx((7 / 3, 1.0, 4.0))
    assert spread([1.0, 2.0, 4.0], "none") == pytest.approx((7 / 3, 7 / 3, 7 / 3))
    assert spread([5.0], "ci95") == spread([5.0], "range") == (5.0, 5.0, 5.0)  # one run: no band
    assert smooth([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5] and smooth([1, 2], 1) == [1, 2]
    # (tokens, accuracy): the front keeps what nothing beats on both axes, cheapest first
    pts = [(50, 0.8), (30, 0.7), (40, 0.7), (60, 0.85), (55, 0.79), (20, 0.5)]
    assert pareto_front(pts) == [5, 1, 0, 3]


def test_plot_and_results_commands(sweep_dir, tmp_path):
    from rshape.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["plot", str(sweep_dir), "--out", str(tmp_path / "f"), "--metrics", "accuracy,length/mean",
                              "--group-by", "length", "--smooth", "3", "--band", "sem"])
    assert res.exit_code == 0, res.output
    assert "curves" in res.output and (tmp_path / "f" / "pareto.pdf").is_file()
    res = runner.invoke(app, ["plot", str(sweep_dir), "--out", str(tmp_path / "g"), "--band", "t-test"])
    assert res.exit_code == 2 and "band: one of auto" in res.output
    res = runner.invoke(app, ["plot", str(tmp_path / "empty-nothing")])
    assert res.exit_code == 2 and "error:" in res.output
    res = runner.invoke(app, ["results", str(sweep_dir), "--rank-by", "tokens"])
    assert res.exit_code == 0, res.output
    assert "★ **length=tlts**" in (sweep_dir / "results.md").read_text()


def test_band_rule_depends_on_seeds():
    # auto: min–max over seeds up to 4 seeds, t-based 95% CI from 5; one rule per figure (the fewest seeds of a
    # multi-seed setting decides); no band at all without a setting of two or more runs
    assert resolve_band("auto", [2, 2]) == resolve_band("auto", [3, 4]) == resolve_band("auto", [1, 3]) == "range"
    assert resolve_band("auto", [5, 5]) == resolve_band("auto", [1, 8]) == "ci95"
    assert resolve_band("auto", [4, 8]) == "range"
    assert resolve_band("auto", [1, 1]) == resolve_band("ci95", [1]) == resolve_band("none", [3]) == "none"
    assert resolve_band("minmax", [2]) == "range" and resolve_band("sem", [2]) == "sem"
    with pytest.raises(PlotError, match="band: one of"):
        resolve_band("sd", [3])
    # the caption names the seeds and the rule; a single run says so and never mentions a CI
    assert caption([1], "none") == "single run" and caption([1, 1], "none") == "a single run per setting"
    assert caption([2, 2], "range") == "mean over n=2 seeds per setting; bands: min–max over seeds"
    assert caption([5, 6], "ci95", "error bar") == ("mean over n=5–6 seeds per setting; "
                                                   "error bars: 95% CI of the mean (t)")
    assert caption([1, 3], "range").endswith("(none for single runs)")


def test_y_range_minimum_span():
    lo, hi = y_range(0.795, 0.801, "fraction")  # a 0.6-point difference is not blown up to the whole axis
    assert hi - lo >= 0.1 and lo < 0.795 and hi > 0.801
    lo, hi = y_range(0.97, 0.995, "fraction")  # pushed inside [0, 1] (plus a 5% margin)
    assert hi == pytest.approx(1.005) and lo == pytest.approx(0.895)
    lo, hi = y_range(0.0, 0.02, "fraction")
    assert lo == pytest.approx(-0.005) and hi == pytest.approx(0.105)
    assert y_range(0.2, 0.9, "fraction") == pytest.approx((0.165, 0.935))  # wide data: just the margin
    assert y_range(0.0, 1.0, "fraction") == pytest.approx((-0.05, 1.05))
    assert y_range(35.0, 60.0, "tokens") == pytest.approx((0.0, 64.8))  # lengths from 0
    lo, hi = y_range(0.500, 0.503)  # rewards: at least 0.1
    assert hi - lo == pytest.approx(0.11)
    lo, hi = y_range(95.0, 96.0)  # or 10% of the magnitude
    assert hi - lo == pytest.approx(1.1 * 9.6)


def figure_texts(groups, **kw) -> dict[str, tuple[str, object]]:
    """name → (every text of the figure, the figure's axes), the figures closed again."""
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    out = {}
    with style():
        for name, fig in build(groups, **kw):
            fig.canvas.draw()
            out[name] = (" | ".join(t.get_text().replace("\n", " ") for t in fig.findobj(Text)), fig.axes)  # unwrapped
            plt.close(fig)
    return out


def test_single_run_has_no_band_and_no_ci_wording(sweep_dir):
    from matplotlib.collections import PolyCollection

    groups = load(sweep_dir / "length=kimi,seed=0")
    for kind in ("auto", "ci95", "sem"):
        figs = figure_texts(groups, band_kind=kind)
        assert set(figs) == {"curves", "pareto", "length_hist", "difficulty"}
        for name, (text, axes) in figs.items():
            assert "CI" not in text and "confidence" not in text and "s.e.m." not in text, (name, text)
            assert "single run" in text, name
            assert not any(isinstance(c, PolyCollection) for ax in axes for c in ax.collections), name  # no bands
            assert not any(ax.containers and any(getattr(c, "has_yerr", False) or getattr(c, "errorbar", None)
                                                 for c in ax.containers) for ax in axes), name  # no error bars


def test_sweep_figures_state_seeds_and_band(sweep_dir):
    from matplotlib.collections import PolyCollection

    groups = load(sweep_dir)  # 2 settings × 3 seeds
    figs = figure_texts(groups)
    for name in ("curves", "length_budget", "pareto", "difficulty"):
        text = figs[name][0]
        assert "n=3 seeds per setting" in text and "min–max over seeds" in text and "CI" not in text, name
    assert "pooled over 3 seeds per setting" in figs["length_hist"][0]
    bands = [c for ax in figs["curves"][1] for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 6 * 2  # one band per setting in each of the 6 panels
    assert sum(getattr(c, "has_yerr", False) for c in figs["pareto"][1][0].containers) == 2  # one per setting
    assert "95% CI of the mean (t)" in figure_texts(groups, band_kind="ci95")["pareto"][0]
    assert "±1 s.e.m." in figure_texts(groups, band_kind="sem")["difficulty"][0]


def test_curves_one_panel_per_reward_component(sweep_dir):
    groups = load(sweep_dir)
    text, axes = figure_texts(groups)["curves"]
    titles = [ax.get_title() for ax in axes]
    assert titles == ["reward (total)", "reward: correctness (raw)", "reward: length (raw)", "training accuracy",
                      "mean length (tokens)", "truncation rate"]
    for ax in axes:
        means = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
        assert len(means) == len(groups)  # one mean curve per setting, of one metric
    correctness, length = axes[1], axes[2]
    assert correctness.get_ylim()[0] > 0.5 and length.get_ylim()[1] < 0.1  # their own scales, not a shared one
    acc_lo, acc_hi = axes[3].get_ylim()
    assert acc_hi - acc_lo >= 0.1 and axes[4].get_ylim()[0] == 0.0


def test_range_band_contains_the_mean_of_equal_values():
    """Six equal step-0 accuracies: their float mean can differ from each by an ulp; the band must hold it
    (a negative error bar made matplotlib raise)."""
    from rshape.plot import spread

    vals = [0.346] * 3
    assert sum(vals) / 3 < 0.346  # 0.34599999999999990: the float mean is below every value
    m, lo, hi = spread(vals, "range")
    assert lo <= m <= hi and m - lo >= 0 and hi - m >= 0
