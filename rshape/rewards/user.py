"""User reward functions named by dotted path, with TRL's reward-function signature.

    def my_reward(prompts, completions, completion_ids, **kwargs) -> list[float | None]

`prompts` and `completions` are strings, or chat messages when the data is chat-shaped (a completion is
then `[{"role": "assistant", "content": text}]`, as TRL passes it); every data column arrives as a
keyword argument holding one value per completion (`answer`, `difficulty` and the file's other
columns), with `trainer_state` (here: {"global_step": step}) and the entry's own parameters. None
means "not applicable" for that sample. Existing TRL reward functions drop in unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import ConfigDict, PrivateAttr

from rshape.batch import Batch
from rshape.registry import load_dotted
from rshape.rewards.base import RewardComponent


class UserRewardError(Exception):
    """A user reward function misbehaved (raised, returned NaN or the wrong number of values)."""


class UserFunction(RewardComponent):
    """A plain Python function with TRL's signature, as a reward component."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    """Dotted path `package.module:function`."""
    params: dict[str, Any] = {}
    """Extra keyword arguments passed to the function."""
    _fn: Callable[..., Any] | None = PrivateAttr(default=None)

    def function(self) -> Callable[..., Any]:
        if self._fn is None:
            self._fn = load_dotted(self.path)
        return self._fn

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        chat = bool(batch.prompts) and isinstance(batch.prompts[0], list)
        completions: list[Any] = ([[{"role": "assistant", "content": c}] for c in batch.completions]
                                  if chat else list(batch.completions))
        columns: dict[str, list[Any]] = {"answer": [p.answer for p in batch.problems],
                                         "difficulty": [p.difficulty for p in batch.problems]}
        for key in sorted({k for p in batch.problems for k in p.meta}):
            columns.setdefault(key, [p.meta.get(key) for p in batch.problems])
        try:
            out = self.function()(prompts=list(batch.prompts), completions=completions,
                                  completion_ids=batch.completion_ids, trainer_state={"global_step": batch.step},
                                  **columns, **self.params)
        except (Exception, SystemExit) as exc:  # the user's code (even sys.exit()): report it on one line
            raise UserRewardError(f"{self.path} raised {type(exc).__name__}: {exc}") from None
        n = len(batch.completions)
        try:
            values = list(out)
        except TypeError:
            raise UserRewardError(f"{self.path} returned {type(out).__name__}, expected a list of {n} floats") from None
        if len(values) != n:
            raise UserRewardError(f"{self.path} returned {len(values)} values for {n} completions")
        result = []
        for i, v in enumerate(values):
            if v is None:
                result.append(float("nan"))
                continue
            try:
                if isinstance(v, (str, bytes)):  # "0.5" is text, not a reward
                    raise TypeError
                f = float(v)
            except (TypeError, ValueError):
                raise UserRewardError(f"{self.path} returned {v!r} for completion {i}, not a number") from None
            if math.isnan(f):
                raise UserRewardError(f"{self.path} returned NaN for completion {i} (return None for 'not applicable')")
            if math.isinf(f):
                raise UserRewardError(f"{self.path} returned {f} for completion {i}; rewards must be finite")
            result.append(f)
        return torch.tensor(result, dtype=torch.float64)
