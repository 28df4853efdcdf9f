"""Advantage estimators: from rewards [B·G] (prompt-major) to one advantage per completion (METHODS.md §6)."""

from __future__ import annotations

import torch

from rshape.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: A_i = (r_i − mean_g) / (std_g + eps) over the G siblings.

    std is the unbiased (Bessel-corrected) sample std, as TRL and verl compute it; a group whose
    rewards are all equal gets A = 0. Source: DeepSeekMath (arXiv 2402.03300) §4.1; METHODS.md §6.
    """
    r = rewards.float().view(-1, group_size)  # [B, G]
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True)  # unbiased
    return ((r - mean) / (std + eps)).reshape(-1)
