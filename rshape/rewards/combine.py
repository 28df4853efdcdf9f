"""Combining reward components into the scalar that reaches the advantage estimator (METHODS.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rshape.rewards.base import RewardBatch, RewardComponent


@dataclass
class WeightedComponent:
    name: str  # the recipe entry name; also the metric key
    weight: float
    component: RewardComponent


@dataclass
class RewardSet:
    """A weighted sum r_i = Σ_k w_k · r_k,i over components (a NaN "not applicable" adds 0).

    `score` returns the total that the optimiser sees together with the metrics of each component,
    so the logged `reward/total` is the same tensor that is optimised (METHODS.md §5).
    """

    components: list[WeightedComponent]

    @property
    def needs_entropies(self) -> bool:
        return any(wc.component.needs_entropies for wc in self.components)

    def state_dict(self) -> dict[str, Any]:
        return {wc.name: wc.component.state_dict() for wc in self.components}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for wc in self.components:
            if wc.name in state:
                wc.component.load_state_dict(state[wc.name])

    def score(self, batch: RewardBatch) -> RewardScores:
        n = len(batch.completions)
        total = torch.zeros(n)
        metrics: dict[str, float] = {}
        raws: dict[str, torch.Tensor] = {}
        for wc in self.components:
            raw = wc.component(batch).float().reshape(-1)  # [N]
            if raw.numel() != n:
                raise ValueError(f"reward {wc.name!r} returned {raw.numel()} values for {n} completions")
            raws[wc.name] = raw
            applicable = ~torch.isnan(raw)
            weighted = torch.where(applicable, wc.weight * raw, torch.zeros_like(raw))
            total += weighted
            vals = raw[applicable]
            metrics[f"reward/{wc.name}/raw"] = vals.mean().item() if vals.numel() else float("nan")
            metrics[f"reward/{wc.name}/raw_std"] = vals.std(unbiased=False).item() if vals.numel() else float("nan")
            metrics[f"reward/{wc.name}/weighted"] = weighted.mean().item()
            metrics[f"reward/{wc.name}/applicable"] = applicable.float().mean().item()
        metrics["reward/total"] = total.mean().item()
        metrics["reward/total_std"] = total.std(unbiased=False).item()
        return RewardScores(total=total, raw=raws, metrics=metrics)


@dataclass
class RewardScores:
    total: torch.Tensor  # [N] the reward the advantage estimator receives
    raw: dict[str, torch.Tensor]  # component name → [N] raw values (NaN = not applicable)
    metrics: dict[str, float]  # reward/<name>/raw, .../weighted, reward/total ...
