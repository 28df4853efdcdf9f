"""`rshape plot`: every figure from synthetic run directories, opened back as images of the right size."""

import json
import math
import random
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from rshape.plot import DPI, PlotError, curve_metrics, load, mean_ci, pareto_front, plot, smooth


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
    m, h = mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3, t(0.975, 2) = 4.303
    assert m == 2.0 and h == pytest.approx(4.303 / math.sqrt(3))
    assert mean_ci([5.0]) == (5.0, 0.0)
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
    res = runner.invoke(app, ["plot", str(tmp_path / "empty-nothing")])
    assert res.exit_code == 2 and "error:" in res.output
    res = runner.invoke(app, ["results", str(sweep_dir), "--rank-by", "tokens"])
    assert res.exit_code == 0, res.output
    assert "★ **length=tlts**" in (sweep_dir / "results.md").read_text()
