"""The reward interface: a reward is a function of a whole batch of groups.

A batch holds N = B·G completions, laid out prompt-major: completions g·G … g·G+G−1 are the G
siblings of prompt g. A component returns one float per completion ([N] tensor); NaN means
"not applicable" for that sample, which then adds nothing to the total.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from rshape.batch import Batch
from rshape.registry import Registry
from rshape.tasks.base import Problem
from rshape.tasks.verifiers import extract_answer

REWARDS: Registry[type[RewardComponent]] = Registry("reward")  # filled by the family modules' decorators


class RewardContext(Protocol):
    """What the training loop lends a reward that needs the policy (SAR, LASER-D's monitor)."""

    monitor: list[Problem]  # a fixed monitor split of training problems
    tokenizer: Any  # the policy's tokenizer (e.g. to find a tag's token position)

    def logprobs(self, prompts: list[Any], completion_ids: list[list[int]]) -> list[torch.Tensor]:
        """Per-token log-probs under the current policy of each completion after the given prompt."""
        ...

    def generate(self, problems: list[Problem], group_size: int) -> Batch:
        """Sample `group_size` completions per problem with the current policy, verified (no reward)."""
        ...


class RewardComponent(BaseModel):
    """Base of every reward: a small picklable, validated callable `batch → [N] float tensor`.

    Parameters are pydantic fields (unknown keys are refused), so a recipe entry such as
    `{type: kimi_length, weight: 0.4}` validates before any model loads. A family registers each class with
    `@REWARDS.register("name")`; every module of `rshape.rewards` is imported, so a new family is one file.
    The optional parts of the contract are declared here with their defaults.
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", use_attribute_docstrings=True, frozen=True)
    needs_entropies: ClassVar[bool] = False  # ask the rollout for per-token sampling entropies
    multiplicative: ClassVar[bool] = False  # multiplies the summed reward (`combine: multiply`) instead of adding
    has_step_rewards: ClassVar[bool] = False  # defines `step_rewards` (`combine: per_step`, process supervision)

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must define __call__")

    def step_rewards(self, batch: Batch, tokenizer: Any) -> list[list[tuple[int, float]]]:
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


def unparsed(batch: Batch, correct: torch.Tensor | None = None) -> torch.Tensor:
    """[N] bool: wrong completions with no extractable answer (no `<answer>` tag or `\\boxed{}`), Laser's third
    score level; `correct` replaces the verifier's verdicts (a component that re-checks answers)."""
    ok = correct if correct is not None else batch.correct > 0
    return torch.tensor([extract_answer(t) is None for t in batch.completions]) & ~ok
