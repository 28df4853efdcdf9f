"""Format rewards: does the completion have the required structure (docs/methods.md).

Both components here are label-free: they read only the completion text, never the gold answer or
batch.correct, so a recipe made of them alone (optionally with `format_length`, rshape.rewards.surrogate)
trains without ground-truth answers — the "Format-Only" setting of Surrogate Signals (arXiv 2505.19439).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator

from rshape.batch import Batch
from rshape.rewards.base import REWARDS, RewardComponent, compiled_regex

THINK_ANSWER = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"


@REWARDS.register("format")
class Format(RewardComponent):
    """r_i = 1 if the completion matches `pattern` as a whole (re.DOTALL), else 0.

    Default structure: `<think>…</think><answer>…</answer>` and nothing after it (docs/methods.md).
    Label-free: reads only the completion text.
    """

    summary: ClassVar[str] = (
        '1 if the whole completion matches `pattern` (`<think>…</think><answer>…</answer>`), else 0; '
        'label-free'
    )
    source: ClassVar[str] = 'format reward (DeepSeek-R1, arXiv 2501.12948; open-r1)'

    pattern: str = THINK_ANSWER
    """Regular expression the whole completion must match."""

    _compiles = field_validator("pattern")(classmethod(lambda cls, v: compiled_regex(v)))

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        rx = re.compile(self.pattern, re.DOTALL)
        return torch.tensor([1.0 if rx.match(c) else 0.0 for c in batch.completions], dtype=torch.float64)


OPEN_R1_TAGS = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")


@REWARDS.register("tag_count")
class TagCount(RewardComponent):
    """Partial format credit: r_i = Σ_tags per_tag·1[the tag string occurs exactly once in the completion].

    open-r1's `tag_count_reward` (huggingface/open-r1 src/open_r1/rewards.py): the four strings
    "<think>\\n", "\\n</think>\\n", "\\n<answer>\\n", "\\n</answer>" with 0.25 each, so 0 … 1; the
    newlines are part of the tags there. `tags` and `per_tag` are configurable (per_tag None = 1/len(tags),
    so a full match scores 1). Label-free. Source: docs/methods.md.
    """

    summary: ClassVar[str] = 'Σ per_tag·1[tag occurs exactly once]; label-free'
    source: ClassVar[str] = 'open-r1 `tag_count_reward`'

    tags: tuple[str, ...] = OPEN_R1_TAGS
    """Strings that must each occur exactly once (open-r1: the four tags with their newlines)."""
    per_tag: float | None = Field(None, gt=0)
    """Credit per tag found exactly once; None: 1/len(tags) (open-r1: 0.25)."""

    @field_validator("tags")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or any(not t for t in v):
            raise ValueError("give at least one tag, and no empty tag")
        return v

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        each = self.per_tag if self.per_tag is not None else 1.0 / len(self.tags)
        return torch.tensor([each * sum(1 for t in self.tags if c.count(t) == 1) for c in batch.completions],
                            dtype=torch.float64)
