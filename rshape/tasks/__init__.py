"""Tasks: the built-in tiny world and problems read from JSONL files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rshape.tasks.arithmetic import addition_task
from rshape.tasks.base import Problem, Task
from rshape.tasks.verifiers import VERIFIERS


class DataError(Exception):
    """A bad line in a data file: names the file and line."""


def read_problems(path: str | Path, prompt_key: str, answer_key: str, difficulty_key: str | None,
                  limit: int | None = None) -> list[Problem]:
    """Problems from a JSONL file; a bad line raises DataError naming file and line."""
    problems = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}: column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            for key in (prompt_key, answer_key):
                if key not in row or row[key] in ("", None, []):
                    raise DataError(f"{path}:{lineno}: missing or empty '{key}'")
            prompt = row[prompt_key]
            if not isinstance(prompt, (str, list)):
                raise DataError(f"{path}:{lineno}: '{prompt_key}' must be a string or a list of chat messages")
            difficulty = row.get(difficulty_key) if difficulty_key else None
            if difficulty is not None and not isinstance(difficulty, int):
                raise DataError(f"{path}:{lineno}: '{difficulty_key}' must be an integer, got {difficulty!r}")
            meta = {k: v for k, v in row.items() if k not in (prompt_key, answer_key)}
            problems.append(Problem(id=str(row.get("id", f"{Path(path).name}:{lineno}")), prompt=prompt,
                                    answer=str(row[answer_key]), difficulty=difficulty, meta=meta))
            if limit is not None and len(problems) >= limit:
                break
    if not problems:
        raise DataError(f"{path}: no problems in the file")
    return problems


def build_task(cfg: Any, seed: int = 0) -> Task:
    """The task a recipe's `task` section names."""
    if cfg.name == "addition":
        return addition_task(cfg.difficulties, cfg.train_per_difficulty, cfg.eval_per_difficulty, seed=seed,
                             eval_seed=cfg.eval_seed)
    train = read_problems(cfg.train_file, cfg.prompt_key, cfg.answer_key, cfg.difficulty_key)
    name = Path(cfg.train_file).name
    if cfg.eval_file:
        evals = read_problems(cfg.eval_file, cfg.prompt_key, cfg.answer_key, cfg.difficulty_key, cfg.eval_size)
        source = f"held-out: {Path(cfg.eval_file).name}"
    elif len(train) > cfg.eval_size:
        evals, train = train[: cfg.eval_size], train[cfg.eval_size:]
        source = f"held-out: the first {cfg.eval_size} lines of {name}"
    else:  # never evaluate on training problems: hold out a fifth of a small file, and say so
        if len(train) < 2:
            raise DataError(f"{cfg.train_file}: one problem cannot be split into training and evaluation; "
                            "add problems or give task.eval_file")
        k = max(1, len(train) // 5)
        evals, train = train[:k], train[k:]
        source = f"held-out: the first {k} of {k + len(train)} lines of {name} (no eval_file, file ≤ eval_size)"
        print(f"notice: {cfg.train_file} has {k + len(train)} problems, not more than task.eval_size "
              f"({cfg.eval_size}): holding out the first {k} for evaluation; give task.eval_file for a real "
              "held-out set", file=sys.stderr)
    return Task(name=Path(cfg.train_file).stem, train=train, eval=evals, verify=VERIFIERS[cfg.verifier],
                system_prompt=cfg.system_prompt, eval_source=source)


__all__ = ["DataError", "Problem", "Task", "build_task", "read_problems"]
