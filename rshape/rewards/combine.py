"""Combining reward components into what reaches the policy update (docs/methods.md).

Each entry of a recipe's `rewards:` becomes a `WeightedComponent`:
- `combine: add` (default): contributes weight·raw to the sum (NaN "not applicable" contributes 0);
- `gate: {on: NAME, threshold: Δ}`: an added component counts only where component NAME's raw value
  is ≥ Δ (G-RA: R = r_high + Σ 1[r_high ≥ Δ]·r_low), e.g. a length bonus only for correct answers;
- `constraint: {at_least | at_most: θ, lr: η}`: the weight is a Lagrange multiplier that keeps the
  component's batch mean above / below θ (Constrained RLHF; see `Constraint`);
- `combine: multiply`: the sum of the added components r becomes r·v where v ≥ 0 and v where v < 0
  (CaRL-style multipliers; ProRL's stop-properly override); NaN leaves r unchanged; the weight stays 1.
The weight and any parameter may be a schedule of the step (rshape.schedules).

The set returns raw and weighted rewards only; advantages are rshape.rl.advantages': `reward_combine:
sum_then_normalize` (default) gives the total to the estimator, `normalize_then_sum` (GDPO) normalises each
added component within its group instead (`normalize_then_sum` there, from each component's weight and gate in
`RewardScores.added`), and `combine: per_step` components add token-level step returns (`step_advantages`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from rshape.batch import Batch, nanstd
from rshape.rewards.base import RewardComponent
from rshape.schedules import Schedule


class RewardRuntimeError(Exception):
    """A component failed while scoring: names the component (the recipe entry) and its type."""


@dataclass
class Constraint:
    """Constrained RLHF (Moskovitz et al., arXiv 2310.04373; docs/methods.md): the component's weight is a
    Lagrange multiplier λ ≥ 0, updated once per step by projected gradient ascent on the constraint:

        at_least θ:  contribution +λ·r,  λ ← max(0, λ + η·(θ − mean r))   (λ grows while the mean is below θ)
        at_most θ:   contribution −λ·r,  λ ← max(0, λ + η·(mean r − θ))   (λ grows while the mean is above θ)

    λ starts at `initial` and is saved in checkpoints with the reward state.
    """

    bound: Literal["at_least", "at_most"]
    threshold: float
    lr: float = 0.1
    initial: float = 0.0
    value: float = 0.0  # the current multiplier λ

    def update(self, mean: float) -> None:
        gap = self.threshold - mean if self.bound == "at_least" else mean - self.threshold
        self.value = max(0.0, self.value + self.lr * gap)


@dataclass
class WeightedComponent:
    name: str  # the recipe entry name; also the metric key
    weight: float | Schedule
    component: RewardComponent
    combine: Literal["add", "multiply", "per_step"] = "add"
    constraint: Constraint | None = None  # a Lagrange multiplier replaces the fixed weight
    gate_on: str | None = None
    gate_threshold: float = 0.0
    scheduled_params: dict[str, Schedule] = field(default_factory=dict)
    type_name: str = ""

    def weight_at(self, step: int) -> float:
        return self.weight(step) if isinstance(self.weight, Schedule) else float(self.weight)

    def component_at(self, step: int) -> RewardComponent:
        """The component with scheduled parameters set to their value at `step` (state is shared)."""
        if not self.scheduled_params:
            return self.component
        return self.component.model_copy(update={k: s(step) for k, s in self.scheduled_params.items()})


@dataclass
class RewardScores:
    total: torch.Tensor  # [N] the reward the advantage estimator receives (the weighted combination)
    raw: dict[str, torch.Tensor]  # component name → [N] raw values (NaN = not applicable)
    metrics: dict[str, float]  # reward/<name>/raw, .../weighted, reward/total ...
    added: dict[str, tuple[float, torch.Tensor]] = field(default_factory=dict)  # added component → (weight, gate [N])


def apply_multiplier(reward: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """How a multiplicative component (`combine: multiply`: `truncation`, `stop_properly`...) acts on r.

    r ← value where value < 0 (an override, ProRL/OpenRLHF's negative coefficient), r ← r·value where
    value ≥ 0, r unchanged where value is NaN. This reproduces DLER's and OpenRLHF's code exactly.
    """
    value = value.to(reward.dtype)
    scaled = torch.where(value < 0, value, reward * value)
    return torch.where(torch.isnan(value), reward, scaled)


@dataclass
class RewardSet:
    """The recipe's reward: see the module docstring for the combination rules."""

    components: list[WeightedComponent]
    mode: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"  # read by rshape.rl.step

    @property
    def needs_entropies(self) -> bool:
        return any(wc.component.needs_entropies for wc in self.components)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {wc.name: wc.component.state_dict() for wc in self.components}
        state["_lagrange"] = {wc.name: wc.constraint.value for wc in self.components if wc.constraint}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for wc in self.components:
            if wc.name in state:
                wc.component.load_state_dict(state[wc.name])
            if wc.constraint and wc.name in state.get("_lagrange", {}):
                wc.constraint.value = state["_lagrange"][wc.name]

    def update_multipliers(self, raws: dict[str, torch.Tensor]) -> None:
        """After a step's combination: move every Lagrange multiplier (constrained components)."""
        for wc in self.components:
            if wc.constraint is not None:
                vals = raws[wc.name][~torch.isnan(raws[wc.name])]
                if vals.numel():
                    wc.constraint.update(vals.mean().item())

    def _raw(self, wc: WeightedComponent, batch: Batch) -> torch.Tensor:
        n = len(batch.completions)
        try:
            raw = wc.component_at(batch.step)(batch)
        except (Exception, SystemExit) as exc:  # a reward that calls sys.exit() is a failing reward, not the end of rl
            raise RewardRuntimeError(f"reward '{wc.name}' ({wc.type_name}) at step {batch.step}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        raw = torch.as_tensor(raw, dtype=torch.float64).reshape(-1).cpu()  # float64 from component to total
        if raw.numel() != n:
            raise RewardRuntimeError(f"reward '{wc.name}' ({wc.type_name}) returned {raw.numel()} values for {n} completions")
        if torch.isinf(raw).any():
            i = int(torch.isinf(raw).nonzero()[0])
            raise RewardRuntimeError(f"reward '{wc.name}' ({wc.type_name}) at step {batch.step} returned {raw[i].item()} "
                                     f"for completion {i}; rewards must be finite (NaN means not applicable)")
        return raw

    def score(self, batch: Batch) -> RewardScores:
        """Call every component once on the batch, then combine."""
        return self.combine(self.raw_scores(batch), batch.step)

    def raw_scores(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Each component's raw values [N] (the only place components are called)."""
        return {wc.name: self._raw(wc, batch) for wc in self.components}

    def step_rewards(self, batch: Batch, tokenizer: Any) -> list[tuple[float, list[list[tuple[int, float]]], str]]:
        """(weight, step rewards, step normalisation) of each `combine: per_step` component: step_rewards[i] lists
        (index of a step's last token, reward) of completion i (rshape.rl.advantages.step_advantages)."""
        out = []
        for wc in self.components:
            if wc.combine != "per_step":
                continue
            component = wc.component_at(batch.step)
            try:
                steps = component.step_rewards(batch, tokenizer)
            except (Exception, SystemExit) as exc:
                raise RewardRuntimeError(f"reward '{wc.name}' ({wc.type_name}) at step {batch.step}: "
                                         f"{type(exc).__name__}: {exc}") from exc
            out.append((wc.weight_at(batch.step), steps, component.step_normalization()))
        return out

    def combine(self, raws: dict[str, torch.Tensor], step: int) -> RewardScores:
        """The total (and metrics) from raw component values: a pure function of its inputs."""
        n = next(iter(raws.values())).numel()
        metrics: dict[str, float] = {}
        added = torch.zeros(n, dtype=torch.float64)
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        multipliers = []
        for wc in self.components:
            raw = raws[wc.name]
            applicable = ~torch.isnan(raw)
            w = wc.weight_at(step)
            if wc.constraint is not None:
                w = wc.constraint.value if wc.constraint.bound == "at_least" else -wc.constraint.value
                metrics[f"reward/{wc.name}/lagrange"] = wc.constraint.value
            vals = raw[applicable]
            metrics[f"reward/{wc.name}/raw"] = vals.mean().item() if vals.numel() else float("nan")
            metrics[f"reward/{wc.name}/raw_std"] = vals.std(unbiased=False).item() if vals.numel() else float("nan")
            metrics[f"reward/{wc.name}/applicable"] = applicable.float().mean().item()
            if isinstance(wc.weight, Schedule):
                metrics[f"reward/{wc.name}/weight"] = w
            for k, s in wc.scheduled_params.items():
                metrics[f"reward/{wc.name}/{k}"] = s(step)
            if wc.combine == "multiply":
                multipliers.append(raw)
                continue
            if wc.combine == "per_step":  # enters as token-level advantages (step_advantages), not the total
                metrics[f"reward/{wc.name}/weighted"] = (w * raw[applicable]).mean().item() if vals.numel() else 0.0
                continue
            gate = torch.ones(n, dtype=torch.bool)
            if wc.gate_on is not None:
                gate = raws[wc.gate_on].nan_to_num(float("-inf")) >= wc.gate_threshold
                metrics[f"reward/{wc.name}/gate_open"] = gate.float().mean().item()
            contribution = torch.where(applicable & gate, w * raw, torch.zeros_like(raw))
            added += contribution
            metrics[f"reward/{wc.name}/weighted"] = contribution.mean().item()
            terms[wc.name] = (w, gate)
        total = added
        for raw in multipliers:  # in recipe order
            total = apply_multiplier(total, raw)
        added_raws = [raws[wc.name] for wc in self.components if wc.combine == "add"]
        if added_raws:  # no added component applies: unscorable, NaN (TRL), left out of the advantage's statistics
            unscorable = torch.stack([torch.isnan(r) for r in added_raws]).all(0)  # [N]
            total = torch.where(unscorable, torch.full_like(total, float("nan")), total)
        for wc in self.components:
            if wc.combine == "multiply":  # the change a multiplier made to the total
                metrics[f"reward/{wc.name}/weighted"] = torch.nanmean(total - added).item()
        metrics["reward/total"] = torch.nanmean(total).item() if n else float("nan")
        metrics["reward/total_std"] = nanstd(total, unbiased=False).item() if n else float("nan")
        metrics["reward/unscorable"] = torch.isnan(total).double().mean().item() if n else 0.0
        return RewardScores(total=total, raw=raws, metrics=metrics, added=terms)
