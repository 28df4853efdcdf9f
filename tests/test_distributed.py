"""Data-parallel ranks (rshape.rl.distributed): 2 gloo processes × 1 thread under torchrun give the run of one
process — the same completions, metrics (with minibatches, KL and dynamic-sampling refills), evaluations and trained
weights — and resume across layouts."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from test_rl_integration import comparable, tiny_recipe

from rshape.rl.distributed import Ranks
from rshape.rl.loop import train
from rshape.runs import read_jsonl


def test_shares_are_contiguous_whole_and_balanced():
    for n in (1, 4, 5, 7, 64):
        for world in (1, 2, 3):
            parts = [Ranks(r, world).share(n) for r in range(world)]
            covered = [i for s in parts for i in range(n)[s]]
            assert covered == list(range(n))  # in order, nothing twice, nothing left out
            sizes = [len(range(n)[s]) for s in parts]
            assert max(sizes) - min(sizes) <= 1


def run_rl(recipe_file, out, nproc=1, resume=False):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launcher = ([shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun"),
                 "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable])
    cmd = [*launcher, "-m", "rshape.cli", "rl", str(recipe_file), f"output_dir={out}", *(["--resume"] if resume else [])]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def recipes(random_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    files = {}
    for name, steps in (("four", 4), ("two", 2)):
        data = tiny_recipe(random_model_dir, root / "unused", steps=steps).model_dump(mode="json")
        data["rollout"]["prompts_per_step"] = 4  # two whole groups per rank
        data["algorithm"]["minibatches"] = 2  # old log-probs shared across ranks, two optimizer steps per step
        data["algorithm"]["kl_beta"] = 0.05  # reference log-probs shared too
        data["algorithm"]["dynamic_sampling"] = {"enabled": True, "max_rounds": 2}  # refills drawn alike on every rank
        data["threads"] = 1
        files[name] = root / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(data))
    one = root / "one"
    train(tiny_recipe(random_model_dir, one, steps=4).model_validate(yaml.safe_load(files["four"].read_text())
                                                                     | {"output_dir": str(one)}))
    return root, files, one


def assert_same_run(a, b, rel=1e-5):
    for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
        ra, rb = comparable(read_jsonl(a / name)), comparable(read_jsonl(b / name))
        assert len(ra) == len(rb), name
        for x, y in zip(ra, rb):
            assert x.keys() == y.keys(), name
            for k in x:
                if isinstance(x[k], float) and isinstance(y[k], float):
                    assert y[k] == pytest.approx(x[k], rel=rel, abs=1e-7), (name, x["step"], k)
                else:
                    assert x[k] == y[k], (name, x["step"], k)  # completions, prompts, verdicts: exactly the same
    wa = torch.load(a / "checkpoints" / "step_000004" / "state.pt", weights_only=False)["trainable"]
    wb = torch.load(b / "checkpoints" / "step_000004" / "state.pt", weights_only=False)["trainable"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)


def test_two_ranks_give_the_one_process_run(recipes):
    root, files, one = recipes
    two = root / "two-ranks"
    result = run_rl(files["four"], two, nproc=2)
    assert result.stdout.count("run directory:") == 1  # only rank 0 prints the summary
    assert_same_run(one, two)
    assert json.loads((two / "summary.json").read_text())["final_eval"]["eval/problems"] == 8


def test_resume_across_layouts(recipes):
    root, files, one = recipes
    for first, then in ((2, 1), (1, 2)):
        out = root / f"from{first}to{then}"
        run_rl(files["two"], out, nproc=first)  # 2 steps with one layout...
        run_rl(files["four"], out, nproc=then, resume=True)  # ...then to 4 with the other (train.steps may grow)
        assert_same_run(one, out)


def test_two_ranks_with_float32_masters_give_the_one_process_run(random_model_dir, tmp_path):
    """bf16 full fine-tuning: the ranks sum the masters' float32 gradients, step the same masters and round the same
    weights as one process."""
    data = tiny_recipe(random_model_dir, tmp_path / "unused", steps=2, dtype="bfloat16",
                       **{"model.lora.enabled": False, "optim.lr": 3e-5}).model_dump(mode="json")
    data["rollout"]["prompts_per_step"] = 4
    data["threads"] = 1
    recipe = tmp_path / "bf16.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run_rl(recipe, tmp_path / "one")
    run_rl(recipe, tmp_path / "two", nproc=2)
    states = [torch.load(tmp_path / r / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
              for r in ("one", "two")]
    assert states[0]["masters"] and all(m.dtype == torch.float32 for m in states[0]["masters"])
    for a, b in zip(states[0]["masters"], states[1]["masters"]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)  # float32 sums in another order
    ra, rb = (comparable(read_jsonl(tmp_path / r / "samples.jsonl")) for r in ("one", "two"))
    assert [s["completion"] for s in ra] == [s["completion"] for s in rb]
