"""The length family: rewards that read a completion's token length against its group (METHODS.md §2)."""

from __future__ import annotations

from typing import Any

import torch

from rshape.rewards.base import RewardBatch, RewardComponent


class KimiLength(RewardComponent):
    """Kimi k1.5 length reward, per group and in tokens.

    λ_i = 0.5 − (L_i − L_min)/(L_max − L_min), with L_min, L_max over the G siblings;
    r_i = λ_i if correct else min(0, λ_i); r_i = 0 for the whole group when L_max = L_min.
    Source: Kimi k1.5 (arXiv 2501.12599) §2.3.3, as coded in Laser and open-r1 (METHODS.md §2);
    unlike open-r1 the min/max are per prompt group, not over the flat batch, and lengths are tokens.
    """

    def __call__(self, batch: RewardBatch, **_: Any) -> torch.Tensor:
        lengths = batch.grouped(batch.lengths.float())  # [B, G]
        correct = batch.grouped(batch.correct) > 0  # [B, G]
        lo = lengths.min(dim=1, keepdim=True).values  # [B, 1]
        hi = lengths.max(dim=1, keepdim=True).values  # [B, 1]
        span = hi - lo
        lam = 0.5 - (lengths - lo) / span.clamp_min(1e-12)  # [B, G]
        r = torch.where(correct, lam, lam.clamp(max=0.0))
        r = torch.where(span > 0, r, torch.zeros_like(r))
        return r.reshape(-1)


COMPONENTS = {"kimi_length": KimiLength}
