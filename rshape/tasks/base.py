"""What a verifiable task is: problems with gold answers, a verifier, a train and an eval split."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class Problem:
    """One prompt with its gold answer.

    `prompt` is either plain text or a chat (a list of {"role", "content"} dicts); `difficulty`
    is an integer bucket when the data has one (digits, level, hops) and None otherwise; `meta`
    carries any other data columns (target length, constraints, references...).
    """

    id: str
    prompt: str | list[dict[str, str]]
    answer: str
    difficulty: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def extract_tagged_answer(completion: str) -> str | None:
    """The text inside the last `<answer>…</answer>` pair, stripped; None if there is none."""
    found = ANSWER_RE.findall(completion)
    return found[-1].strip() if found else None


@dataclass
class Task:
    """A train pool, a held-out eval split and a verifier `verify(completion, problem) -> bool`."""

    name: str
    train: list[Problem]
    eval: list[Problem]
    verify: Callable[[str, Problem], bool]
    system_prompt: str | None = None
    eval_source: str = "held-out"  # what the eval split is, for the end-of-run table
    chat: str = "never"  # text prompts through the chat template: auto (when the tokenizer has one), always, never

    def difficulties(self) -> list[int]:
        """Sorted difficulty buckets present in the eval split (empty when the data has none)."""
        return sorted({p.difficulty for p in self.eval if p.difficulty is not None})
