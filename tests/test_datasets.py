"""Datasets for `rl`: every local format, column mapping, prompt templates, gold answers extracted from solutions,
row selection, relative paths, chat rendering, and a one-line error for an unreachable Hub dataset."""

import json
import subprocess
import sys

import pytest
from test_rl_integration import tiny_recipe

from rshape.recipe import RecipeError, TaskConfig
from rshape.rl.loop import train
from rshape.rl.rollout import render_prompt
from rshape.runs import read_jsonl
from rshape.tasks import DataError, build_task, fill_template, gold_answer, read_problems
from rshape.tasks.verifiers import last_boxed
from rshape.validate import load_recipe

MATH_ROWS = [{"problem": f"{a}+{b}", "solution": f"Add them: $\\frac{{{2 * (a + b)}}}{{2}}$, so \\boxed{{{a + b}}}.",
              "level": f"Level {1 + (a % 3)}"} for a in range(12) for b in (1, 2)]


def write_formats(tmp_path, rows):
    """The same rows as JSONL, JSON (array), parquet, a bare .arrow file and a save_to_disk directory."""
    import datasets

    out = {}
    out["jsonl"] = tmp_path / "d.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["json"] = tmp_path / "d.json"
    out["json"].write_text(json.dumps(rows))
    ds = datasets.Dataset.from_list(rows)
    out["parquet"] = tmp_path / "d.parquet"
    ds.to_parquet(str(out["parquet"]))
    out["save_to_disk"] = tmp_path / "saved"
    datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(str(out["save_to_disk"]))
    out["arrow"] = next((out["save_to_disk"] / "train").glob("*.arrow"))
    return out


MATH_TASK = {"name": "dataset", "prompt_template": "{problem}=", "answer_key": "solution", "answer_extract": "boxed",
             "difficulty_key": "level", "eval_size": 4}


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "arrow", "save_to_disk"])
def test_rl_trains_two_steps_from_each_local_format(random_model_dir, tmp_path, fmt):
    """MATH-shaped rows (problem, solution with a \\boxed answer, `Level k`), a prompt template and the gold answer
    extracted from the solution: the same problems from every format, and 2 RL steps run on them."""
    source = write_formats(tmp_path, MATH_ROWS)[fmt]
    cfg = TaskConfig(train_file=str(source), **MATH_TASK)
    task = build_task(cfg)
    assert [p.prompt for p in task.eval] == ["0+1=", "0+2=", "1+1=", "1+2="]
    assert [p.answer for p in task.eval] == ["1", "2", "2", "3"] and [p.difficulty for p in task.eval] == [1, 1, 2, 2]
    assert len(task.train) == len(MATH_ROWS) - 4 and not {p.id for p in task.train} & {p.id for p in task.eval}
    recipe = tiny_recipe(random_model_dir, tmp_path / "run", steps=2, task={**MATH_TASK, "train_file": str(source)},
                         **{"rewards": {"correctness": {"weight": 1.0}}})
    summary = train(recipe)
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 2 and summary["final_eval"]["eval/problems"] == 4
    assert summary["eval_set"] == f"held-out: the first 4 problems of {source.name}"


def test_splits_rows_and_subsets_of_a_save_to_disk_dict(tmp_path):
    saved = write_formats(tmp_path, MATH_ROWS)["save_to_disk"]
    task = build_task(TaskConfig(train_file=str(saved), eval_split="test", train_rows="4:", **MATH_TASK))
    assert [p.prompt for p in task.eval] == ["0+1=", "0+2=", "1+1=", "1+2="]  # the test split
    assert task.train[0].prompt == "2+1=" and len(task.train) == len(MATH_ROWS) - 4
    assert task.eval_source == "held-out: saved (test)"
    rows = build_task(TaskConfig(train_file=str(saved), train_rows="0:10", eval_rows="20:", **MATH_TASK))
    assert len(rows.train) == 10 and [p.prompt for p in rows.eval] == ["10+1=", "10+2=", "11+1=", "11+2="]
    with pytest.raises(DataError, match="no split 'validation'; available: train, test"):
        build_task(TaskConfig(train_file=str(saved), eval_split="validation", **MATH_TASK))


def test_eval_rows_overlapping_train_rows_are_refused(tmp_path):
    data = write_formats(tmp_path, MATH_ROWS)["jsonl"]
    p = tmp_path / "r.yaml"
    p.write_text(f"task:\n  name: dataset\n  train_file: {data.name}\n  train_rows: '0:20'\n  eval_rows: '15:24'\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert exc.value.lines == [f"{p}:5: task.eval_rows: overlaps task.train_rows (0:20) of the same split: evaluation "
                               "must be held out"]
    p.write_text(f"task:\n  name: dataset\n  train_file: {data.name}\n  train_rows: '0:20'\n  eval_rows: '20:'\n")
    assert load_recipe(p).task.train_file == str(data)  # and relative to the recipe file, not the working directory
    p.write_text("task:\n  name: dataset\n  train_file: d.jsonl\n  train_rows: 'ten'\n")
    with pytest.raises(RecipeError, match=r"r.yaml:4: task.train_rows: expected start:stop \(e.g. 0:1000 or :500\) "
                                          r"\(got 'ten'\)$"):
        load_recipe(p)


def test_relative_data_paths_resolve_against_the_recipe_file(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "data").mkdir()
    data = tmp_path / "recipes" / "data" / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text("task: {name: dataset, train_file: data/d.jsonl, eval_file: data/d.jsonl}\n")
    monkeypatch.chdir(tmp_path)
    assert load_recipe("recipes/r.yaml").task.train_file == str(tmp_path / "recipes" / "data" / "d.jsonl")
    # a path given on the command line is the shell's: relative to the working directory
    assert load_recipe("recipes/r.yaml", ["task.train_file=recipes/data/d.jsonl"]).task.train_file == \
        "recipes/data/d.jsonl"
    assert load_recipe(str(recipe), ["task.train_file=hf:openai/gsm8k"]).task.train_file == "hf:openai/gsm8k"


def test_gold_answers_from_solutions():
    cfg = TaskConfig(name="dataset", answer_key="solution", answer_extract="boxed")
    assert gold_answer("so $x = \\boxed{\\frac{\\sqrt{3}}{2}}$.", cfg, "w") == "\\frac{\\sqrt{3}}{2}"  # nested braces
    assert gold_answer("\\boxed{1} then \\boxed{ 7 }", cfg, "w") == "7"  # the last one, stripped
    with pytest.raises(DataError, match=r"w: no \\boxed\{…\} in 'solution' \(task.answer_extract: boxed\)"):
        gold_answer("no box \\boxed{unclosed", cfg, "w")
    gsm = TaskConfig(name="dataset", answer_extract="gsm8k")
    assert gold_answer("She pays 3*4=<<3*4=12>>12.\n#### 1,234", gsm, "w") == "1234"
    with pytest.raises(DataError, match="no '#### answer'"):
        gold_answer("42", gsm, "w")
    pattern = TaskConfig(name="dataset", answer_pattern=r"answer is (\-?\d+)")
    assert gold_answer("the answer is 3; no, the answer is -4", pattern, "w") == "-4"
    assert gold_answer(17, TaskConfig(name="dataset"), "w") == "17"
    assert last_boxed("\\fbox{5}") == "5" and last_boxed("none") is None


def test_prompt_templates_fill_columns_and_keep_other_braces():
    row = {"problem": "What is 2+2?", "id": 7}
    template = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}. ({id})"
    assert fill_template(template, row, "w") == \
        "What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}. (7)"
    with pytest.raises(DataError, match=r"w: task.prompt_template names \{question\}, not a column of the data "
                                        r"\(columns: id, problem\)"):
        fill_template("{question}", row, "w")


def test_bad_records_name_file_and_row(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "1+1", "solution": "\\\\boxed{2}", "level": "Level 1"}\n'
                    '{"problem": "1+2", "solution": "3", "level": "Level 1"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: no \\boxed"):
        read_problems(str(data), TaskConfig(**MATH_TASK))
    data.write_text('{"problem": "1+1", "solution": "\\\\boxed{2}", "level": "hard"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:1: 'level' must be an integer or text ending in one, got 'hard'"):
        read_problems(str(data), TaskConfig(**MATH_TASK))
    import datasets

    datasets.Dataset.from_list([{"q": "a", "answer": "1"}]).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(DataError, match=r"d.parquet: row 1: missing or empty 'prompt'"):
        read_problems(str(tmp_path / "d.parquet"), TaskConfig(name="dataset"))


def test_chat_rendering_follows_the_tokenizer_and_task_chat(capfd):
    from rshape.rl import rollout
    from rshape.tasks.tokenizer import build_char_tokenizer

    plain = build_char_tokenizer()
    templated = build_char_tokenizer()
    templated.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert render_prompt("1+1=", plain, None, "auto") == "1+1="  # no template: text stays text
    assert render_prompt("1+1=", plain, "be brief", "auto") == "be brief\n\n1+1="
    assert render_prompt("1+1=", templated, "be brief", "auto") == "<system>be brief\n<user>1+1=\n<assistant>"
    assert render_prompt("1+1=", templated, None, "never") == "1+1="
    rollout._warned_no_template = False
    assert render_prompt("1+1=", plain, None, "always") == "user: 1+1=\nassistant: "
    assert render_prompt([{"role": "user", "content": "2+2="}], plain) == "user: 2+2=\nassistant: "
    err = capfd.readouterr().err
    assert err.count("warning: chat-shaped prompts but the tokenizer has no chat template") == 1  # once


def test_an_unreachable_hub_dataset_is_one_line(tmp_path):
    """Offline, `hf:NAME` that is not cached: one line naming the dataset and what to do, exit 2, no traceback."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\ntask: {{name: dataset, train_file: 'hf:rshape-test/no-such-set'}}\n")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf-home")}
    out = subprocess.run([sys.executable, "-m", "rshape.cli", "rl", str(recipe)], capture_output=True, text=True,
                         env=env, timeout=180)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: hf:rshape-test/no-such-set: cannot read with `datasets`")
    assert "offline (HF_HUB_OFFLINE=1) and not in the local cache" in errors[0]
