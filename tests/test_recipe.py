"""Recipe schema: every error at once, one line each naming the key and line; overrides; CLI exit codes."""

import subprocess
import sys
from pathlib import Path

import pytest

from rshape.recipe import RecipeError, describe_keys
from rshape.validate import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_validate(tmp_path):
    r = load_recipe(write(tmp_path, "seed: 3\n"))
    assert r.seed == 3 and r.rollout.group_size == 8 and r.model.lora.enabled


def test_all_errors_reported_with_key_and_line(tmp_path):
    p = write(tmp_path, "seed: 1\nrollout:\n  group_siz: 4\n  temperature: hot\ntrain:\n  steps: -1\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    lines = exc.value.lines
    assert len(lines) == 3
    assert lines[0].startswith(f"{p}:3: rollout.group_siz: unknown key")
    assert f"{p}:4: rollout.temperature:" in lines[1] and "hot" in lines[1]
    assert f"{p}:6: train.steps:" in lines[2]


def test_unknown_reward_and_bad_reward_param(tmp_path):
    p = write(tmp_path, "rewards:\n  correctness: {weight: 1}\n  lenght: {weight: 0.3}\n  format: {pattern: '('}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    lines = exc.value.lines
    assert any(line.startswith(f"{p}:3: rewards.lenght.type: unknown reward 'lenght'") for line in lines)
    assert any(line.startswith(f"{p}:4: rewards.format.pattern") for line in lines)


def test_overrides(tmp_path):
    p = write(tmp_path, "rewards:\n  correctness: {weight: 1}\n  length: {weight: 0.4}\n")
    r = load_recipe(p, ["train.steps=50", "rewards.length.weight=0.3", "model.lora.r=4"])
    assert r.train.steps == 50 and r.rewards["length"].weight == 0.3 and r.model.lora.r == 4
    with pytest.raises(RecipeError) as exc:
        load_recipe(p, ["train.stepz=5"])
    assert exc.value.lines == ["command line: train.stepz: unknown key"]


def test_missing_file_and_data_file(tmp_path):
    with pytest.raises(RecipeError) as exc:
        load_recipe(tmp_path / "nope.yaml")
    assert "recipe file not found" in exc.value.lines[0]
    p = write(tmp_path, "task:\n  name: jsonl\n  train_file: missing.jsonl\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert exc.value.lines == [f"{p}:3: task.train_file: file not found: {tmp_path / 'missing.jsonl'}"]  # the recipe's dir


def test_qlora_needs_lora(tmp_path):
    p = write(tmp_path, "model:\n  load_in_4bit: true\n  lora: {enabled: false}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert "load_in_4bit needs lora.enabled" in exc.value.lines[0]


def test_cli_error_is_one_line_per_problem_without_traceback(tmp_path):
    p = write(tmp_path, "rollout:\n  group_siz: 4\ntrain:\n  steps: many\n")
    out = subprocess.run([sys.executable, "-m", "rshape.cli", "rl", str(p)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "rollout.group_siz: unknown key" in errors[0] and "train.steps" in errors[1]
    missing = subprocess.run([sys.executable, "-m", "rshape.cli", "rl", str(tmp_path / "x.yaml")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "not found" in missing.stderr


def test_shipped_recipes_validate():
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert recipes, "no recipes shipped"
    for r in recipes:
        first = r.read_text().splitlines()[0]
        assert first.startswith("# rshape "), f"{r.name} must start with the command that runs it"
        if first.startswith("# rshape train-rm"):
            from rshape.rm.recipe import load_rm_recipe

            load_rm_recipe(r)
        elif first.startswith("# rshape rl"):
            load_recipe(r)


def test_readme_documents_every_key():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key, _, _ in describe_keys() if f"`{key}`" not in readme]
    assert not missing, f"README lacks recipe keys: {missing}"


def test_readme_documents_every_component_and_estimator():
    from rshape.rewards import REWARDS
    from rshape.rl.advantages import ADVANTAGES

    readme = (ROOT / "README.md").read_text()
    missing = [n for n in REWARDS.names() + ADVANTAGES.names() if f"| `{n}` |" not in readme]
    assert not missing, f"README lacks rows for: {missing}"


def test_readme_tables_match_the_code():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "scripts" / "readme_tables.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_methods_reference_matches_the_code():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "scripts" / "methods_doc.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    text = (root / "docs" / "methods.md").read_text()
    from rshape.rewards import REWARDS
    from rshape.rl.advantages import ADVANTAGES

    for name in [*REWARDS.names(), *ADVANTAGES.names()]:
        assert f"### `{name}`" in text, name


def test_a_new_reward_family_is_one_file(tmp_path, monkeypatch):
    """A throw-away family in a temporary module registers itself; recipes, scoring and the README table see it
    without any core file changing."""
    import importlib

    from conftest import make_reward_batch

    from rshape.rewards import REWARDS, build_rewards

    monkeypatch.setattr(REWARDS, "_table", dict(REWARDS._table))  # the registration goes away with the test
    (tmp_path / "throwaway_family.py").write_text(
        "import torch\n"
        "from typing import ClassVar\n"
        "from rshape.rewards.base import REWARDS, RewardComponent\n\n"
        "@REWARDS.register('throwaway_short')\n"
        "class ThrowawayShort(RewardComponent):\n"
        "    summary: ClassVar[str] = 'r = -scale * L'\n"
        "    source: ClassVar[str] = 'a test'\n"
        "    scale: float = 0.5\n\n"
        "    def __call__(self, batch, **_):\n"
        "        return -self.scale * batch.lengths.double()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("throwaway_family")
    rs = build_rewards({"correctness": {"weight": 1.0}, "short": {"type": "throwaway_short", "scale": 0.25}})
    s = rs.score(make_reward_batch([4, 8], [1, 0], 2))
    assert s.total.tolist() == [1.0 - 0.25 * 4, -0.25 * 8]
    recipe = write(tmp_path, "rewards:\n  short: {type: throwaway_short, scale: 2}\n")
    assert load_recipe(recipe).rewards["short"].model_dump()["scale"] == 2
    bad = write(tmp_path, "rewards:\n  short: {type: throwaway_short, scal: 2}\n")
    with pytest.raises(RecipeError, match=r"rewards\.short\.scal: unknown key"):
        load_recipe(bad)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    try:
        import readme_tables
    finally:
        sys.path.pop(0)
    assert "| `throwaway_short` | r = -scale * L | `scale` (0.5) | a test |" in readme_tables.rewards_table()


def test_duplicate_keys_an_empty_recipe_and_a_reward_that_exits(tmp_path):
    dup = write(tmp_path, "seed: 1\ntrain:\n  steps: 5\n  steps: 7\nseed: 2\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(dup)
    assert exc.value.lines == [f"{dup}:4: train.steps: given twice (also on line 3); YAML would keep only this one",
                               f"{dup}:5: seed: given twice (also on line 1); YAML would keep only this one"]
    for text in ("", "# only a comment\n", "{}\n"):
        with pytest.raises(RecipeError, match="the recipe is empty; start from recipes/quickstart.yaml"):
            load_recipe(write(tmp_path, text))
    from conftest import make_reward_batch

    from rshape.rewards import RewardRuntimeError, build_rewards

    with pytest.raises(RewardRuntimeError, match="calls_exit raised SystemExit: 3"):
        build_rewards({"bye": {"type": "user_rewards:calls_exit"}}).score(make_reward_batch([1, 2], [1, 0], 2))


def test_model_adapter_and_output_paths_are_checked_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = tmp_path / "never_created"
    cases = {
        f"model.name={tmp_path / 'missing' / 'model'}": "model.name: no such directory:",
        f"model.name={empty}": "has no config.json: not a Hugging Face model directory",
        "model.name=some-org/some-model-not-cached": "is neither a local directory nor in the Hugging Face cache, "
                                                     "and HF_HUB_OFFLINE=1",
        "model.name=builtin:tiny-nothing": "unknown built-in model 'builtin:tiny-nothing'",
        f"model.adapter={empty}": "is not a LoRA adapter directory (no adapter_config.json)",
        f"output_dir={a_file}": "is a file, not a directory",
    }
    recipe = write(tmp_path, f"output_dir: {out}\n")
    for override, message in cases.items():
        with pytest.raises(RecipeError) as exc:
            load_recipe(recipe, [override])
        assert len(exc.value.lines) == 1 and message in exc.value.lines[0], (override, exc.value.lines)
    assert not out.exists()  # validation wrote nothing


def test_non_utf8_recipes_and_data_files_name_file_and_line(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("seed: 1\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert exc.value.lines == [f"{p}:2: not UTF-8 text (save the recipe as UTF-8)"]
    from rshape.recipe import TaskConfig
    from rshape.tasks import DataError, read_problems

    cfg = TaskConfig(name="dataset", difficulty_key=None)
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not UTF-8 text \(byte 16 of the line\)"):
        read_problems(str(data), cfg)
    data.write_text('{"prompt": "a\tb", "answer": "1"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:1: not valid JSON \(Invalid control character at: column 14\)"):
        read_problems(str(data), cfg)


def test_jsonl_evaluation_never_uses_training_problems(tmp_path, capfd):
    from rshape.recipe import TaskConfig
    from rshape.tasks import DataError, build_task

    def task_of(n, eval_size, eval_file=None):
        data = tmp_path / f"train{n}.jsonl"
        data.write_text("".join(f'{{"prompt": "q{i}", "answer": "{i}"}}\n' for i in range(n)))
        return build_task(TaskConfig(name="jsonl", train_file=str(data), eval_file=eval_file, eval_size=eval_size,
                                     difficulty_key=None))

    big = task_of(10, 3)
    assert [p.prompt for p in big.eval] == ["q0", "q1", "q2"] and len(big.train) == 7
    assert big.eval_source == "held-out: the first 3 problems of train10.jsonl"
    small = task_of(5, 200)  # not more lines than eval_size: a fifth is held out, loudly
    assert [p.prompt for p in small.eval] == ["q0"] and [p.prompt for p in small.train] == ["q1", "q2", "q3", "q4"]
    assert "holding out the first 1 for evaluation" in capfd.readouterr().err
    assert "no eval set given" in small.eval_source
    assert not {p.prompt for p in small.eval} & {p.prompt for p in small.train}
    with pytest.raises(DataError, match="one problem cannot be split"):
        task_of(1, 200)
    from rich.console import Console

    from rshape.report import print_summary

    console = Console(record=True, width=200)
    ev = {"step": 0, "eval/accuracy": 0.5, "eval/length": 3.0, "eval/problems": 1}
    print_summary({"first_eval": ev, "final_eval": {**ev, "step": 2}, "steps": 2, "run_dir": "x",
                   "eval_set": small.eval_source}, console)
    assert "no eval set given" in " ".join(console.export_text().split())  # the title wraps


def test_every_bad_override_and_command_line_entries_are_reported_as_such(tmp_path):
    p = write(tmp_path, "seed: 1\nrewards:\n  correctness: {weight: 1.0}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p, ["nonsense", "train.steps=3", "=5"])
    assert exc.value.lines == ["command line: override 'nonsense': expected key=value, e.g. train.steps=50",
                               "command line: override '=5': empty key"]
    with pytest.raises(RecipeError) as exc:
        load_recipe(p, ["rewards.lenght.weight=0.3"])  # an entry that exists only on the command line
    assert exc.value.lines[0].startswith("command line: rewards.lenght.type: unknown reward 'lenght'")


def test_validation_and_run_dir_checks_load_neither_torch_nor_a_model_library(tmp_path):
    """`rshape rl` answers a bad recipe, a run directory that exists, and an already-trained run before torch,
    transformers or a model loads (torch stays a deferred stand-in: rshape.deferred)."""
    bad = write(tmp_path, "rollout: {group_siz: 4}\nrewards: {c: {type: correctness, weight: .inf}}\n")
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000010").mkdir(parents=True)
    (run / "checkpoints" / "step_000010" / "state.pt").write_bytes(b"")
    (run / "checkpoints" / "latest").write_text("step_000010")
    (run / "summary.json").write_text("{}")
    good = write(tmp_path, f"output_dir: {run}\ntrain: {{steps: 10}}\n", name="good.yaml")
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('LOADED', sorted(m for m in ('torch._C', 'transformers', 'peft', "
             "'bitsandbytes') if m in sys.modules), file=sys.stderr))\n"
             "from rshape.cli import main\nsys.argv[0] = 'rshape'\nmain()\n")
    for args, expected in [([str(bad)], "rollout.group_siz: unknown key"), ([str(good)], "a run already exists"),
                           ([str(good), "--resume"], "already trained 10 steps")]:
        out = subprocess.run([sys.executable, "-c", probe, "rl", *args], capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
        assert out.returncode == 2, out.stderr
        assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert "LOADED []" in out.stderr, out.stderr


def test_deferred_import_imports_on_first_use(tmp_path, monkeypatch):
    """rshape.deferred: `import` inside the block runs nothing; the first attribute read imports the module once;
    after the block imports are plain again; a submodule import inside the block is refused, not run twice."""
    import importlib

    from rshape.deferred import deferred_import

    pkg = tmp_path / "deferme"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import pathlib\nRUNS = pathlib.Path(__file__).with_name('runs')\n"
                                     "RUNS.write_text(RUNS.read_text() + 'x' if RUNS.exists() else 'x')\nVALUE = 42\n")
    (pkg / "sub.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "deferme", raising=False)
    with deferred_import("deferme"):
        import deferme

        assert not (pkg / "runs").exists()
        with pytest.raises(ModuleNotFoundError, match="is not a package"):
            importlib.import_module("deferme.sub")
        assert deferme.VALUE == 42 and (pkg / "runs").read_text() == "x"
    assert deferme.VALUE == 42 and (pkg / "runs").read_text() == "x"
    assert importlib.import_module("deferme").VALUE == 42 and not isinstance(sys.modules["deferme"], type(deferme))
    assert (pkg / "runs").read_text() == "x"
