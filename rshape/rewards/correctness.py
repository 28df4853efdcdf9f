"""Correctness: the task verifier's verdict as a reward (METHODS.md §1)."""

from __future__ import annotations

from typing import Any

import torch

from rshape.rewards.base import RewardBatch, RewardComponent


class Correctness(RewardComponent):
    """r_i = correct_score if c_i else wrong_score, c_i from the task's verifier.

    Source: METHODS.md §1. Papers score 1/0, or 1/−0.5 (the Laser code).
    """

    correct_score: float = 1.0
    """Reward of a correct completion."""
    wrong_score: float = 0.0
    """Reward of a wrong (or unparseable) completion."""

    def __call__(self, batch: RewardBatch, **_: Any) -> torch.Tensor:
        return torch.where(batch.correct > 0, self.correct_score, self.wrong_score).float()


COMPONENTS = {"correctness": Correctness}
