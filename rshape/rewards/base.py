"""The reward interface: a reward is a function of a whole batch of groups.

A batch holds N = B·G completions, laid out prompt-major: completions g·G … g·G+G−1 are the G
siblings of prompt g. A component returns one float per completion ([N] tensor); NaN means
"not applicable" for that sample, which then adds nothing to the total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from rshape.registry import Registry
from rshape.tasks.base import Problem

REWARDS: Registry[type[RewardComponent]] = Registry("reward")  # filled by the family modules' decorators


class RewardContext(Protocol):
    """What the training loop lends a reward that needs the policy (SAR, LASER-D's monitor)."""

    monitor: list[Problem]  # a fixed monitor split of training problems
    tokenizer: Any  # the policy's tokenizer (e.g. to find a tag's token position)

    def logprobs(self, prompts: list[Any], completion_ids: list[list[int]]) -> list[torch.Tensor]:
        """Per-token log-probs under the current policy of each completion after the given prompt."""
        ...

    def generate(self, problems: list[Problem], group_size: int) -> RewardBatch:
        """Sample `group_size` completions per problem with the current policy, verified (no reward)."""
        ...


@dataclass
class RewardBatch:
    """Everything a reward may read about one step's rollouts.

    lengths are in tokens, counting generated tokens up to and excluding EOS; `truncated` marks
    completions that hit the generation limit without EOS; `correct` is the task verifier's
    verdict (1.0/0.0), computed once per step and shared by every component.
    """

    prompts: list[Any]  # [N] prompt text or chat of each completion
    completions: list[str]  # [N] decoded completion text (no EOS, no padding)
    completion_ids: list[list[int]]  # [N] generated token ids (no EOS, no padding)
    lengths: torch.Tensor  # [N] long
    truncated: torch.Tensor  # [N] bool
    correct: torch.Tensor  # [N] float 0/1
    problems: list[Problem]  # [N] the problem of each completion
    group_size: int  # G
    step: int = 0
    max_new_tokens: int = 0
    schedule: dict[str, float] = field(default_factory=dict)  # current values of named schedules (budget...)
    token_entropies: torch.Tensor | None = None  # [N, T] sampling entropy per generated token, if asked for
    context: RewardContext | None = None  # access to the policy, for rewards that need it
    tokenizer: Any = None  # the policy's tokenizer when there is no context (e.g. scoring saved completions)

    @property
    def num_groups(self) -> int:
        return len(self.completions) // self.group_size

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """[N] → [B, G]."""
        return x.view(self.num_groups, self.group_size)


class RewardComponent(BaseModel):
    """Base of every reward: a small picklable, validated callable `batch → [N] float tensor`.

    Parameters are pydantic fields (unknown keys are refused), so a recipe entry such as
    `{type: kimi_length, weight: 0.4}` validates before any model loads. A family registers each class with
    `@REWARDS.register("name")`; every module of `rshape.rewards` is imported, so a new family is one file.
    The optional parts of the contract are declared here with their defaults.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)
    needs_entropies: ClassVar[bool] = False  # ask the rollout for per-token sampling entropies
    multiplicative: ClassVar[bool] = False  # multiplies the summed reward (`combine: multiply`) instead of adding
    has_step_rewards: ClassVar[bool] = False  # defines `step_rewards` (`combine: per_step`, process supervision)

    def __call__(self, batch: RewardBatch, **_: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must define __call__")

    def step_rewards(self, batch: RewardBatch, tokenizer: Any) -> list[list[tuple[int, float]]]:
        """Per completion, (index of a step's last token, reward) of each reasoning step (`has_step_rewards`)."""
        raise TypeError(f"{type(self).__name__} has no step rewards")

    def step_normalization(self) -> str:
        """How step rewards are normalised before their returns are taken: `none` or `group`."""
        return "none"

    def last_metrics(self) -> dict[str, float]:
        """Extra metrics of the last call, logged as `reward/<entry>/<key>` (e.g. an RM ensemble's disagreement)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Persistent state (e.g. per-prompt history), saved in checkpoints. Stateless by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""


def compiled_regex(value: str) -> str:
    """Pydantic validator body: the value must compile as a regular expression."""
    import re

    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value
