"""History-aware rewards: terms that compare a completion with what training has already seen (docs/methods.md)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PrivateAttr

from rshape.batch import Batch
from rshape.rewards.base import REWARDS, RewardComponent


def hapo_length_term(length: float, h: float | None, correct: bool, shape: str = "cosine",
                     tolerance: float = 0.1, correct_floor: float = -0.7) -> float:
    """HAPO's r_len for one completion against the prompt's history h (None or ≤ 0: no history → 0).

    cosine (`compute_len_reward`): s = cos(π/2 · L/h) if L < 2h else −1; r_len = max(s, −0.7) if correct,
    min(s, 0) if wrong.
    linear (`compute_len_reward_linear`), t = tolerance: correct: 1 − L/h if L < h, 0 if h ≤ L < (1+t)h,
    else max(−0.7, −(L − (1+t)h)/h); wrong: 0 if L < (1+t)h, else max(−1, −(L − (1+t)h)/h).
    """
    if h is None or h <= 0:
        return 0.0
    if shape == "cosine":
        s = math.cos((length / h) * (math.pi / 2)) if length < 2 * h else math.cos(math.pi)
        return max(correct_floor, s) if correct else min(0.0, s)
    edge = (1 + tolerance) * h
    if correct:
        if length < h:
            return 1.0 - length / h
        if length < edge:
            return 0.0
        return max(correct_floor, -((length - edge) / h))
    if length < edge:
        return 0.0
    return max(-1.0, -((length - edge) / h))


@REWARDS.register("hapo")
class Hapo(RewardComponent):
    """HAPO: r = c + w·r_len, with r_len measured against h, the shortest correct length seen so far for the prompt.

    Per prompt (key problem.id), h = min length of any correct answer in earlier steps; no history → r_len = 0.
    cosine: s = cos(π/2·L/h) if L < 2h else −1; r_len = max(s, −0.7) if correct, min(s, 0) if wrong.
    linear: the code's piecewise-linear variant with a 10% tolerance band (see `hapo_length_term`).
    As in the code (`combined_reward_func`), the batch is scored against the history *before* it, then h
    is updated with the batch's correct lengths; h = 0 (an empty correct answer) counts as no history, as
    in the code's `history_len > 0` test. `mode: mean` keeps the exact running mean of the correct lengths seen,
    as a float. The code's mean mode repeats its update once per completion of the prompt, so its count grows G×
    per step (the mean comes out the same when a prompt appears in one group per batch), and it stores h
    truncated to an integer, which rshape does not.
    The code's optional repetition term (rep_penalty = 0 by default) is left to a separate component.
    Source: Huang et al., "HAPO: Training Language Models to Reason Concisely via History-Aware Policy
    Optimization" (arXiv 2505.11225), compared against HCY123902/HAPO `utils.py` and `grpo_trainer.py`
    (docs/methods.md). State: {prompt id: h} (and counts in mean mode), checkpointed.
    """

    summary: ClassVar[str] = (
        'h = shortest correct length seen for the prompt so far (checkpointed); s = cos(π/2·L/h), −1 '
        'from 2h; r = c + w·(max(s, −0.7) if correct, min(s, 0) if wrong); 0 without history'
    )
    source: ClassVar[str] = 'HAPO, arXiv 2505.11225'

    length_weight: float = Field(1.0, ge=0.0, le=1.0)
    """w: weight of the length term (HAPO: w_lr = 1.0); the entry's `weight` scales the whole reward."""
    shape: Literal["cosine", "linear"] = "cosine"
    """Length term: `cosine` (HAPO default) or `linear`."""
    tolerance: float = Field(0.1, ge=0.0)
    """Linear shape only: lengths within (1 + tolerance)·h are not penalised (HAPO: 0.1)."""
    correct_floor: float = Field(-0.7, le=0.0)
    """Lowest length term of a correct answer, so it always beats a wrong one (HAPO: −0.7)."""
    mode: Literal["min", "mean"] = "min"
    """History h: `min` correct length (HAPO default) or running `mean` of correct lengths."""
    include_correctness: bool = True
    """Add c (the verifier's 1/0) as HAPO does; False leaves only w·r_len, to pair with a separate correctness entry."""

    _history: dict = PrivateAttr(default_factory=dict)  # prompt id → h
    _counts: dict = PrivateAttr(default_factory=dict)  # prompt id → number of correct answers seen (mean mode)

    def history(self) -> dict[str, float]:
        """A copy of {prompt id: h}."""
        return dict(self._history)

    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self._history), "counts": dict(self._counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history.clear()
        self._history.update(state.get("history", {}))
        self._counts.clear()
        self._counts.update(state.get("counts", {}))

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        lengths = batch.lengths.tolist()
        correct = (batch.correct > 0).tolist()
        ids = [str(p.id) for p in batch.problems]
        out = []
        for L, c, pid in zip(lengths, correct, ids):
            r_len = hapo_length_term(float(L), self._history.get(pid), c, self.shape, self.tolerance, self.correct_floor)
            out.append((1.0 if c and self.include_correctness else 0.0) + self.length_weight * r_len)
        # update the history after scoring, with this batch's correct lengths
        new: dict[str, list[int]] = defaultdict(list)
        for L, c, pid in zip(lengths, correct, ids):
            if c:
                new[pid].append(int(L))
        for pid, lens in new.items():
            if self.mode == "min":
                old = self._history.get(pid)
                self._history[pid] = float(min(lens) if old is None else min(min(lens), old))
            else:
                count = self._counts.get(pid, 0)
                mean = sum(lens) / len(lens)
                if count <= 0:
                    self._history[pid] = float(mean)
                else:
                    ratio = len(lens) / (count + len(lens))
                    self._history[pid] = ratio * mean + (1 - ratio) * self._history[pid]
                self._counts[pid] = count + len(lens)
        return torch.tensor(out, dtype=torch.float64)
