"""Reward-model losses (docs/methods.md).

Bradley-Terry, per preference pair with d = r_c − r_r and margin m (0 when absent or margin is off):
    ℓ = −log σ(d − m)                                        (TRL RewardTrainer, Llama-2's margin loss)
Ties (SoliReward): the pair is trained toward σ(d) = ½, binary cross-entropy with target ½:
    ℓ_tie = −½·log σ(d) − ½·log σ(−d)                        (minimum log 2 at d = 0)
The batch loss is the mean over the counted pairs of w·ℓ (w = 1, tie_weight for ties; ties are not
counted when dropped), plus the centring term of TRL's `center_rewards_coefficient`:
    η·mean((r_c + r_r)²) over every pair of the batch.
Regression / multi-attribute (HelpSteer2): mean squared error over the rated (non-NaN) entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       tie: torch.Tensor | None = None, center_coef: float = 0.0, ties: str = "half",
                       tie_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss over a batch of pairs (all [B]); returns (scalar loss, stats for logging)."""
    d = r_chosen - r_rejected
    m = torch.zeros_like(d) if margin is None else margin.to(d)
    is_tie = torch.zeros_like(d, dtype=torch.bool) if tie is None else tie.to(d.device).bool()
    pref = -F.logsigmoid(d - m)
    tie_loss = -0.5 * F.logsigmoid(d) - 0.5 * F.logsigmoid(-d)
    per = torch.where(is_tie, tie_weight * tie_loss, pref)
    if ties == "drop":
        counted = ~is_tie
    elif ties == "half":
        counted = torch.ones_like(is_tie)
    else:
        raise ValueError(f"unknown tie handling {ties!r}; valid: half, drop")
    n = counted.sum()
    loss = (per * counted).sum() / n.clamp_min(1)
    center = (r_chosen + r_rejected).pow(2).mean() if d.numel() else d.sum()
    if center_coef:
        loss = loss + center_coef * center
    with torch.no_grad():
        nt = ~is_tie
        acc = ((d[nt] > 0).float() + 0.5 * (d[nt] == 0).float()).mean().item() if nt.any() else float("nan")
        stats = {"loss/bt": (pref * nt).sum().item() / max(1, int(nt.sum())),
                 "loss/tie": (tie_loss * is_tie).sum().item() / max(1, int(is_tie.sum())) if is_tie.any() else float("nan"),
                 "loss/center": center.item(), "train/accuracy": acc, "train/margin": d[nt].mean().item() if nt.any() else
                 float("nan")}
    return loss, stats


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE over rated entries: pred, target [B, A], NaN in target = not rated."""
    rated = ~torch.isnan(target)
    diff = torch.where(rated, pred - target.nan_to_num(0.0), torch.zeros_like(pred))
    loss = diff.pow(2).sum() / rated.sum().clamp_min(1)
    return loss, {"loss/mse": loss.item()}
