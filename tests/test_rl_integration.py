"""`rshape rl` end to end on a random tiny model: files, reproducibility, resume equivalence, QLoRA."""

import json
import math

import pytest
import torch

from rshape.recipe import ModelConfig, Recipe
from rshape.rl.loop import train
from rshape.runs import RunDirError, read_jsonl

TIMING_PREFIX = "perf/"


def tiny_recipe(model_dir, out, steps=4, **over):
    data = {
        "seed": 0, "output_dir": str(out), "threads": 1,
        "model": {"name": model_dir, "lora": {"enabled": True, "r": 4, "alpha": 8}},
        "task": {"difficulties": [1, 2], "train_per_difficulty": 50, "eval_per_difficulty": 4},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 12},
        "rewards": {"correctness": {"weight": 1.0}, "format": {"weight": 0.2}, "length": {"weight": 0.4}},
        "optim": {"lr": 0.01},
        "train": {"steps": steps, "checkpoint_every": 2, "progress": False, "log_samples": 1},
        "eval": {"every": 2},
    }
    for key, value in over.items():
        node = data
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return Recipe.model_validate(data)


def comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIX)} for r in records]


def test_run_writes_everything(random_model_dir, tmp_path):
    summary = train(tiny_recipe(random_model_dir, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("recipe.yaml", "manifest.json", "metrics.jsonl", "samples.jsonl", "eval.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    m = metrics[0]
    for key in ("reward/total", "reward/correctness/raw", "reward/length/weighted", "accuracy", "length/mean",
                "length/p50", "length/p90", "truncation_rate", "loss/kl", "policy/entropy", "policy/clip_frac_low",
                "optim/grad_norm", "perf/tokens_per_s", "perf/step_time", "accuracy/difficulty_1"):
        assert key in m, key
    # the logged total is the weighted sum of the logged weighted components
    weighted = sum(m[f"reward/{c}/weighted"] for c in ("correctness", "format", "length"))
    assert m["reward/total"] == pytest.approx(weighted, abs=1e-6)
    assert [e["step"] for e in read_jsonl(run / "eval.jsonl")] == [0, 2, 4]
    assert summary["final_eval"]["eval/accuracy"] == read_jsonl(run / "eval.jsonl")[-1]["eval/accuracy"]
    assert (run / "checkpoints" / "latest").read_text() == "step_000004"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["versions"]["torch"]
    with pytest.raises(RunDirError):  # never overwrite a run silently
        train(tiny_recipe(random_model_dir, run))


def test_same_seed_same_metrics(random_model_dir, tmp_path):
    train(tiny_recipe(random_model_dir, tmp_path / "a", steps=3))
    train(tiny_recipe(random_model_dir, tmp_path / "b", steps=3))
    a, b = read_jsonl(tmp_path / "a" / "metrics.jsonl"), read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert comparable(a) == comparable(b)
    c = tiny_recipe(random_model_dir, tmp_path / "c", steps=3, seed=1)
    train(c)
    assert comparable(read_jsonl(tmp_path / "c" / "metrics.jsonl")) != comparable(a)


@pytest.mark.parametrize("extra", [{}, {"algorithm.epochs": 2, "algorithm.minibatches": 2, "algorithm.kl_beta": 0.05}])
def test_resume_equivalence(random_model_dir, tmp_path, extra):
    straight = tmp_path / "straight"
    train(tiny_recipe(random_model_dir, straight, steps=4, **extra))
    split = tmp_path / "split"
    train(tiny_recipe(random_model_dir, split, steps=2, **extra))
    train(tiny_recipe(random_model_dir, split, steps=4, **extra), resume=True)
    for name in ("metrics.jsonl", "eval.jsonl"):
        s, r = read_jsonl(straight / name), read_jsonl(split / name)
        if name == "eval.jsonl":  # the split run also evaluated at its old end, step 2, which straight did too
            assert [e["step"] for e in r] == [0, 2, 4]
        assert comparable(s) == comparable(r), name


@pytest.mark.parametrize("where", ["final_evaluation", "summary"])
def test_a_run_stopped_after_its_last_checkpoint_is_finished_by_resume(random_model_dir, tmp_path, monkeypatch, where):
    """Killed during the final evaluation, or after it but before summary.json: --resume runs the final
    evaluation again and writes the summary; every log equals an uninterrupted run's."""
    from rshape.rl.session import RunSession

    straight = tmp_path / "straight"
    want = train(tiny_recipe(random_model_dir, straight, steps=4))
    stopped = tmp_path / "stopped"
    real_evaluate, real_finish = RunSession.evaluate, RunSession.finish

    def evaluate(self, step):
        m = real_evaluate(self, step)
        if where == "final_evaluation" and step == 4:
            raise KeyboardInterrupt  # after eval.jsonl got the final record: the worst place
        return m

    def finish(self, final_eval, steps):
        if where == "summary":
            raise KeyboardInterrupt
        return real_finish(self, final_eval, steps)

    monkeypatch.setattr(RunSession, "evaluate", evaluate)
    monkeypatch.setattr(RunSession, "finish", finish)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe(random_model_dir, stopped, steps=4))
    assert not (stopped / "summary.json").exists()
    monkeypatch.setattr(RunSession, "evaluate", real_evaluate)
    monkeypatch.setattr(RunSession, "finish", real_finish)
    got = train(tiny_recipe(random_model_dir, stopped, steps=4), resume=True)
    assert got["final_eval"] == want["final_eval"] and got["first_eval"] == want["first_eval"]
    for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
        assert comparable(read_jsonl(stopped / name)) == comparable(read_jsonl(straight / name)), name
    with pytest.raises(RunDirError, match="already trained 4 steps"):  # finished now: nothing more to do
        train(tiny_recipe(random_model_dir, stopped, steps=4), resume=True)


def test_resume_drops_a_torn_last_line(random_model_dir, tmp_path, capfd):
    """A partial write at the end of metrics.jsonl (full disk, kill mid-write) is dropped with a notice on resume."""
    straight = tmp_path / "straight"
    train(tiny_recipe(random_model_dir, straight, steps=4))
    split = tmp_path / "split"
    train(tiny_recipe(random_model_dir, split, steps=2))
    with open(split / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss/tot')  # torn: no closing brace, no newline
    train(tiny_recipe(random_model_dir, split, steps=4), resume=True)
    assert "dropped a torn last line" in capfd.readouterr().err
    assert comparable(read_jsonl(split / "metrics.jsonl")) == comparable(read_jsonl(straight / "metrics.jsonl"))
    from rshape.runs import truncate_jsonl_after_step

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"step": 1}\n{"step": 2, oops\n{"step": 3}\n')
    with pytest.raises(RunDirError, match=r"broken.jsonl:2: not a JSON record"):
        truncate_jsonl_after_step(broken, 2)


def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(random_model_dir, tmp_path, monkeypatch):
    import rshape.rl.step as step_module
    from rshape.rl.step import NonFiniteError

    real_loss, real_update = step_module.clipped_policy_loss, step_module.policy_update
    current = {"step": 0}

    def update(policy, ro, advantages, recipe, optimizer, params, step, *rest):
        current["step"] = step
        return real_update(policy, ro, advantages, recipe, optimizer, params, step, *rest)

    def poisoned(*args, **kwargs):
        terms = real_loss(*args, **kwargs)
        if current["step"] == 3:  # step 3 of a run checkpointed every 2 steps
            terms.loss = terms.loss + float("inf")
        return terms

    monkeypatch.setattr(step_module, "policy_update", update)
    monkeypatch.setattr(step_module, "clipped_policy_loss", poisoned)
    out = tmp_path / "poisoned"
    with pytest.raises(NonFiniteError, match=r"step 3: the loss is (-?inf|nan) \(not finite\)"):
        train(tiny_recipe(random_model_dir, out, steps=4))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000002"  # the last good state
    assert not (out / "summary.json").exists()
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2]


def test_non_finite_recipe_numbers_and_rewards_are_refused(tmp_path):
    from rshape.recipe import RecipeError
    from rshape.rewards import RewardRuntimeError, build_rewards
    from rshape.validate import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("rewards:\n  correctness: {weight: .inf}\n  format: {weight: 0.2, constraint: {at_least: .nan}}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p, ["optim.lr=.inf", "algorithm.kl_beta=.inf", "rollout.temperature=.nan",
                        "algorithm.advantage=drpo", "algorithm.advantage_params.tau=.inf"])
    text = "\n".join(exc.value.lines)
    for key in ("optim.lr", "algorithm.kl_beta", "rollout.temperature", "rewards.correctness.weight",
                "rewards.format.constraint", "algorithm.advantage_params.tau"):
        assert key in text, key
    from conftest import make_reward_batch

    for fn, message in (("returns_inf", "returned inf for completion 0; rewards must be finite"),
                        ("returns_text", "returned '0.5' for completion 0, not a number")):
        with pytest.raises(RewardRuntimeError, match=message):
            build_rewards({"u": {"type": f"user_rewards:{fn}"}}).score(make_reward_batch([1, 2], [1, 0], 2))


def test_resume_refuses_a_different_recipe_unless_accepted(random_model_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_recipe(random_model_dir, run, steps=2))
    with pytest.raises(RunDirError) as exc:
        train(tiny_recipe(random_model_dir, run, steps=4, **{"optim.lr": 0.05, "rollout.group_size": 2}), resume=True)
    lines = str(exc.value).splitlines()
    assert lines[1:3] == ["  optim.lr: 0.01 → 0.05", "  rollout.group_size: 4 → 2"] and "--accept-changes" in lines[-1]
    assert not (run / "recipe_changes.jsonl").exists() and [e["step"] for e in read_jsonl(run / "eval.jsonl")] == [0, 2]
    # safe keys (train.steps, eval.*) need no flag; every accepted change is recorded with its step
    train(tiny_recipe(random_model_dir, run, steps=3, **{"eval.every": 3}), resume=True)
    assert [(c["step"], c["key"], c["old"], c["new"]) for c in read_jsonl(run / "recipe_changes.jsonl")] == [
        (2, "eval.every", 2, 3), (2, "train.steps", 2, 3)]
    train(tiny_recipe(random_model_dir, run, steps=4, **{"eval.every": 3, "optim.lr": 0.05}), resume=True,
          accept_changes=True)
    changes = read_jsonl(run / "recipe_changes.jsonl")
    assert [(c["step"], c["key"]) for c in changes[2:]] == [(3, "optim.lr"), (3, "train.steps")]
    assert "lr: 0.05" in (run / "recipe.yaml").read_text()  # recipe.yaml describes the run as it continued


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(random_model_dir, tmp_path, signame):
    """A real signal to `rshape rl`: the current step finishes, its checkpoint is written, one line says how to
    resume (exit 128 + signal); --resume then gives the metrics of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    run = tmp_path / "run"
    data = tiny_recipe(random_model_dir, run, steps=400).model_dump(mode="json")
    data["train"]["checkpoint_every"] = 1000  # no scheduled checkpoint: only the signal writes one
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rshape.cli", "rl", str(recipe)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while (not metrics.is_file() or len(metrics.read_text().splitlines()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signal, signame), err
    done = len(read_jsonl(metrics))
    assert f"stopped by {signame} after step {done}; its checkpoint is written" in err and "--resume" in err
    assert "Traceback" not in err
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{done:06d}"
    resumed = train(tiny_recipe(random_model_dir, run, steps=done + 1, **{"train.checkpoint_every": 1000}), resume=True)
    straight = train(tiny_recipe(random_model_dir, tmp_path / "straight", steps=done + 1,
                                 **{"train.checkpoint_every": 1000}))
    assert comparable(read_jsonl(metrics)) == comparable(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    assert resumed["final_eval"] == straight["final_eval"]


def test_unwritable_output_and_a_full_disk_are_one_line_and_lose_nothing(random_model_dir, tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    import rshape.runs as runs

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if "readonly" in str(self):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(RunDirError, match="cannot create the run directory \\(Read-only file system\\); choose a writable"):
        train(tiny_recipe(random_model_dir, tmp_path / "readonly" / "run"))
    monkeypatch.setattr(Path, "mkdir", real_mkdir)
    run = tmp_path / "full"
    real_save = runs.torch.save

    def full_disk(obj, path, *args, **kwargs):
        if "step_000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(runs.torch, "save", full_disk)
    with pytest.raises(RunDirError, match="could not write the checkpoint of step 4 \\(No space left on device\\); the "
                                          "previous checkpoint is intact"):
        train(tiny_recipe(random_model_dir, run, steps=4))
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert not list((run / "checkpoints").glob(".step_*.tmp"))  # the partial checkpoint is removed
    monkeypatch.setattr(runs.torch, "save", real_save)
    train(tiny_recipe(random_model_dir, run, steps=4), resume=True)  # space freed: the run continues
    assert (run / "summary.json").is_file()


def _kill_and_resume_until_finished(run, recipe, kill_when, tmp_path):
    """Start `rshape rl` (with --resume once a checkpoint exists) and SIGKILL it when each `kill_when()` first holds,
    in order; then resume until summary.json is written. A run killed before its first checkpoint starts again."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    latest = run / "checkpoints" / "latest"
    for when in kill_when:
        resume = latest.is_file()
        if not resume and run.exists():
            shutil.rmtree(run)  # killed before its first checkpoint: nothing to resume from
        proc = subprocess.Popen([sys.executable, "-m", "rshape.cli", "rl", str(recipe), *(["--resume"] if resume else [])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        started = time.monotonic()
        while proc.poll() is None and not when(time.monotonic() - started) and time.monotonic() - started < 180:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if (run / "summary.json").is_file():
            break
    while not (run / "summary.json").is_file():
        if not latest.is_file() and run.exists():
            shutil.rmtree(run)
        out = subprocess.run([sys.executable, "-m", "rshape.cli", "rl", str(recipe),
                              *(["--resume"] if latest.is_file() else [])], capture_output=True, text=True, env=env,
                             timeout=300)
        assert out.returncode == 0, out.stderr


def _assert_logs_equal(run, straight, note=""):
    for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
        assert comparable(read_jsonl(run / name)) == comparable(read_jsonl(straight / name)), f"{name} {note}"
    assert json.loads((run / "summary.json").read_text())["final_eval"] == \
        json.loads((straight / "summary.json").read_text())["final_eval"], note


def _recipe_file(random_model_dir, tmp_path, run, steps):
    import yaml

    recipe = tmp_path / f"{run.name}.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(random_model_dir, run, steps=steps).model_dump(mode="json")))
    return recipe


def test_kill_9_at_any_point_then_resume_gives_the_uninterrupted_run(random_model_dir, tmp_path):
    """Fault injection with real SIGKILLs: mid-training, right after a checkpoint, and between the last checkpoint
    and summary.json. After each kill `rshape rl --resume` continues (a run killed before its first checkpoint is
    started again); the finished run's logs equal an uninterrupted run's."""
    run = tmp_path / "killed"
    recipe = _recipe_file(random_model_dir, tmp_path, run, steps=6)
    latest = run / "checkpoints" / "latest"

    def metrics_lines() -> int:
        f = run / "metrics.jsonl"
        return len(f.read_text().splitlines()) if f.is_file() else 0

    kill_when = [  # the moments to SIGKILL at, in order
        lambda _: metrics_lines() >= 1,
        lambda _: latest.is_file() and latest.read_text().strip() == "step_000004",
        lambda _: latest.is_file() and latest.read_text().strip() == "step_000006",  # final evaluation under way
    ]
    _kill_and_resume_until_finished(run, recipe, kill_when, tmp_path)
    train(tiny_recipe(random_model_dir, tmp_path / "straight", steps=6))
    _assert_logs_equal(run, tmp_path / "straight")


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_run(random_model_dir, tmp_path):
    """SIGKILL at random moments (uniform over the start-up, the steps, the checkpoint writes and the final
    evaluation of each attempt; the seed is in the failure message, RSHAPE_FAULT_SEED replays it) until the run
    finishes; its logs and final evaluation equal an uninterrupted run's."""
    import os
    import random
    import time

    seed = int(os.environ.get("RSHAPE_FAULT_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    straight = tmp_path / "straight"
    started = time.monotonic()  # the uninterrupted run, in a process like the killed ones: its duration bounds the kills
    _kill_and_resume_until_finished(straight, _recipe_file(random_model_dir, tmp_path, straight, steps=6), [], tmp_path)
    full = time.monotonic() - started
    run = tmp_path / "killed"
    delays = [round(rng.uniform(0.0, full), 2) for _ in range(4)]
    _kill_and_resume_until_finished(run, _recipe_file(random_model_dir, tmp_path, run, steps=6),
                                    [lambda t, d=d: t >= d for d in delays], tmp_path)
    _assert_logs_equal(run, straight, note=f"(RSHAPE_FAULT_SEED={seed}: kills {delays} s after each start)")


def test_resume_without_checkpoint_is_a_clear_error(random_model_dir, tmp_path):
    with pytest.raises(RunDirError, match="no checkpoint found there; nothing to resume"):
        train(tiny_recipe(random_model_dir, tmp_path / "none"), resume=True)
    stopped = tmp_path / "stopped"  # a run killed before its first checkpoint: logs, no checkpoint
    stopped.mkdir()
    (stopped / "metrics.jsonl").write_text('{"step": 1}\n')
    for resume in (False, True):
        with pytest.raises(RunDirError, match="stopped before its first checkpoint: delete it or choose another"):
            train(tiny_recipe(random_model_dir, stopped), resume=resume)
    assert (stopped / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing it had written is lost
    damaged = tmp_path / "damaged"  # a checkpoint damaged outside rshape (a truncated copy): one line, what to do
    (damaged / "checkpoints" / "step_000002").mkdir(parents=True)
    (damaged / "checkpoints" / "step_000002" / "state.pt").write_bytes(b"")
    (damaged / "checkpoints" / "latest").write_text("step_000002")
    with pytest.raises(RunDirError, match=r"state.pt: cannot be read \(EOFError.*delete step_000002 and write an "
                                          r"earlier step_\* into"):
        train(tiny_recipe(random_model_dir, damaged), resume=True)


def test_qlora_base_frozen_adapters_train(tmp_path):
    """4-bit NF4 base (bitsandbytes) + LoRA, for real on the CPU."""
    import bitsandbytes as bnb
    from conftest import make_random_model

    from rshape.models import load_policy

    random_model_dir = make_random_model(tmp_path / "m64", hidden=64)  # bnb's CPU kernels want 64-wide blocks

    cfg = ModelConfig(name=random_model_dir, load_in_4bit=True, lora={"r": 4, "alpha": 8})
    policy = load_policy(cfg, torch.device("cpu"), torch.float32)
    four_bit = [m for m in policy.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no 4-bit layers were loaded"
    from rshape.rl.fast_decode import fast_decoder

    assert "4-bit" in fast_decoder(policy.model)  # generation falls back to the model's forward (no dequantising)
    lora_names = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in n for n in lora_names)
    recipe = tiny_recipe(random_model_dir, tmp_path / "q", steps=2, **{"model.load_in_4bit": True})
    train(recipe)  # the whole loop runs on a 4-bit base
    from rshape.rl.rollout import rollout
    from rshape.rl.sampling import sample_keys
    from rshape.rl.step import policy_update
    from rshape.tasks.arithmetic import make_problem

    problems = [make_problem(12, 34), make_problem(5, 6)]
    ro = rollout(policy.model, policy.tokenizer, problems, group_size=2, max_new_tokens=8,
                 keys=sample_keys(0, 1, [p.id for p in problems for _ in range(2)], [0, 1, 0, 1]))
    probe = ro.prompt_ids[:1]

    def base_logits():
        with torch.no_grad(), policy.reference() as ref:
            return ref(input_ids=probe).logits.clone()

    # bitsandbytes repacks 4-bit weights for its CPU kernel on the first forward, so snapshot after one
    base_before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    ref_before = base_logits()
    params = policy.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=0.05)
    policy_update(policy, ro, torch.tensor([1.0, -1.0, 0.5, -0.5]), recipe, opt, params, step=1)
    after = dict(policy.model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in base_before.items())
    assert any(not torch.equal(after[n], v) for n, v in lora_before.items())
    assert torch.equal(base_logits(), ref_before)  # the frozen base computes exactly what it did
    with policy.reference() as ref:  # adapters off: the same object, no copy
        assert ref is policy.model


def test_dynamic_sampling_stops_at_cap_with_constant_reward(random_model_dir, tmp_path):
    """Every group has zero reward std: the step must stop after max_rounds extra rounds and say so."""
    recipe = tiny_recipe(random_model_dir, tmp_path / "ds", steps=2, **{
        "rewards": {"const": {"type": "user_rewards:constant"}},
        "algorithm.dynamic_sampling": {"enabled": True, "max_rounds": 2}})
    train(recipe)
    for m in read_jsonl(tmp_path / "ds" / "metrics.jsonl"):
        assert m["sampling/zero_std_frac"] == 1.0
        assert m["sampling/extra_rounds"] == 2 and m["sampling/hit_cap"] == 1.0 and m["sampling/kept_groups"] == 0
        assert m["optim/skipped"] == 1.0


def test_dynamic_sampling_keeps_informative_groups(random_model_dir, tmp_path):
    recipe = tiny_recipe(random_model_dir, tmp_path / "ds2", steps=2, **{
        "rewards": {"len": {"type": "user_rewards:length_bonus"}},
        "algorithm.dynamic_sampling": {"enabled": True, "max_rounds": 3}})
    train(recipe)
    for m in read_jsonl(tmp_path / "ds2" / "metrics.jsonl"):
        assert m["sampling/kept_groups"] >= 2 and m["sampling/hit_cap"] == 0.0


@pytest.mark.parametrize("algo", [{"loss_agg": "dapo"}, {"loss_agg": "dr_grpo"}, {"ratio_level": "sequence"},
                                  {"entropy_coef": 0.01, "mask_truncated": True}, {"kl_beta": 0.1}])
def test_loss_modes_run(random_model_dir, tmp_path, algo):
    recipe = tiny_recipe(random_model_dir, tmp_path / "m", steps=2, **{f"algorithm.{k}": v for k, v in algo.items()})
    train(recipe)
    metrics = read_jsonl(tmp_path / "m" / "metrics.jsonl")
    assert len(metrics) == 2 and all(math.isfinite(m["loss/total"]) for m in metrics)


@pytest.mark.parametrize("estimator, params", [
    ("grpo", {}), ("dr_grpo", {}), ("rloo", {}), ("reinforce_pp_baseline", {}), ("batch_norm", {}),
    ("drpo", {}), ("canon", {}), ("canon", {"metric": "entropy"}), ("pref_grpo", {})])
def test_each_estimator_runs(random_model_dir, tmp_path, estimator, params):
    recipe = tiny_recipe(random_model_dir, tmp_path / "e", steps=2, **{"algorithm.advantage": estimator,
                                                                        "algorithm.advantage_params": params})
    train(recipe)
    metrics = read_jsonl(tmp_path / "e" / "metrics.jsonl")
    assert len(metrics) == 2 and all(math.isfinite(m["advantage/abs_mean"]) for m in metrics)


def test_estimator_needs_follow_params():
    from rshape.rl.advantages import ADVANTAGES, estimator_needs

    assert estimator_needs(ADVANTAGES.get("canon"), {}) == set()
    assert estimator_needs(ADVANTAGES.get("canon"), {"metric": "entropy"}) == {"seq_entropies"}
    assert estimator_needs(ADVANTAGES.get("drpo"), {}) == {"seq_logprobs"}
    assert estimator_needs(ADVANTAGES.get("grpo"), {}) == set()


def test_continue_from_saved_adapter(random_model_dir, tmp_path):
    """model.adapter loads a previous run's LoRA adapter, trainable, with the same weights."""
    from rshape.models import load_policy
    from rshape.runs import latest_checkpoint

    train(tiny_recipe(random_model_dir, tmp_path / "first", steps=2))
    ckpt = latest_checkpoint(tmp_path / "first")
    saved = torch.load(ckpt / "state.pt", weights_only=False)["trainable"]
    cfg = ModelConfig(name=random_model_dir, adapter=str(ckpt / "model"), lora={"r": 4, "alpha": 8})
    policy = load_policy(cfg, torch.device("cpu"), torch.float32)
    loaded = {k: v for k, v in policy.model.named_parameters() if v.requires_grad}
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


CURRICULUM = {
    "tracker": {"kind": "ema", "alpha": 0.5, "min_visits": 1},
    "stages": [{"name": "easy", "mixture_by": "label", "mixture": {1: 1.0}, "steps": 3}, {"name": "all"}],
    "retire": {"enabled": True, "threshold": 1.0, "min_visits": 1},
    "budgets": {"easy": 8, "medium": 10, "hard": 12, "unknown": 9},
}


def test_curriculum_resume_mid_stage_is_exact(random_model_dir, tmp_path):
    over = {"curriculum": CURRICULUM, "train.checkpoint_every": 2}
    straight = tmp_path / "straight"
    train(tiny_recipe(random_model_dir, straight, steps=5, **over))
    split = tmp_path / "split"
    train(tiny_recipe(random_model_dir, split, steps=2, **over))  # stops inside stage "easy"
    train(tiny_recipe(random_model_dir, split, steps=5, **over), resume=True)
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(split / "metrics.jsonl")
    assert comparable(a) == comparable(b)
    assert [m["curriculum/stage"] for m in a] == [0, 0, 0, 1, 1]
    assert all(m["accuracy/difficulty_1"] >= 0 and "accuracy/difficulty_2" not in m for m in a[:3])


def test_budget_schedule_drives_generation_limit(random_model_dir, tmp_path):
    over = {"schedules": {"budget": {"schedule": "step", "values": [12, 5], "milestones": [3]}},
            "rollout.max_new_tokens_from": "budget"}
    train(tiny_recipe(random_model_dir, tmp_path / "b", steps=4, **over))
    metrics = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [m["schedule/budget"] for m in metrics] == [12, 12, 5, 5]
    assert [m["rollout/max_new_tokens"] for m in metrics] == [12, 12, 5, 5]
    assert all(m["length/p90"] <= 5 for m in metrics[2:])


def test_budget_source_must_exist(tmp_path):
    from rshape.recipe import RecipeError
    from rshape.validate import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("rollout:\n  max_new_tokens_from: budget\n")
    with pytest.raises(RecipeError, match="no schedule named 'budget'"):
        load_recipe(p)


def test_two_phase_recipe_sft_then_rl(random_model_dir, tmp_path):
    """An SFT warm start, then an RL phase that starts from its adapter; resume skips the finished phases."""
    from rshape.phases import run_phases

    out = tmp_path / "phased"
    recipe = tiny_recipe(random_model_dir, out, steps=2, phases=[
        {"name": "warm", "kind": "sft", "sft": {"steps": 3, "batch_size": 4, "lr": 0.01}},
        {"name": "rl", "overrides": {"train.steps": 2, "rewards.length": {"type": "kimi_length", "weight": 0.2}}},
    ])
    summary = run_phases(recipe)
    assert [p["phase"] for p in summary["phases"]] == ["warm", "rl"]
    sft_metrics = read_jsonl(out / "1_warm" / "metrics.jsonl")
    assert [m["step"] for m in sft_metrics] == [1, 2, 3] and all(math.isfinite(m["sft/loss"]) for m in sft_metrics)
    rl_recipe = (out / "2_rl" / "recipe.yaml").read_text()
    assert str(out / "1_warm" / "checkpoints" / "step_000003" / "model") in rl_recipe  # started from the warm adapter
    saved = torch.load(out / "1_warm" / "checkpoints" / "step_000003" / "state.pt", weights_only=False)["trainable"]
    from rshape.models import load_policy
    from rshape.recipe import Recipe

    policy = load_policy(Recipe.model_validate(__import__("yaml").safe_load(rl_recipe)).model, torch.device("cpu"),
                         torch.float32)
    start = {k: v for k, v in policy.model.named_parameters() if v.requires_grad}
    assert all(torch.equal(start[k], saved[k]) for k in saved)
    assert len(read_jsonl(out / "2_rl" / "metrics.jsonl")) == 2
    before = (out / "2_rl" / "metrics.jsonl").read_text()
    run_phases(recipe, resume=True)  # everything finished: nothing reruns
    assert (out / "2_rl" / "metrics.jsonl").read_text() == before


def test_phase_errors_name_the_phase(tmp_path):
    from rshape.recipe import RecipeError
    from rshape.validate import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("phases:\n  - name: a\n    overrides: {train.stepz: 3}\n  - name: b\n    overrides: {rewards.x.type: nope}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert any("phases.0 (a): train.stepz: unknown key" in line for line in exc.value.lines)
    assert any("phases.1 (b)" in line and "unknown reward 'nope'" in line for line in exc.value.lines)


def test_resume_of_a_finished_run_is_refused(random_model_dir, tmp_path):
    train(tiny_recipe(random_model_dir, tmp_path / "done", steps=2))
    with pytest.raises(RunDirError, match="already trained 2 steps"):
        train(tiny_recipe(random_model_dir, tmp_path / "done", steps=2), resume=True)


def test_hapo_history_survives_checkpoint_and_resume(tmp_path):
    """HAPO's per-prompt history is saved in checkpoints and restored: resumed == straight, history non-empty."""
    over = {"model.name": "builtin:tiny-addition", "rewards": {"hapo": {"type": "hapo", "length_weight": 1.0}},
            "task.difficulties": [1], "task.train_per_difficulty": 6, "rollout.max_new_tokens": 40}
    train(tiny_recipe(None, tmp_path / "straight", steps=4, **over))
    train(tiny_recipe(None, tmp_path / "split", steps=2, **over))
    state = torch.load(tmp_path / "split" / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    assert state["reward_state"]["hapo"], "the built-in policy answers 1-digit sums: HAPO must have history"
    train(tiny_recipe(None, tmp_path / "split", steps=4, **over), resume=True)
    a = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert comparable(a) == comparable(b)
    assert any(m["reward/hapo/raw"] != m["accuracy"] for m in a[2:])  # the length term is active after step 2


def test_constrained_reward_multiplier_moves_in_the_loop(random_model_dir, tmp_path):
    over = {"rewards": {"format": {"weight": 0.2}, "correctness": {"constraint": {"at_least": 0.5, "lr": 1.0}}}}
    train(tiny_recipe(random_model_dir, tmp_path / "c", steps=3, **over))
    lam = [m["reward/correctness/lagrange"] for m in read_jsonl(tmp_path / "c" / "metrics.jsonl")]
    assert lam[0] == 0.0 and lam[1] == pytest.approx(0.5) and lam[2] == pytest.approx(1.0)  # a random model is never right


def test_publish_dir_swaps_without_touching_mapped_files(tmp_path):
    """Rebuilding a model directory must not write into files a running job has memory-mapped."""
    import mmap

    from rshape.runs import publish_dir

    out = tmp_path / "model"
    out.mkdir()
    (out / "w.bin").write_bytes(b"old-weights")
    with open(out / "w.bin", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        new = tmp_path / ".model.tmp"
        new.mkdir()
        (new / "w.bin").write_bytes(b"new-weights!")
        assert publish_dir(new, out) == out
        assert mapped[:] == b"old-weights"  # the running reader still sees a whole, unchanged file
    assert (out / "w.bin").read_bytes() == b"new-weights!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old directory left behind
    fresh = tmp_path / ".fresh.tmp"
    fresh.mkdir()
    publish_dir(fresh, tmp_path / "fresh")  # nothing there before
    assert (tmp_path / "fresh").is_dir()


def test_cpu_contention_warning_thresholds():
    from rshape.runs import cpu_contention_warning

    assert cpu_contention_warning(2, load=0.5, cores=2) is None  # an idle machine
    assert cpu_contention_warning(1, load=6.0, cores=2) is None  # one thread degrades gracefully
    warning = cpu_contention_warning(2, load=2.1, cores=2)
    assert warning.startswith("warning: the 1-min load average is 2.1 on 2 cores") and "threads: 1" in warning
    assert cpu_contention_warning(4, load=3.0, cores=8) is None


def test_interrupted_phases_resume(random_model_dir, tmp_path, monkeypatch):
    """An sft phase stopped mid-way resumes from its checkpoint to the same weights and losses as a straight
    run; a phase stopped before its first checkpoint starts again under --resume instead of failing."""
    import rshape.phases as phases

    sft = {"name": "warm", "kind": "sft", "sft": {"steps": 4, "batch_size": 4, "lr": 0.01}}
    rl = {"name": "rl", "overrides": {"train.steps": 2}}

    def recipe(out):
        return tiny_recipe(random_model_dir, out, steps=2, phases=[sft, rl])

    phases.run_phases(recipe(tmp_path / "straight"))
    real_loss, calls = phases.sft_loss, []

    def stop_at_third_step(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(*a, **kw)

    monkeypatch.setattr(phases, "sft_loss", stop_at_third_step)
    with pytest.raises(KeyboardInterrupt):
        phases.run_phases(recipe(tmp_path / "cut"))
    assert (tmp_path / "cut" / "1_warm" / "checkpoints" / "step_000002").is_dir()  # checkpoint_every: 2
    monkeypatch.setattr(phases, "sft_loss", real_loss)
    with pytest.raises(RunDirError, match="pass --resume"):
        phases.run_phases(recipe(tmp_path / "cut"))
    phases.run_phases(recipe(tmp_path / "cut"), resume=True)
    for name in ("1_warm", "2_rl"):
        a = read_jsonl(tmp_path / "straight" / name / "metrics.jsonl")
        b = read_jsonl(tmp_path / "cut" / name / "metrics.jsonl")
        assert comparable(a) == comparable(b)
        assert read_jsonl(tmp_path / "straight" / name / "eval.jsonl") == read_jsonl(tmp_path / "cut" / name / "eval.jsonl")
    final = "checkpoints/step_000004/state.pt"
    w1 = torch.load(tmp_path / "straight" / "1_warm" / final, weights_only=False)["trainable"]
    w2 = torch.load(tmp_path / "cut" / "1_warm" / final, weights_only=False)["trainable"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)

    calls.clear()
    monkeypatch.setattr(phases, "sft_loss", stop_at_third_step)
    early = tiny_recipe(random_model_dir, tmp_path / "early", steps=2, phases=[sft, rl], **{"train.checkpoint_every": 0})
    with pytest.raises(KeyboardInterrupt):
        phases.run_phases(early)
    assert not (tmp_path / "early" / "1_warm" / "checkpoints").exists()
    monkeypatch.setattr(phases, "sft_loss", real_loss)
    phases.run_phases(early, resume=True)  # nothing to continue from: the phase starts again
    assert [m["step"] for m in read_jsonl(tmp_path / "early" / "1_warm" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_process_reward_with_step_credit_trains(random_model_dir, tmp_path):
    """A `combine: per_step` process reward: token-level advantages flow through the loop and the update."""
    rewards = {"correctness": {"weight": 1.0},
               "steps": {"type": "process", "region": None, "step_pattern": "\\+", "refine": "delta",
                         "scorer": "user_rewards:step_lengths", "combine": "per_step", "weight": 0.1}}
    train(tiny_recipe(random_model_dir, tmp_path / "ps", steps=2, rewards=rewards))
    rows = read_jsonl(tmp_path / "ps" / "metrics.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert math.isfinite(r["loss/total"]) and math.isfinite(r["advantage/abs_mean"])
        assert r["reward/total"] == r["reward/correctness/weighted"]  # the process reward is not in the total
        assert "reward/steps/raw" in r


def test_full_fine_tuning_in_16_bits_without_masters_at_a_small_lr_is_warned():
    """bf16 weights without a float32 master copy (`optim.float32_master: false`): an AdamW step of lr 1e-6 rounds
    away for weights of typical size (checked here on the arithmetic itself), so such a recipe gets a warning; with
    the masters (the default), LoRA or float32 it does not."""
    from rshape.models import low_precision_update_warning
    from rshape.recipe import ModelConfig

    w = torch.full((1000,), 0.02, dtype=torch.bfloat16)
    assert torch.equal(w - torch.full_like(w, 1e-6), w)  # the step is lost
    full, lora = ModelConfig(lora={"enabled": False}), ModelConfig()
    warning = low_precision_update_warning(full, torch.bfloat16, 1e-6, float32_master=False)
    assert warning is not None and "float32_master" in warning and "\n" not in warning
    assert low_precision_update_warning(full, torch.bfloat16, 1e-6, float32_master=True) is None
    assert low_precision_update_warning(lora, torch.bfloat16, 1e-6, float32_master=False) is None
    assert low_precision_update_warning(full, torch.float32, 1e-6, float32_master=False) is None
    assert low_precision_update_warning(full, torch.bfloat16, 1e-3, float32_master=False) is None
