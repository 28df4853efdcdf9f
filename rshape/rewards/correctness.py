"""Correctness: a verifier's verdict as a reward (docs/methods.md)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from rshape.batch import Batch
from rshape.rewards.base import REWARDS, RewardComponent, unparsed
from rshape.tasks.verifiers import VERIFIERS


@REWARDS.register("correctness")
class Correctness(RewardComponent):
    """r_i = correct_score if c_i else wrong_score.

    c_i is the task verifier's verdict (batch.correct, `verifier: task`), or a re-check of the
    completion against problem.answer with one of rshape.tasks.verifiers: `exact` (extracted answer
    equal after normalisation), `numeric` (numbers equal within tolerance, "1,000" = 1000) or `math`
    (symbolic equivalence through math-verify, `\\frac{1}{2}` = 0.5). The answer is read from the last
    `<answer>` tag, else the last `\\boxed{}`.
    Source: docs/methods.md. Papers score 1/0, or 1/−0.5 (the Laser code).
    """

    summary: ClassVar[str] = (
        '`correct_score` if the answer is right, else `wrong_score`; checked by the task or re-checked'
    )
    source: ClassVar[str] = 'rule-based outcome reward (DeepSeek-R1, arXiv 2501.12948)'

    correct_score: float = 1.0
    """Reward of a correct completion."""
    wrong_score: float = 0.0
    """Reward of a wrong completion (and of an unparsable one unless `unparsed_score` is set)."""
    unparsed_score: float | None = None
    """Reward of a wrong completion with no extractable answer (no `<answer>` tag or `\\boxed{}`); None:
    wrong_score. Laser's scoring: correct 1, wrong −0.5, unparsed −1."""
    verifier: Literal["task", "exact", "numeric", "math"] = "task"
    """`task`: the task's own verdict (batch.correct); `exact`, `numeric`, `math`: re-check against problem.answer."""

    def verdicts(self, batch: Batch) -> torch.Tensor:
        """[N] bool: which completions this component counts as correct."""
        if self.verifier == "task":
            return batch.correct > 0
        check = VERIFIERS[self.verifier]
        return torch.tensor([bool(check(t, p)) for t, p in zip(batch.completions, batch.problems)], dtype=torch.bool)

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        ok = self.verdicts(batch)  # [N] bool
        r = torch.where(ok, torch.tensor(float(self.correct_score), dtype=torch.float64), float(self.wrong_score))
        if self.unparsed_score is not None:
            r = torch.where(unparsed(batch, ok), torch.tensor(float(self.unparsed_score), dtype=torch.float64), r)
        return r
