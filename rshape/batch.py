"""One step's rows: the record that generation fills, the verifier marks, rewards read and the update trains on.

A batch holds N = B·G completions, laid out prompt-major: rows g·G … g·G+G−1 are the G siblings of prompt g.
Rewards read the text view (prompts, completions, unpadded `completion_ids`, lengths, truncation, verdicts,
problems); the policy update reads the model view (left-padded `prompt_ids`, right-padded `token_ids` with EOS,
their masks). `select`, `concat` and the group reshape `grouped` are written once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from rshape.tasks.base import Problem, Task


def grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] → [B, G] (prompt-major rows)."""
    return x.view(-1, group_size)


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False, unbiased: bool = True) -> torch.Tensor:
    """The std of the non-NaN entries (Bessel-corrected when `unbiased`, NaN with fewer than two), as TRL's
    `nanstd`."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    if unbiased:
        count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
        var = var * torch.where(count > 1, count / (count - 1), torch.full_like(var, float("nan")))
    std = var.sqrt()
    return std if keepdim else (std.squeeze(dim) if dim is not None else std.reshape(()))


@dataclass
class Batch:
    """Everything known about one step's completions.

    `lengths` count generated tokens up to and excluding EOS; `truncated` marks completions that hit the generation
    limit without EOS; `correct` is the task verifier's verdict (1.0/0.0), computed once per step and shared by
    every reward (None until verified). `max_new_tokens` is this step's generation limit (a token-budget schedule
    can lower it below `rollout.max_new_tokens`, which the `dr_grpo` loss divides by).
    """

    prompts: list[Any]  # [N] prompt text or chat of each completion
    completions: list[str]  # [N] decoded completion text (no EOS, no padding)
    completion_ids: list[list[int]]  # [N] generated token ids (no EOS, no padding)
    lengths: torch.Tensor  # [N] long
    truncated: torch.Tensor  # [N] bool
    correct: torch.Tensor | None  # [N] float 0/1
    problems: list[Problem]  # [N] the problem of each completion
    group_size: int  # G
    step: int = 0
    max_new_tokens: int = 0  # this step's generation limit
    schedule: dict[str, float] = field(default_factory=dict)  # current values of named schedules (budget...)
    token_entropies: torch.Tensor | None = None  # [N, T] sampling entropy per generated token, if asked for
    context: Any = None  # rshape.rewards.base.RewardContext: access to the policy, for rewards that need it
    tokenizer: Any = None  # the policy's tokenizer when there is no context (e.g. scoring saved completions)
    prompt_ids: torch.Tensor | None = None  # [N, P] left-padded prompt tokens (model view)
    prompt_mask: torch.Tensor | None = None  # [N, P]
    token_ids: torch.Tensor | None = None  # [N, T] completion tokens with EOS, pad after (model view)
    token_mask: torch.Tensor | None = None  # [N, T] bool, up to and including EOS

    @property
    def num_groups(self) -> int:
        return len(self.completions) // self.group_size

    @property
    def num_tokens(self) -> int:
        """Completion tokens the loss sees (EOS included)."""
        return int(self.token_mask.sum())

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """[N] → [B, G]."""
        return grouped(x, self.group_size)

    def counting_eos(self) -> Batch:
        """The same rows with lengths that count the EOS of every completion that stopped (verl's convention)."""
        return dataclasses.replace(self, lengths=self.lengths + (~self.truncated.bool()).long())

    def select(self, rows: torch.Tensor) -> Batch:
        """The given rows (e.g. a minibatch, or whole groups kept by dynamic sampling)."""
        idx = rows.tolist()

        def pick(x: Any) -> Any:
            if x is None:
                return None
            return x[rows] if isinstance(x, torch.Tensor) else [x[i] for i in idx]

        return dataclasses.replace(self, **{f: pick(getattr(self, f)) for f in ROW_FIELDS})

    def trimmed(self) -> Batch:
        """The same rows without the columns that are padding in every row (leading prompt pads, trailing
        completion pads): a forward over it gives the same log-probs for every real token, on less compute."""
        pm = self.prompt_mask
        prompt_cols = int(pm.any(0).long().argmax()) if pm.any() else pm.shape[1]
        used = self.token_mask.any(0)
        width = int(used.nonzero().max()) + 1 if used.any() else 0
        if prompt_cols == 0 and width == self.token_ids.shape[1]:
            return self
        ent = self.token_entropies
        return dataclasses.replace(
            self, prompt_ids=self.prompt_ids[:, prompt_cols:], prompt_mask=pm[:, prompt_cols:],
            token_ids=self.token_ids[:, :width], token_mask=self.token_mask[:, :width],
            token_entropies=ent[:, :width] if ent is not None else None)

    @staticmethod
    def concat(parts: list[Batch], pad_token_id: int) -> Batch:
        """Several batches as one (e.g. dynamic-sampling rounds): prompts re-left-padded, completions
        right-padded; everything else from the first part."""
        if len(parts) == 1:
            return parts[0]
        values: dict[str, Any] = {}
        for f in ROW_FIELDS:
            xs = [getattr(p, f) for p in parts]
            if any(x is None for x in xs):
                values[f] = None
            elif isinstance(xs[0], torch.Tensor) and xs[0].dim() == 2:
                width = max(x.shape[1] for x in xs)
                left = f.startswith("prompt")
                pad = pad_token_id if f in ("prompt_ids", "token_ids") else 0
                values[f] = torch.cat([torch.nn.functional.pad(x, (width - x.shape[1], 0) if left else
                                                               (0, width - x.shape[1]), value=pad) for x in xs])
            elif isinstance(xs[0], torch.Tensor):
                values[f] = torch.cat(xs)
            else:
                values[f] = [v for x in xs for v in x]
        return dataclasses.replace(parts[0], **values)


def verify(batch: Batch, task: Task) -> torch.Tensor:
    """The task verifier's verdict on each completion → [N] float 0/1, stored as `batch.correct`."""
    batch.correct = torch.tensor([float(task.verify(t, p)) for t, p in zip(batch.completions, batch.problems)])
    return batch.correct


# the fields that hold one entry per row
ROW_FIELDS = ("prompts", "completions", "completion_ids", "lengths", "truncated", "correct", "problems",
               "token_entropies", "prompt_ids", "prompt_mask", "token_ids", "token_mask")
