"""The recipes in the papers' settings (recipes/papers/): each validates against the schema, its dataset and prompt
columns resolve on a small local stand-in of the Hub data it names, the gold answer is the one the paper's grader
uses, and its header names the paper, the reported numbers, the GPU memory and the command. No network, no model."""

import json
import re
from pathlib import Path

import pytest

from rshape.tasks import build_task
from rshape.validate import load_recipe

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "recipes" / "papers"
RECIPES = sorted(PAPERS.glob("*.yaml"))

DEEPSCALER = "{} Let's think step by step and output the final answer within \\boxed{{}}."
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

# What each paper sends the model: the prompt around the problem text, and the system prompt (None: none).
PAPER_PROMPTS = {
    "laser_d": (DEEPSCALER, None),
    "drpo": (DEEPSCALER, None),
    "l1_exact": (DEEPSCALER[:-1] + ". Think for 1024 tokens.", None),  # one fixed target: see the recipe's header
    "shorter_better": (DEEPSCALER, None),
    "hapo": ("{}", QWEN_MATH_SYSTEM),
    "grpo_lambda": (DEEPSCALER, None),
    "tlts_length": ("{}", "Think step by step inside <think> </think> tags, then give only the final number inside "
                          "<answer> </answer> tags."),
    "dapo_overlong": ("{}", QWEN_MATH_SYSTEM),
    "label_free": ("{}", QWEN_MATH_SYSTEM),
}

# One row per Hub dataset, with the columns (and value types) the dataset has on the Hub; `text` names the column the
# problem is in, `gold` the answer the paper's grader compares with, `reply` a completion that states it.
STANDINS = {
    "hf:agentica-org/DeepScaleR-Preview-Dataset": {
        "row": {"problem": "What is $6 \\times 7$?", "answer": "42",
                "solution": "Multiply: $6 \\times 7 = \\boxed{42}$."},
        "text": "problem", "gold": "42", "reply": "6 times 7 is 42. \\boxed{42}"},
    "hf:HuggingFaceH4/aime_2024": {
        "row": {"id": 60, "problem": "Find the number of minutes the walk takes her.", "answer": "204",
                "solution": "The walk takes $s$ hours, … so the answer is $\\boxed{204}$.",
                "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1", "year": "2024"},
        "text": "problem", "gold": "204", "reply": "So it takes \\boxed{204} minutes."},
    "hf:HuggingFaceH4/MATH-500": {
        "row": {"problem": "Compute $\\frac{1}{2} + \\frac{1}{4}$.", "answer": "\\frac{3}{4}",
                "solution": "$\\frac{1}{2} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$.", "subject": "Prealgebra",
                "level": 2, "unique_id": "test/prealgebra/1.json"},
        "text": "problem", "gold": "\\frac{3}{4}", "reply": "The sum is \\boxed{0.75}."},
    "hf:openai/gsm8k": {
        "row": {"question": "Tom has 3 apples and buys 1,039 more. How many apples does he have?",
                "answer": "He has 3 + 1039 = <<3+1039=1042>>1042 apples.\n#### 1,042"},
        "text": "question", "gold": "1042", "reply": "<think>3 + 1039 = 1042</think><answer>1042</answer>"},
    "hf:open-r1/DAPO-Math-17k-Processed": {
        "row": {"prompt": "Let $x$ satisfy $x^2 = 1156$ and $x > 0$. Find $x$.", "solution": "34",
                "data_source": "math_dapo", "ability": "MATH",
                "source_prompt": [{"role": "user", "content": "Solve the following math problem step by step. …"}],
                "reward_model": {"ground_truth": "34", "style": "rule-lighteval/MATH_v2"},
                "extra_info": {"index": "9a9b6eb4-a1cb-49d1-8c1e-62eaf2f74079"}},
        "text": "prompt", "gold": "34", "reply": "x = \\sqrt{1156} = \\boxed{34}"},
}


def header(path: Path) -> str:
    """The comment lines before the first key."""
    lines = path.read_text().splitlines()
    return "\n".join(lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def part(head: str, name: str) -> str:
    """The header part `# Name: …` with its continuation lines (`#   …`); empty when there is none."""
    m = re.search(rf"^# {re.escape(name)}:(.*(?:\n#   .*)*)", head, re.M)
    return m.group(1) if m else ""


def test_every_method_has_a_recipe():
    assert {p.stem for p in RECIPES} == set(PAPER_PROMPTS)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_header_names_paper_numbers_memory_and_command(path):
    head = header(path)
    assert head.splitlines()[0] == f"# rshape rl recipes/papers/{path.name}"
    assert re.search(r"arXiv \d{4}\.\d{4,5}", part(head, "Paper")), "the paper and its arXiv id"
    assert re.search(r"\d", part(head, "Reported")), "the numbers the paper reports"
    assert re.search(r"≈ \d+ GB", part(head, "GPU memory (estimate)")), "the GPU memory it needs"
    assert re.search(r"^# Commands:\n#   rshape rl recipes/papers/" + re.escape(path.name) + "\n", head, re.M)
    assert "rshape eval runs/papers/" + path.stem in head


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_and_resolves_its_columns(path, tmp_path, monkeypatch):
    # Validation refuses a Hub model id that is not cached when HF_HUB_OFFLINE=1 (the test suite's setting). With
    # "0" it checks the id's form only and still touches no network, so the recipe's own model section is what gets
    # validated; swapping in a local tiny model would leave that section untested.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    recipe = load_recipe(path)
    assert recipe.dtype == "bfloat16" and recipe.device == "auto"
    assert not recipe.model.name.startswith("builtin:") and recipe.task.name == "dataset"
    template, system = PAPER_PROMPTS[path.stem]
    assert recipe.task.system_prompt == system

    sources = {"train": recipe.task.train_file, "eval": recipe.task.eval_file or recipe.task.train_file}
    files = {}
    for split, source in sources.items():
        assert source in STANDINS, f"{path.name}: no stand-in for {source}"
        rows = [dict(STANDINS[source]["row"], id=i) if "id" in STANDINS[source]["row"] else STANDINS[source]["row"]
                for i in range(3)]
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    local = load_recipe(path, [f"task.train_file={files['train']}", f"task.eval_file={files['eval']}",
                               "task.subset=null", "task.train_split=train", "task.eval_split=null",
                               "task.train_rows=null", "task.eval_rows=null"])
    task = build_task(local.task)
    assert len(task.train) == 3 and len(task.eval) == 3
    for split, problems in (("train", task.train), ("eval", task.eval)):
        standin = STANDINS[sources[split]]
        problem = problems[0]
        assert problem.prompt == template.format(standin["row"][standin["text"]])
        assert problem.answer == standin["gold"]
        assert task.verify(standin["reply"], problem), f"{path.name}: the {split} gold is not what the grader accepts"
        assert not task.verify("\\boxed{7}", problem)
        if "level" in standin["row"] and local.task.difficulty_key == "level":
            assert problem.difficulty == standin["row"]["level"]


def test_l1_prompt_states_the_rewarded_target(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # as above: the Hub id's form only, no network
    recipe = load_recipe(PAPERS / "l1_exact.yaml")
    target = recipe.rewards["lcpo"].model_extra["target"]
    assert recipe.task.prompt_template.endswith(f" Think for {target} tokens.")


def test_every_paper_recipe_dry_runs_offline():
    """`rshape rl RECIPE --dry-run` prints each plan offline: the Hub model and data cannot be reached, so the plan
    says so and goes on (steps, completions, tokens per step, evaluation, rewards)."""
    from typer.testing import CliRunner

    from rshape.cli import app

    for path in RECIPES:
        result = CliRunner().invoke(app, ["rl", str(path), "--dry-run"])
        assert result.exit_code == 0, (path.name, result.output[-2000:])
        out = result.output
        assert "dry run: nothing is trained or written" in out and "completions per step" in out, path.name
        assert "config.json is not reachable" in out and "data       not loaded" in out, path.name
        assert not (ROOT / load_recipe(path, need_hub_cache=False).output_dir).exists()
