"""Which prompts each step trains on: epochs of seeded shuffles over the train pool, with a saved cursor."""

from __future__ import annotations

from typing import Any

import torch

from rshape.tasks.base import Problem


class PromptSampler:
    """Draws prompts without replacement within an epoch; the order of epoch e is a permutation
    seeded by (seed, e), so the state is just (epoch, cursor) and a resume continues exactly."""

    def __init__(self, pool: list[Problem], seed: int) -> None:
        if not pool:
            raise ValueError("the train pool is empty")
        self.pool = pool
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.pool), generator=g).tolist()

    def next(self, n: int) -> list[Problem]:
        out = []
        for _ in range(n):
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._permutation(self.epoch)
            out.append(self.pool[self._order[self.cursor]])
            self.cursor += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self.cursor = state["cursor"]
        self._order = self._permutation(self.epoch)
