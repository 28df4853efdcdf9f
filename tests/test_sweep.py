"""`rshape sweep` and `rshape results`: axis expansion, names, validation, execution state, aggregation, Ray."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from rshape.recipe import parse_override
from rshape.results import ResultsError, aggregate, find_runs, write_results
from rshape.sweep import (
    SweepError,
    SweepInterrupted,
    SweepSpec,
    expand_settings,
    format_override,
    load_sweep,
    read_state,
    run_sweep,
    short_names,
    value_label,
)

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def tiny_recipe_yaml(path: Path, model: str) -> Path:
    """The settings of test_rl_integration.tiny_recipe: a trial takes seconds on one thread."""
    return write(path, f"""\
        seed: 0
        output_dir: unused
        threads: 1
        model: {{name: {model}, lora: {{enabled: true, r: 4, alpha: 8}}}}
        task: {{difficulties: [1, 2], train_per_difficulty: 50, eval_per_difficulty: 4}}
        rollout: {{prompts_per_step: 2, group_size: 4, max_new_tokens: 12}}
        rewards: {{correctness: {{weight: 1.0}}, format: {{weight: 0.2}}, length: {{weight: 0.4}}}}
        optim: {{lr: 0.01}}
        train: {{steps: 2, checkpoint_every: 2, progress: false, log_samples: 1}}
        eval: {{every: 2}}
        """)


# --------------------------------------------------------------------------- expansion and names


def test_grid_zip_random_expansion():
    spec = SweepSpec.model_validate({
        "base": "x.yaml",
        "grid": {"optim.lr": [1e-3, 3e-3], "rollout.group_size": [4, 8]},
        "zip": {"algorithm.clip_low": [0.1, 0.2], "algorithm.clip_high": [0.2, 0.28]},
        "random": {"count": 3, "seed": 7, "axes": {
            "algorithm.kl_beta": {"log_uniform": [1e-4, 1e-2]}, "model.lora.r": {"int_uniform": [2, 8]},
            "algorithm.entropy_coef": {"uniform": [0.0, 0.1]}, "optim.schedule": ["constant", "cosine"]}},
    })
    axes, settings = expand_settings(spec)
    assert [a.section for a in axes] == ["grid"] * 2 + ["zip"] * 2 + ["random"] * 4
    assert len(settings) == 2 * 2 * 2 * 3
    # grid: every combination, each once per (zip row, random draw)
    combos = {(s.values["optim.lr"], s.values["rollout.group_size"]) for s in settings}
    assert combos == {(1e-3, 4), (1e-3, 8), (3e-3, 4), (3e-3, 8)}
    # zip: paired, never crossed
    assert {(s.values["algorithm.clip_low"], s.values["algorithm.clip_high"]) for s in settings} == {(0.1, 0.2),
                                                                                                     (0.2, 0.28)}
    # random: 3 draws within their ranges, repeated identically under every grid/zip combination
    draws = {tuple(s.values[k] for k in ("algorithm.kl_beta", "model.lora.r", "algorithm.entropy_coef",
                                         "optim.schedule")) for s in settings}
    assert len(draws) == 3
    for beta, r, ent, sched in draws:
        assert 1e-4 <= beta <= 1e-2 and isinstance(r, int) and 2 <= r <= 8 and 0.0 <= ent <= 0.1
        assert sched in ("constant", "cosine")
        assert beta == float(f"{beta:.4g}")  # rounded, so the name shows exactly what runs
    # the same seed draws the same values, another seed other values
    again = expand_settings(spec)[1]
    assert [s.values for s in again] == [s.values for s in settings]
    other = SweepSpec.model_validate({**spec.model_dump(), "random": {**spec.random.model_dump(), "seed": 8}})
    assert [s.values for s in expand_settings(other)[1]] != [s.values for s in settings]
    assert len({s.name for s in settings}) == len(settings)


def test_random_draws_by_hand():
    import random

    spec = SweepSpec.model_validate({"base": "x.yaml", "random": {"count": 2, "seed": 3, "axes": {
        "optim.lr": {"log_uniform": [1e-4, 1e-2]}, "model.lora.r": [4, 8, 16]}}})
    rng = random.Random(3)
    expected = []
    for _ in range(2):
        lr = float(f"{math.exp(rng.uniform(math.log(1e-4), math.log(1e-2))):.4g}")
        r = [4, 8, 16][rng.randrange(3)]
        expected.append({"optim.lr": lr, "model.lora.r": r})
    assert [s.values for s in expand_settings(spec)[1]] == expected


def test_trial_names():
    assert value_label(0.001) == "0.001" and value_label(3e-4) == "0.0003" and value_label(1e-5) == "1e-05"
    assert value_label(True) == "true" and value_label("builtin:tiny-addition") == "builtin-tiny-addition"
    assert value_label({"type": "kimi_length", "weight": 0.4}) == "kimi_length" and value_label({}) == "none"
    assert value_label(-1) == "-1"
    assert short_names(["optim.lr", "rewards.length.type", "rewards.length.weight", "model.lora.r"]) == {
        "optim.lr": "lr", "rewards.length.type": "length.type", "rewards.length.weight": "length.weight",
        "model.lora.r": "lora.r"}
    assert short_names(["a.x.lr", "b.x.lr"]) == {"a.x.lr": "a.x.lr", "b.x.lr": "b.x.lr"}

    spec = SweepSpec.model_validate({
        "base": "x.yaml",
        "grid": {"optim.lr": [0.001, 0.01], "train.steps": [30]},  # a one-valued axis does not name trials
        "zip": {"rewards.length": {"kimi": {"type": "kimi_length"}, "tlts": {"type": "tlts_length"}},
                "schedules": [{}, {"budget": {"schedule": "constant", "value": 64}}]},  # labelled zip axis names it
    })
    _, settings = expand_settings(spec)
    assert [s.name for s in settings] == ["lr=0.001,length=kimi", "lr=0.001,length=tlts",
                                          "lr=0.01,length=kimi", "lr=0.01,length=tlts"]
    # two different dicts of one type get told apart by a hash
    spec = SweepSpec.model_validate({"base": "x.yaml", "grid": {
        "rewards.length": [{"type": "kimi_length", "weight": 0.2}, {"type": "kimi_length", "weight": 0.4}]}})
    a, b = (s.name for s in expand_settings(spec)[1])
    assert a.startswith("length=kimi_length-") and b.startswith("length=kimi_length-") and a != b
    assert expand_settings(SweepSpec.model_validate({"base": "x.yaml"}))[1][0].name == "base"


@pytest.mark.parametrize("value", [1e-5, 0.001, 3, -1, True, None, "cosine", "1e-3", "a: b", [1, 2],
                                   {"type": "tlts_length", "weight": 0.4, "shape": "band"}, {},
                                   {"budget": {"schedule": "exponential", "start": 80, "gamma": 0.75}}])
def test_override_round_trip(value):
    keys, parsed = parse_override(format_override("a.b", value))
    assert keys == ["a", "b"] and parsed == value and type(parsed) is type(value)


def test_sweep_file_errors_name_key_and_line(tmp_path):
    base = tiny_recipe_yaml(tmp_path / "base.yaml", "builtin:tiny-addition")
    f = write(tmp_path / "s.yaml", """\
        base: base.yaml
        grid:
          optim.lr: [0.001]
          seed: [1, 2]
        zip:
          a.b: [1, 2]
          c.d: [1]
        random: {count: 2, axes: {x.y: {uniform: [2, 1]}}}
        seedz: [0]
        """)
    with pytest.raises(SweepError) as exc:
        load_sweep(f)
    assert exc.value.lines == [f"{f}:8: random.axes.x.y: uniform: low must be ≤ high (got [2.0, 1.0])",
                               f"{f}:9: seedz: unknown key"]
    f = write(tmp_path / "s2.yaml", """\
        base: base.yaml
        grid:
          optim.lr: [0.001]
          seed: [1, 2]
        zip:
          a.b: [1, 2]
          c.d: [1]
        overrides: [output_dir=x, nonsense]
        """)
    with pytest.raises(SweepError) as exc:
        load_sweep(f)
    assert exc.value.lines == [
        f"{f}:4: grid.seed: not an axis: use `seeds:` for seeds",
        f"{f}:7: zip.c.d: 1 values but zip.a.b has 2; zip axes are paired and need equal lengths",
        f"{f}:8: overrides.0: output_dir is set by the sweep; use the sweep file's output_dir",
        f"{f}:8: overrides.1: override 'nonsense': expected key=value, e.g. train.steps=50"]
    with pytest.raises(SweepError, match="base: recipe file not found"):
        load_sweep(write(tmp_path / "s3.yaml", "base: nope.yaml\n"))
    with pytest.raises(SweepError, match=r"s4.yaml:2: rank_by: unknown ranking column 'speed'"):
        load_sweep(write(tmp_path / "s4.yaml", "base: base.yaml\nrank_by: speed\n"))
    assert load_sweep(write(tmp_path / "s5.yaml", "base: base.yaml\nrank_by: min:tokens_d4\n")).spec.rank_by
    assert base.is_file()


def test_invalid_trial_is_marked_not_fatal(tmp_path):
    tiny_recipe_yaml(tmp_path / "base.yaml", "builtin:tiny-addition")
    f = write(tmp_path / "s.yaml", f"""\
        base: base.yaml
        output_dir: {tmp_path / "out"}
        grid: {{optim.lr: [0.01, -1], rewards.length.type: [kimi_length, no_such_reward]}}
        seeds: [0, 1]
        """)
    sw = load_sweep(f)
    assert len(sw.trials) == 8
    bad = {t.name: t.error for t in sw.trials if t.error}
    assert set(bad) == {n for n in (t.name for t in sw.trials) if "lr=-1" in n or "no_such_reward" in n}
    assert bad["lr=-1,length.type=kimi_length,seed=0"] == "optim.lr: Input should be greater than 0 (got -1)"
    assert "unknown reward 'no_such_reward'" in bad["lr=0.01,length.type=no_such_reward,seed=1"]
    ok = next(t for t in sw.trials if not t.error)
    assert ok.name == "lr=0.01,length.type=kimi_length,seed=0" and ok.run_dir == tmp_path / "out" / ok.name
    assert ok.overrides == ["optim.lr=0.01", "rewards.length.type=kimi_length", "seed=0"]


# --------------------------------------------------------------------------- execution with stand-in trials

FAKE_RL = """
import json, os, signal, sys, time
run_dir, behaviour = sys.argv[1], sys.argv[2]
os.makedirs(run_dir, exist_ok=True)
open(os.path.join(run_dir, "pid"), "w").write(str(os.getpid()))
print("args:", sys.argv[3:], flush=True)
if behaviour == "ok":
    json.dump({"final_eval": {"eval/accuracy": 0.5, "eval/length": 10.0}}, open(os.path.join(run_dir, "summary.json"), "w"))
elif behaviour == "crash":
    print("error: something broke in this trial", file=sys.stderr); sys.exit(3)
elif behaviour == "traceback":
    raise RuntimeError("boom at step 3")
elif behaviour == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
elif behaviour == "slow":
    open(os.path.join(run_dir, "started"), "w").close()
    time.sleep(120)
    open(os.path.join(run_dir, "slept_to_the_end"), "w").close()
"""


def fake_sweep(tmp_path, n=4, seeds=(0,)):
    tiny_recipe_yaml(tmp_path / "base.yaml", "builtin:tiny-addition")
    return write(tmp_path / "s.yaml", f"""\
        base: base.yaml
        output_dir: {tmp_path / "out"}
        grid: {{optim.lr: {[round(0.001 * (i + 1), 3) for i in range(n)]}}}
        seeds: {list(seeds)}
        max_parallel: 2
        """)


def fake_command(behaviours, launched):
    script = FAKE_RL

    def command(sweep, trial, resume):
        launched.append((trial.name, resume))
        return ["-c", script, str(trial.run_dir), behaviours.get(trial.name, "ok"), *(["--resume"] if resume else [])]

    return command


def statuses(out):
    return {r["name"]: r["status"] for r in read_state(out)["trials"]}


def test_failures_are_recorded_and_rerun_retries_only_unfinished(tmp_path):
    f = fake_sweep(tmp_path, n=5)
    out = tmp_path / "out"
    behaviours = {"lr=0.002,seed=0": "crash", "lr=0.003,seed=0": "kill", "lr=0.004,seed=0": "traceback"}
    launched = []
    outcome = run_sweep(load_sweep(f), command=fake_command(behaviours, launched))
    assert not outcome.ok and len(launched) == 5
    assert statuses(out) == {"lr=0.001,seed=0": "done", "lr=0.002,seed=0": "failed", "lr=0.003,seed=0": "failed",
                             "lr=0.004,seed=0": "failed", "lr=0.005,seed=0": "done"}
    recs = {r["name"]: r for r in read_state(out)["trials"]}
    assert recs["lr=0.002,seed=0"]["error"] == "something broke in this trial"
    assert recs["lr=0.002,seed=0"]["returncode"] == 3
    assert recs["lr=0.003,seed=0"]["error"] == "killed by SIGKILL" and recs["lr=0.003,seed=0"]["returncode"] == -9
    assert recs["lr=0.004,seed=0"]["error"].startswith("RuntimeError: boom at step 3")
    assert "\nerror: something broke in this trial\n" in (out / "lr=0.002,seed=0" / "log.txt").read_text()
    assert outcome.summary_line().startswith(f"sweep {out}: 5 trials: 2 done, 3 failed; first failure lr=0.002,seed=0")
    assert (out / "results.csv").is_file() and (out / "results.md").is_file()

    # a checkpoint in one failed trial: it resumes; the other failed ones start from an empty directory
    ckpt = out / "lr=0.003,seed=0" / "checkpoints"
    (ckpt / "step_000002").mkdir(parents=True)
    (ckpt / "step_000002" / "state.pt").write_text("x")
    (ckpt / "latest").write_text("step_000002")
    (out / "lr=0.002,seed=0" / "partial.txt").write_text("stale")
    launched.clear()
    outcome = run_sweep(load_sweep(f), command=fake_command({}, launched))
    assert outcome.ok and set(statuses(out).values()) == {"done"}
    assert sorted(launched) == [("lr=0.002,seed=0", False), ("lr=0.003,seed=0", True), ("lr=0.004,seed=0", False)]
    assert not (out / "lr=0.002,seed=0" / "partial.txt").exists()
    assert {r["name"]: r["attempts"] for r in read_state(out)["trials"]}["lr=0.002,seed=0"] == 2
    launched.clear()
    assert run_sweep(load_sweep(f), command=fake_command({}, launched)).ok and launched == []  # all done: skipped


def test_changed_recipe_under_a_finished_trial_is_refused(tmp_path):
    f = fake_sweep(tmp_path, n=1)
    run_sweep(load_sweep(f), command=fake_command({}, []))
    with pytest.raises(SweepError, match="ran with a different recipe"):
        run_sweep(load_sweep(f, ["train.steps=3"]), command=fake_command({}, []))


def test_ctrl_c_stops_children_and_leaves_a_resumable_state(tmp_path):
    f = fake_sweep(tmp_path, n=3)
    out = tmp_path / "out"
    behaviours = {"lr=0.001,seed=0": "slow", "lr=0.002,seed=0": "slow"}

    def interrupt_when_started():
        deadline = time.time() + 60
        while deadline > time.time() and not all((out / n / "started").exists() for n in behaviours):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with pytest.raises(SweepInterrupted):
        run_sweep(load_sweep(f), command=fake_command(behaviours, []))
    assert not any((out / n / "slept_to_the_end").exists() for n in behaviours)  # stopped, not waited for
    assert statuses(out) == {"lr=0.001,seed=0": "interrupted", "lr=0.002,seed=0": "interrupted",
                             "lr=0.003,seed=0": "pending"}
    for name in behaviours:  # the children are gone
        pid = int((out / name / "pid").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    launched = []
    assert run_sweep(load_sweep(f), command=fake_command({}, launched)).ok
    assert sorted(n for n, _ in launched) == ["lr=0.001,seed=0", "lr=0.002,seed=0", "lr=0.003,seed=0"]


# --------------------------------------------------------------------------- results by hand


def fake_run(d: Path, acc, tokens, rewards, per_diff=None):
    d.mkdir(parents=True)
    final = {"step": len(rewards), "eval/accuracy": acc, "eval/length": tokens, "eval/truncation": 0.0}
    for k, (a, t) in (per_diff or {}).items():
        final[f"eval/accuracy/difficulty_{k}"] = a
        final[f"eval/length/difficulty_{k}"] = t
    (d / "summary.json").write_text(json.dumps({"first_eval": {**final, "step": 0}, "final_eval": final}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "reward/total": r}) + "\n"
                                             for i, r in enumerate(rewards)))


def test_results_aggregation_by_hand(tmp_path):
    out = tmp_path / "sweep"
    # setting A: accuracies 0.6, 0.8 → mean 0.7, std sqrt(0.02) ; tokens 40, 50 → 45 ± sqrt(50)
    # rewards: 20 steps, the final window is the last 2 → means 0.5 and 0.7 → 0.6 ± sqrt(0.02)
    fake_run(out / "m=a,seed=0", 0.6, 40.0, [0.0] * 18 + [0.4, 0.6], {1: (1.0, 20.0), 2: (0.2, 60.0)})
    fake_run(out / "m=a,seed=1", 0.8, 50.0, [9.0] * 18 + [0.7, 0.7], {1: (0.8, 30.0), 2: (0.8, 70.0)})
    # setting B: one finished seed (acc 0.7, 30 tokens), one failed
    fake_run(out / "m=b,seed=0", 0.7, 30.0, [1.0] * 10, {1: (0.9, 10.0), 2: (0.5, 50.0)})
    trials = [{"name": n, "setting": n.split(",")[0], "seed": int(n[-1]), "run_dir": n, "axes": {"m": n[2]},
               "status": "done"} for n in ("m=a,seed=0", "m=a,seed=1", "m=b,seed=0")]
    trials.append({"name": "m=b,seed=1", "setting": "m=b", "seed": 1, "run_dir": "m=b,seed=1", "axes": {"m": "b"},
                   "status": "failed", "error": "boom"})
    (out / "trials.json").write_text(json.dumps({"trials": trials}))

    rows, columns, col, higher = aggregate(find_runs(out))
    assert columns == ["accuracy", "tokens", "reward", "truncation", "accuracy_d1", "accuracy_d2", "tokens_d1",
                       "tokens_d2"]
    a, b = rows
    assert (a.setting, a.n_done, a.n_trials, b.n_done, b.n_trials) == ("m=a", 2, 2, 1, 2)
    assert a.stats["accuracy"] == pytest.approx((0.7, math.sqrt(0.02)))
    assert a.stats["tokens"] == pytest.approx((45.0, math.sqrt(50)))
    assert a.stats["reward"] == pytest.approx((0.6, math.sqrt(0.02)))
    assert a.stats["accuracy_d2"] == pytest.approx((0.5, math.sqrt(0.18)))
    assert b.stats["accuracy"] == (0.7, None) and b.stats["reward"] == (1.0, None)
    # accuracy ties at 0.7: fewer tokens wins
    assert (col, higher, a.best, b.best) == ("accuracy", True, False, True)

    rows, *_ = aggregate(find_runs(out), "accuracy_d2")
    assert [r.best for r in rows] == [False, True]  # 0.5 vs 0.5 tie → fewer tokens (b)
    rows, _, col, higher = aggregate(find_runs(out), "max:tokens")
    assert (col, higher, [r.best for r in rows]) == ("tokens", True, [True, False])
    rows, _, col, higher = aggregate(find_runs(out), "tokens")  # tokens rank lowest-first by default
    assert (col, higher, [r.best for r in rows]) == ("tokens", False, [False, True])
    rows, _, col, higher = aggregate(find_runs(out), "reward")
    assert [r.best for r in rows] == [False, True]
    with pytest.raises(ResultsError, match="unknown column"):
        aggregate(find_runs(out), "accuracy_d9")

    csv_path, md_path = write_results(out)
    table = list(csv.DictReader(open(csv_path)))
    assert [r["setting"] for r in table] == ["m=a", "m=b"] and table[0]["m"] == "a"
    assert float(table[0]["accuracy_mean"]) == pytest.approx(0.7) and table[1]["accuracy_std"] == ""
    assert [r["best"] for r in table] == ["0", "1"] and table[1]["seeds_done"] == "1"
    md = md_path.read_text()
    assert "| ★ **m=b** | 1/2 | **0.700** | 30.0 |" in md
    assert "| m=a | 2/2 | 0.700 ± 0.141 | 45.0 ± 7.1 | 0.600 ± 0.141 |" in md
    assert "- `m=b,seed=1`: failed — boom" in md


# --------------------------------------------------------------------------- the real command, real training


def run_cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rshape.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_real_sweep_cli_with_a_bad_trial(random_model_dir, tmp_path):
    tiny_recipe_yaml(tmp_path / "base.yaml", random_model_dir)
    f = write(tmp_path / "s.yaml", """\
        base: base.yaml
        output_dir: out
        grid: {optim.lr: [0.01, -1]}
        seeds: [0, 1]
        max_parallel: 2
        """)
    dry = run_cli("sweep", str(f), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "4 trials (2 settings × 2 seeds)" in dry.stdout and dry.stdout.count("invalid: optim.lr") == 2
    assert not (tmp_path / "out").exists()

    res = run_cli("sweep", str(f), cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"sweep {tmp_path / 'out'}: 4 trials: 2 done, 2 failed; first failure lr=-1,seed=0: "
                           "optim.lr: Input should be greater than 0 (got -1)")
    out = tmp_path / "out"
    assert statuses(out) == {"lr=0.01,seed=0": "done", "lr=0.01,seed=1": "done", "lr=-1,seed=0": "failed",
                             "lr=-1,seed=1": "failed"}
    for seed in (0, 1):
        run = out / f"lr=0.01,seed={seed}"
        assert (run / "summary.json").is_file() and "eval (greedy, held-out, " in (run / "log.txt").read_text()
        assert yaml.safe_load((run / "recipe.yaml").read_text())["seed"] == seed
    assert not (out / "lr=-1,seed=0").exists()
    table = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["setting"], r["seeds_done"], r["best"]) for r in table] == [("lr=0.01", "2", "1"), ("lr=-1", "0", "0")]

    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    again = run_cli("sweep", str(f), cwd=tmp_path)  # finished trials are skipped
    assert again.returncode == 1 and "2 trial(s) already done, skipped" in again.stderr
    assert "start " not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")} == mtimes


def test_ray_backend_two_trials(random_model_dir, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'rshape[sweep-ray]'")
    tiny_recipe_yaml(tmp_path / "base.yaml", random_model_dir)
    f = write(tmp_path / "s.yaml", f"""\
        base: base.yaml
        output_dir: {tmp_path / "out"}
        grid: {{rewards.length.weight: [0.2, 0.4]}}
        seeds: [0]
        ray: {{num_cpus: 1}}
        """)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome = run_sweep(load_sweep(f), backend="ray")
    finally:
        ray.shutdown()
    assert outcome.ok, outcome.summary_line()
    out = tmp_path / "out"
    assert statuses(out) == {"length.weight=0.2,seed=0": "done", "length.weight=0.4,seed=0": "done"}
    for name in statuses(out):
        assert yaml.safe_load((out / name / "recipe.yaml").read_text())["rewards"]["length"]["weight"] in (0.2, 0.4)
    assert (out / "results.md").is_file()


def test_orphan_of_a_killed_driver_is_stopped_before_the_retry(tmp_path):
    f = fake_sweep(tmp_path, n=1)
    out = tmp_path / "out"
    sw = load_sweep(f)
    trial = sw.trials[0]
    # what a driver killed with SIGKILL leaves behind: `running` in trials.json and a live child in its own session
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "rshape.cli",
                               format_override("output_dir", str(trial.run_dir))], start_new_session=True)
    while b"rshape.cli" not in Path(f"/proc/{orphan.pid}/cmdline").read_bytes():  # until exec has completed
        time.sleep(0.05)
    trial.run_dir.mkdir(parents=True)
    (out / "trials.json").write_text(json.dumps({"trials": [{"name": trial.name, "run_dir": trial.name,
                                                             "status": "running", "pid": orphan.pid,
                                                             "backend": "local", "attempts": 1}]}))
    launched = []
    assert run_sweep(sw, command=fake_command({}, launched)).ok
    assert orphan.wait(timeout=5) == -signal.SIGTERM and launched == [(trial.name, False)]  # stopped by a signal


def test_a_retried_trial_reports_its_latest_error(tmp_path):
    from rshape.sweep.run import ATTEMPT_MARK, last_error

    log = tmp_path / "log.txt"
    log.write_text(f"{ATTEMPT_MARK} 1 (start, t0)\nstep 1\nerror: out of memory\n"
                   f"{ATTEMPT_MARK} 2 (resume, t1)\nerror: reward 'x' (user) at step 3: boom\n")
    assert last_error(log, 1) == "reward 'x' (user) at step 3: boom"
    log.write_text(f"{ATTEMPT_MARK} 1 (start, t0)\nerror: old\n{ATTEMPT_MARK} 2 (start, t1)\n")
    assert last_error(log, -9) == "killed by SIGKILL"  # the new attempt said nothing: not the old error
    log.write_text("error: before markers existed\n")
    assert last_error(log, 1) == "before markers existed"
