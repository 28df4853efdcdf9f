"""Opt-in trackers (rshape.trackers), offline: a tiny run's TensorBoard event files and offline W&B run hold exactly
the scalars of metrics.jsonl / eval.jsonl (also across --resume), W&B's config is the resolved recipe; a missing
package is a one-line recipe error found without importing it; a failing tracker gives one warning and the run
finishes."""

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_rl_integration import tiny_recipe

from rshape.recipe import RecipeError
from rshape.rl.loop import train
from rshape.runs import read_jsonl
from rshape.trackers import WANDB_ID_FILE, Trackers, scalars

BOTH = {"trackers.tensorboard": True, "trackers.wandb.enabled": True, "trackers.wandb.mode": "offline"}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, and nothing of W&B's written outside tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def jsonl_scalars(run: Path, since: int = 0) -> dict[tuple[str, int], float]:
    """(name, step) → value of every finite number of metrics.jsonl and eval.jsonl (steps ≥ `since`)."""
    out: dict[tuple[str, int], float] = {}
    for name in ("metrics", "eval"):
        for record in read_jsonl(run / f"{name}.jsonl"):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value) and record["step"] >= since:
                    assert (key, record["step"]) not in out, "metrics and eval share a name"
                    out[(key, record["step"])] = float(value)
    return out


def tensorboard_scalars(log_dir: Path) -> list[tuple[str, int, float]]:
    """Every scalar event TensorBoard shows (after its purge of the events a resume logged again)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(tag, e.step, e.value) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]


def wandb_records(path: Path):
    """The records of an offline run's .wandb file (a LevelDB-style log of wandb_internal_pb2.Record: 7-byte file
    header, then 32 KiB blocks of chunks with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding up to the block's end
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""


def wandb_run(path: Path) -> tuple[dict[tuple[str, int], float], dict]:
    """(name, step) → value of an offline run's history (W&B's own `_` keys left out) and its config."""
    history: dict[tuple[str, int], float] = {}
    config: dict = {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    assert (key, record.history.step.num) not in history
                    history[(key, record.history.step.num)] = json.loads(item.value_json)
        for update in record.run.config.update if kind == "run" else record.config.update if kind == "config" else []:
            config[update.key] = json.loads(update.value_json)
    return history, config


def assert_same(got: dict[tuple[str, int], float], want: dict[tuple[str, int], float], rel: float) -> None:
    assert sorted(got) == sorted(want)
    bad = [(k, got[k], want[k]) for k in want if got[k] != pytest.approx(want[k], rel=rel, abs=rel)]
    assert not bad, bad[:5]


def check_trackers(run: Path, wandb_file: Path, since: int = 0) -> dict:
    """TensorBoard holds exactly the scalars of the JSONL logs, once each; the W&B run (`wandb_file`) those from
    step `since` on (a resumed offline run is a new file); returns the W&B config."""
    want = jsonl_scalars(run)
    assert {s for _, s in want} == {0, 1, 2, 3}
    events = tensorboard_scalars(run / "tensorboard")
    assert_same({(tag, step): v for tag, step, v in events}, want, rel=1e-6)  # event files hold float32
    assert len(events) == len(want), "a step logged twice"
    history, config = wandb_run(wandb_file)
    assert_same(history, jsonl_scalars(run, since), rel=1e-12)
    return config


def test_tiny_run_trackers_equal_jsonl_also_across_resume(random_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    recipe = tiny_recipe(random_model_dir, run, steps=3, **{"eval.every": 1}, **BOTH)
    train(recipe)
    names = {k for k, _ in jsonl_scalars(run)}
    assert {"reward/total", "loss/total", "optim/lr", "eval/accuracy", "eval/accuracy_low"} <= names
    run_id = (run / WANDB_ID_FILE).read_text().strip()

    def wandb_file(attempt: int) -> Path:
        """The offline run this attempt wrote, moved aside (its directory is named to the second)."""
        (file,) = run.glob("wandb/offline-run-*/run-*.wandb")
        assert file.name == f"run-{run_id}.wandb"  # --resume continues the same W&B run
        (run / "wandb").rename(run / f"wandb-{attempt}")
        return run / f"wandb-{attempt}" / file.relative_to(run / "wandb")

    config = check_trackers(run, wandb_file(0))
    assert config["rollout"]["group_size"] == 4 and config["trackers"]["wandb"]["mode"] == "offline"
    assert config == {**yaml.safe_load((run / "recipe.yaml").read_text()), "_wandb": config["_wandb"]}

    # killed during the final evaluation (eval.jsonl ends at step 2, metrics.jsonl at 3): --resume redoes that
    # evaluation; TensorBoard hides what it had from step 3 on and is sent step 3's kept metrics again
    (run / "summary.json").unlink()
    train(recipe, resume=True)
    check_trackers(run, wandb_file(1), since=3)

    # killed after step 3 was logged, the checkpoint of step 2 the latest: --resume trains step 3 again
    (run / "summary.json").unlink()
    (run / "checkpoints" / "latest").write_text("step_000002")
    train(recipe, resume=True)
    check_trackers(run, wandb_file(2), since=3)


def test_a_failing_tracker_warns_once_and_the_run_finishes(random_model_dir, tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")

    class BrokenRun:
        step = 0
        config = type("Config", (), {"update": lambda self, *a, **k: None})()
        finished = 0

        def log(self, values, step):
            raise RuntimeError("upload quota exceeded\nsecond line")

        def finish(self):
            BrokenRun.finished += 1

    calls = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or BrokenRun())
    monkeypatch.delenv("WANDB_MODE")  # the recipe's mode then goes to wandb.init (a fake one: nothing goes online)
    run = tmp_path / "run"
    summary = train(tiny_recipe(random_model_dir, run, steps=2, **{"trackers.wandb": True}))
    (kwargs,) = calls
    assert kwargs["mode"] == "online" and kwargs["name"] == "run" and kwargs["dir"] == str(run)
    assert kwargs["resume"] == "allow" and kwargs["id"] == (run / WANDB_ID_FILE).read_text().strip()
    assert (run / "summary.json").is_file() and summary["steps"] == 2
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "trackers.wandb" in line]
    assert len(warnings) == 1 and "upload quota exceeded" in warnings[0], warnings
    assert BrokenRun.finished == 1

    def no_init(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", no_init)  # one that cannot start: one warning, the logs are written
    trackers = Trackers.open(tiny_recipe(random_model_dir, tmp_path / "other", **{"trackers.wandb": True}), tmp_path)
    assert trackers.backends == []
    assert capsys.readouterr().err.count("warning: trackers.wandb: could not start") == 1


def test_scalars_keeps_finite_numbers_only():
    record = {"step": 3, "a": 1, "b": 0.5, "c": float("nan"), "d": None, "e": "text", "f": True, "g": [1.0],
              "h": torch.tensor(2.5), "i": float("inf")}
    assert scalars(record) == {"a": 1.0, "b": 0.5, "f": 1.0, "h": 2.5}


RECIPE = """output_dir: {out}
trackers:
  tensorboard: {{enabled: true}}
  wandb:
    enabled: true
    mode: offline
"""


@pytest.mark.parametrize("name, line", [("tensorboard", 3), ("wandb", 5)])
def test_missing_package_is_a_one_line_error(tmp_path, monkeypatch, name, line):
    import importlib.util

    from rshape.validate import load_recipe

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == name else real(mod, *a))
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert err.value.lines == [f"{path}:{line}: trackers.{name}.enabled: needs the {name} package: "
                               "pip install 'rshape[trackers]'"]


def test_validation_does_not_import_the_trackers(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run"))
    code = ("import sys; from rshape.validate import load_recipe; r = load_recipe(sys.argv[1]); "
            "assert r.trackers.tensorboard.enabled and r.trackers.wandb.enabled; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'tensorboard')))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
