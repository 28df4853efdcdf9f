"""Format rewards: does the completion have the required structure (METHODS.md §1)."""

from __future__ import annotations

import re
from typing import Any

import torch
from pydantic import field_validator

from rshape.rewards.base import RewardBatch, RewardComponent

THINK_ANSWER = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"


class Format(RewardComponent):
    """r_i = 1 if the completion matches `pattern` as a whole (re.DOTALL), else 0.

    Default structure: `<think>…</think><answer>…</answer>` and nothing after it (METHODS.md §1).
    """

    pattern: str = THINK_ANSWER
    """Regular expression the whole completion must match."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    def __call__(self, batch: RewardBatch, **_: Any) -> torch.Tensor:
        rx = re.compile(self.pattern, re.DOTALL)
        return torch.tensor([1.0 if rx.match(c) else 0.0 for c in batch.completions])


COMPONENTS = {"format": Format}
