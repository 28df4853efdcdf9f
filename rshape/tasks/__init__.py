"""Tasks: the built-in tiny world, and problems read from a dataset (rshape.tasks.sources) with a column mapping."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from rshape.tasks.arithmetic import addition_task
from rshape.tasks.base import Problem, Task
from rshape.tasks.sources import DataError, read_records
from rshape.tasks.verifiers import VERIFIERS, last_boxed

PLACEHOLDER_RE = re.compile(r"\{(\w+)\}")
GSM8K_ANSWER_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def fill_template(template: str, row: dict[str, Any], where: str) -> str:
    """`template` with each `{column}` replaced by the row's value; braces around anything else stay as written."""
    missing = [name for name in PLACEHOLDER_RE.findall(template) if name not in row]
    if missing:
        raise DataError(f"{where}: task.prompt_template names {{{missing[0]}}}, not a column of the data "
                        f"(columns: {', '.join(sorted(row))})")
    return PLACEHOLDER_RE.sub(lambda m: str(row[m.group(1)]), template)


def gold_answer(value: Any, cfg: Any, where: str) -> str:
    """The gold answer from the answer column: as is, or extracted (`answer_extract`, `answer_pattern`)."""
    text = str(value)
    if cfg.answer_extract == "boxed":
        found = last_boxed(text)
        if found is None:
            raise DataError(f"{where}: no \\boxed{{…}} in '{cfg.answer_key}' (task.answer_extract: boxed)")
        return found
    if cfg.answer_extract == "gsm8k":
        m = GSM8K_ANSWER_RE.search(text)
        if m is None:
            raise DataError(f"{where}: no '#### answer' in '{cfg.answer_key}' (task.answer_extract: gsm8k)")
        return m.group(1).replace(",", "")
    if cfg.answer_pattern is not None:
        matches = list(re.finditer(cfg.answer_pattern, text))
        if not matches:
            raise DataError(f"{where}: task.answer_pattern does not match '{cfg.answer_key}'")
        last = matches[-1]
        return (last.group(1) if last.re.groups else last.group(0)).strip()
    return text


def difficulty_of(value: Any, key: str, where: str) -> int | None:
    """An integer bucket, or the integer that ends a text label (`Level 3` → 3); None when the row has none."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (m := re.search(r"(-?\d+)\s*$", value)):
        return int(m.group(1))
    raise DataError(f"{where}: '{key}' must be an integer or text ending in one, got {value!r}")


def problem_from_record(row: Any, where: str, source: str, cfg: Any) -> Problem:
    """One problem from a data record, as `cfg` (a recipe's `task` section) maps its columns."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with named columns, got {type(row).__name__}")
    if cfg.answer_key not in row or row[cfg.answer_key] in ("", None, []):
        raise DataError(f"{where}: missing or empty '{cfg.answer_key}'")
    if cfg.prompt_template is not None:
        prompt: str | list[dict[str, str]] = fill_template(cfg.prompt_template, row, where)
    else:
        if cfg.prompt_key not in row or row[cfg.prompt_key] in ("", None, []):
            raise DataError(f"{where}: missing or empty '{cfg.prompt_key}'")
        prompt = row[cfg.prompt_key]
        if not isinstance(prompt, (str, list)):
            raise DataError(f"{where}: '{cfg.prompt_key}' must be a string or a list of chat messages")
    difficulty = difficulty_of(row.get(cfg.difficulty_key), cfg.difficulty_key, where) if cfg.difficulty_key else None
    meta = {k: v for k, v in row.items() if k not in (cfg.prompt_key, cfg.answer_key)}
    default_id = where.replace(source, Path(source).name, 1) if not source.startswith("hf:") else where
    return Problem(id=str(row.get("id", default_id)), prompt=prompt, answer=gold_answer(row[cfg.answer_key], cfg, where),
                   difficulty=difficulty, meta=meta)


def read_problems(source: str, cfg: Any, split: str = "train", rows: str | None = None,
                  limit: int | None = None) -> list[Problem]:
    """Problems from a data source (rshape.tasks.sources) mapped by `cfg` (a recipe's `task` section); a bad
    record raises DataError naming the file and line (or row)."""
    problems = []
    for where, row in read_records(source, split, cfg.subset, rows):
        problems.append(problem_from_record(row, where, source, cfg))
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise DataError(f"{source}: no problems in {'the file' if rows is None else f'rows {rows}'}")
    return problems


def build_task(cfg: Any, seed: int = 0) -> Task:
    """The task a recipe's `task` section names."""
    if cfg.name == "addition":
        return addition_task(cfg.difficulties, cfg.train_per_difficulty, cfg.eval_per_difficulty, seed=seed,
                             eval_seed=cfg.eval_seed)
    train = read_problems(cfg.train_file, cfg, cfg.train_split, cfg.train_rows)
    name = Path(cfg.train_file).name
    eval_source, eval_split = cfg.eval_source()
    if not cfg.eval_from_training_split() or cfg.eval_rows is not None:
        evals = read_problems(eval_source, cfg, eval_split, cfg.eval_rows, cfg.eval_size)
        source = f"held-out: {Path(eval_source).name} ({eval_split}" + (f", rows {cfg.eval_rows})" if cfg.eval_rows else ")")
    elif len(train) > cfg.eval_size:
        evals, train = train[: cfg.eval_size], train[cfg.eval_size:]
        source = f"held-out: the first {cfg.eval_size} problems of {name}"
    else:  # never evaluate on training problems: hold out a fifth of a small file, and say so
        if len(train) < 2:
            raise DataError(f"{cfg.train_file}: one problem cannot be split into training and evaluation; "
                            "add problems or give task.eval_file")
        k = max(1, len(train) // 5)
        evals, train = train[:k], train[k:]
        source = f"held-out: the first {k} of {k + len(train)} problems of {name} (no eval set given, ≤ eval_size)"
        print(f"notice: {cfg.train_file} has {k + len(train)} problems, not more than task.eval_size "
              f"({cfg.eval_size}): holding out the first {k} for evaluation; give task.eval_file or task.eval_split "
              "for a real held-out set", file=sys.stderr)
    return Task(name=Path(cfg.train_file).stem, train=train, eval=evals, verify=VERIFIERS[cfg.verifier],
                system_prompt=cfg.system_prompt, eval_source=source, chat=cfg.chat)


__all__ = ["DataError", "Problem", "Task", "build_task", "read_problems"]
