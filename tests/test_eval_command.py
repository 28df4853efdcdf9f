"""`rshape eval`: targets (run directories, checkpoints, adapters, models), one comparison over modes, and the
same numbers as the evaluation inside `rl`."""

import json

import pytest
from test_rl_integration import tiny_recipe
from typer.testing import CliRunner

from rshape.cli import app
from rshape.eval_targets import TargetError, resolve_target
from rshape.rl.loop import train


@pytest.fixture(scope="module")
def trained_run(random_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    train(tiny_recipe(random_model_dir, run, steps=2, **{"eval.every": 0}))
    return run


def test_targets_resolve_without_loading_anything(trained_run, random_model_dir, tmp_path):
    latest = resolve_target(str(trained_run))
    assert latest.label == "run@2" and latest.model.adapter == str(trained_run / "checkpoints" / "step_000002" / "model")
    assert latest.model.name == random_model_dir
    assert resolve_target(f"{trained_run}@2").model == latest.model
    start = resolve_target(f"{trained_run}@0")  # the model the run started from: no adapter
    assert start.label == "run@0" and start.model.adapter is None and not start.model.lora.enabled
    adapter = resolve_target(str(trained_run / "checkpoints" / "step_000002" / "model"))
    assert adapter.model.adapter is not None and adapter.model.name == random_model_dir  # base from adapter_config
    model = resolve_target(random_model_dir)
    assert model.model.name == random_model_dir and model.model.adapter is None
    with pytest.raises(TargetError, match=r"@1: no checkpoint at step 1; kept: step_000002"):
        resolve_target(f"{trained_run}@1")
    with pytest.raises(TargetError, match="no-such-org/no-such-model.*HF_HUB_OFFLINE=1"):
        resolve_target("no-such-org/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetError, match="not a run directory"):
        resolve_target(str(tmp_path / "empty"))


def test_eval_compares_checkpoints_and_modes_with_the_numbers_of_rl(trained_run, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", str(trained_run), f"{trained_run}@0", "--samples", "0", "--samples", "2",
                                      "--temperature", "0.7", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "accuracy (95% interval)" in result.output and "pass@2" in result.output and "run@0" in result.output
    rows = json.loads((out / "results.json").read_text())
    assert [(r["target"], r["samples"]) for r in rows] == [("run@2", 0), ("run@2", 2), ("run@0", 0), ("run@0", 2)]
    summary = json.loads((trained_run / "summary.json").read_text())
    first = json.loads((trained_run / "eval.jsonl").read_text().splitlines()[0])
    for row, logged in ((rows[0], summary["final_eval"]), (rows[2], first)):  # greedy = what rl logged
        for key in ("eval/accuracy", "eval/length", "eval/truncation"):
            assert row["metrics"][key] == pytest.approx(logged[key]), key
    sampled = [json.loads(line) for line in (out / "samples-1.jsonl").read_text().splitlines()]
    assert len(sampled) == 2 * rows[1]["metrics"]["eval/problems"] and rows[1]["temperature"] == 0.7
    by_problem = {}
    for r in sampled:
        by_problem.setdefault(r["id"], []).append(r["correct"])
    assert rows[1]["metrics"]["eval/pass@2"] == pytest.approx(sum(any(v) for v in by_problem.values()) / len(by_problem))
    assert rows[1]["metrics"]["eval/accuracy"] == pytest.approx(sum(sum(v) for v in by_problem.values()) / len(sampled))


def test_eval_mistakes_are_one_line_each(trained_run, tmp_path):
    result = CliRunner().invoke(app, ["eval", f"{trained_run}@7", str(tmp_path / "nothing-here"), "--samples", "-1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines == ["error: --samples -1: must be ≥ 0"]
    result = CliRunner().invoke(app, ["eval", f"{trained_run}@7", "no-such-org/x"])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "no checkpoint at step 7" in lines[0] and "no-such-org/x" in lines[1]
