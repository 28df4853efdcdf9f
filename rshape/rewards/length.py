"""The length family: rewards that read a completion's token length against its group (docs/methods.md)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from rshape.batch import Batch
from rshape.rewards.base import REWARDS, RewardComponent, unparsed
from rshape.rewards.combine import apply_multiplier  # noqa: F401  (documented here)


@REWARDS.register("kimi_length")
class KimiLength(RewardComponent):
    """Kimi k1.5 length reward, per group and in tokens.

    λ_i = 0.5 − (L_i − L_min)/(L_max − L_min), with L_min, L_max over the G siblings;
    r_i = λ_i if correct else min(0, λ_i); r_i = 0 for the whole group when L_max = L_min.
    `unparsed_score` set: a completion with no extractable answer gets that value instead (Laser's code gives
    unparsed answers no length term: 0, next to a correctness entry scoring them −1).
    Source: Kimi k1.5 (arXiv 2501.12599) §2.3.3, as coded in Laser and open-r1 (docs/methods.md);
    unlike open-r1 the min/max are per prompt group, not over the flat batch, and lengths are tokens.
    """

    summary: ClassVar[str] = (
        'per group: λ = 0.5 − (L − L_min)/(L_max − L_min); λ if correct, min(0, λ) if wrong; 0 if all '
        'lengths are equal'
    )
    source: ClassVar[str] = 'Kimi k1.5, arXiv 2501.12599'

    unparsed_score: float | None = None
    """The value of a wrong completion with no extractable answer (no `<answer>` tag or `\\boxed{}`) instead of
    min(0, λ); None: no special case. Laser: 0 (its unparsed answers keep their −1 score)."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        lengths = batch.grouped(batch.lengths.double())  # [B, G]
        correct = batch.grouped(batch.correct) > 0  # [B, G]
        lo = lengths.min(dim=1, keepdim=True).values  # [B, 1]
        hi = lengths.max(dim=1, keepdim=True).values  # [B, 1]
        span = hi - lo
        lam = 0.5 - (lengths - lo) / span.clamp_min(1e-12)  # [B, G]
        r = torch.where(correct, lam, lam.clamp(max=0.0))
        r = torch.where(span > 0, r, torch.zeros_like(r)).reshape(-1)  # [N]
        return _with_unparsed(r, batch, self.unparsed_score)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers shared by the components below.


def _with_unparsed(r: torch.Tensor, batch: Batch, unparsed_score: float | None) -> torch.Tensor:
    """r with `unparsed_score` for the wrong completions that have no extractable answer (Laser's third score
    level); r itself when unparsed_score is None."""
    if unparsed_score is None:
        return r
    return torch.where(unparsed(batch), torch.tensor(float(unparsed_score), dtype=torch.float64), r)


def _limit(value: float | None, batch: Batch, owner: str, field: str) -> float:
    """`value` if set, else the generation limit batch.max_new_tokens; a clear error when neither is known."""
    if value is not None:
        return float(value)
    if batch.max_new_tokens <= 0:
        raise ValueError(f"{owner}: {field} is not set and batch.max_new_tokens is {batch.max_new_tokens}; "
                         f"set {field} or run inside the RL loop, which ties it to rollout.max_new_tokens")
    return float(batch.max_new_tokens)


def _self_normalized(lengths: torch.Tensor, correct: torch.Tensor, alpha: float, eps: float) -> torch.Tensor:
    """Laser's `compute_norm_length_penalty` on [B, G]: 1 − α·σ((L − μ)/(s + eps)) where correct, 0 elsewhere.

    μ, s = mean and unbiased std (torch.std) of the group's correct lengths; with exactly one correct
    answer Laser sets μ = 0, s = 1 (so z = L), which we keep to agree with the code.
    """
    m = correct.to(lengths.dtype)  # [B, G]
    n = m.sum(dim=1, keepdim=True)  # [B, 1]
    mean = (lengths * m).sum(dim=1, keepdim=True) / n.clamp_min(1)
    var = (((lengths - mean) * m) ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp_min(1)
    std = var.sqrt()
    single = n == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    z = (lengths - mean) / (std + eps)
    return torch.where(correct, 1.0 - alpha * torch.sigmoid(z), torch.zeros_like(lengths))


# ---------------------------------------------------------------------------------------------------------------------
# Length shaping that includes the correctness score (meant to replace `correctness`, not to be added to it).


@REWARDS.register("cosine")
class CosineLength(RewardComponent):
    """Cosine length scaling (Demystifying Long CoT, arXiv 2502.03373): correctness and length in one reward.

    p = min(L/L_max, 1); r = v_lo + ½(v_hi − v_lo)(1 + cos(π·p)), with (v_lo, v_hi) =
    (min_value_correct, max_value_correct) for a correct answer (1.0 at L = 0 down to 0.5 at L_max) and
    (max_value_wrong, min_value_wrong) for a wrong one (−1.0 at L = 0 up to −0.5 at L_max: short wrong
    answers are punished most). L_max defaults to the generation limit. docs/methods.md.

    The value already encodes correctness, so use it instead of `correctness`. Compared against
    open-r1 `src/open_r1/rewards.py::get_cosine_scaled_reward` and the authors' eddycmu/demystify-long-cot
    `openrlhf/openrlhf/reward/cosine.py` (same formula for L ≤ L_max). Differences: lengths are tokens
    (open-r1 counts characters), p is clipped at 1 as in docs/methods.md (the codes let cos wrap around past
    L_max), and the authors' `exceed_length` value for completions that hit the limit is the optional
    `exceed_value` here, applied to truncated completions (off by default, like open-r1/TRL). The values may come
    in any order, as in TRL: `min_value_correct > max_value_correct` rewards longer correct answers.
    """

    summary: ClassVar[str] = (
        'p = min(L/L_max, 1); r = v_lo + ½(v_hi − v_lo)(1 + cos πp): correct 1 → 0.5, wrong −1 → −0.5'
    )
    source: ClassVar[str] = 'Demystifying Long CoT, arXiv 2502.03373'

    min_value_wrong: float = -1.0
    """Reward of a wrong answer of length 0 (the most negative)."""
    max_value_wrong: float = -0.5
    """Reward of a wrong answer of length ≥ max_len."""
    min_value_correct: float = 0.5
    """Reward of a correct answer of length ≥ max_len."""
    max_value_correct: float = 1.0
    """Reward of a correct answer of length 0 (the largest)."""
    max_len: float | None = Field(None, gt=0)
    """L_max in tokens; None = the generation limit (batch.max_new_tokens)."""
    exceed_value: float | None = None
    """If set, the reward of every truncated completion (the authors' `exceed_length`); None = off."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        l_max = _limit(self.max_len, batch, "cosine", "max_len")
        lengths = batch.lengths.double()
        correct = batch.correct > 0
        cosine = torch.cos(math.pi * (lengths / l_max).clamp(max=1.0))
        lo = torch.where(correct, torch.tensor(float(self.min_value_correct), dtype=torch.float64), float(self.max_value_wrong))
        hi = torch.where(correct, torch.tensor(float(self.max_value_correct), dtype=torch.float64), float(self.min_value_wrong))
        r = lo + 0.5 * (hi - lo) * (1.0 + cosine)
        if self.exceed_value is not None:
            r = torch.where(batch.truncated.bool(), torch.full_like(r, self.exceed_value), r)
        return r.double()


class _TargetLength(RewardComponent):
    """Where LCPO reads the target n_t of each sample: problem.meta[target_key], else the schedule, else `target`."""

    target_key: str = "target_length"
    """Column of problem.meta that holds the target length in tokens (L1 states it in the prompt)."""
    schedule_key: str = "budget"
    """Key of batch.schedule used when the problem has no target."""
    target: float | None = Field(None, gt=0)
    """A fixed target used when neither the problem nor the schedule gives one; None = error."""
    no_target: Literal["error", "correctness"] = "error"
    """A sample without a target (none found, or a target of −1 as cmu-l3/l1's data marks it): `error`, or
    `correctness`: plain c ∈ {0, 1}, what the reference code returns then."""
    form: Literal["default", "add", "multiply"] = "default"
    """How the length score δ meets c (cmu-l3/l1's `multiplier_reward`): `add` r = c + δ, `multiply` r = c·max(0, δ);
    `default`: the paper's formula of this component (see its description)."""
    shape: Literal["linear", "sigmoid"] = "linear"
    """δ of cmu-l3/l1: `linear` (`get_delta_score_linear` / `_linear_both`) or `sigmoid` (`get_delta_score_sigmoid`,
    `_sigmoid_exact`), both with slope `alpha`; only with form add or multiply."""

    def targets(self, batch: Batch, owner: str) -> torch.Tensor:
        """n_t per sample [N]; NaN where there is none and `no_target: correctness`."""
        fallback = batch.schedule.get(self.schedule_key, self.target)
        out = []
        for i, p in enumerate(batch.problems):
            t = p.meta.get(self.target_key, fallback) if p.meta else fallback
            if self.no_target == "correctness" and (t is None or float(t) == -1):
                out.append(math.nan)
                continue
            if t is None:
                raise ValueError(f"{owner}: sample {i} (problem {p.id!r}) has no target length: no meta[{self.target_key!r}], "
                                 f"no batch.schedule[{self.schedule_key!r}] and no `target` parameter")
            t = float(t)
            if not (t > 0 and math.isfinite(t)):
                raise ValueError(f"{owner}: sample {i} (problem {p.id!r}) has target length {t}; it must be a positive number")
            out.append(t)
        return torch.tensor(out, dtype=torch.float64)

    def _reference(self, c: torch.Tensor, delta: torch.Tensor, n_t: torch.Tensor) -> torch.Tensor:
        """cmu-l3/l1's `math_reward_fn`: c + δ (add) or max(0, δ)·c (multiply); plain c without a target."""
        r = c * delta.clamp(min=0.0) if self.form == "multiply" else c + delta
        return torch.where(torch.isnan(n_t), c, r)


@REWARDS.register("lcpo_exact")
class LcpoExact(_TargetLength):
    """L1 / LCPO-Exact (Aggarwal & Welleck, arXiv 2503.04697): r = c − α·|n_t − L|, α = 0.0003.

    n_t is the target length of the sample (problem.meta[target_key], else batch.schedule[schedule_key],
    else `target`); c ∈ {0, 1}. The value includes correctness: use it instead of `correctness`.
    The public code (deepscaler `get_delta_score_exact` in cmu-l3/l1, compared against a copy of its
    `math_reward.py`) returns 1 − |L − n_t|/3000 if correct, that minus 1 otherwise — the same formula with
    α = 1/3000. The reference repository's other forms (cmu-l3/l1 `math_reward_fn`, commit 93dd330): `form: add`
    r = c + δ and `form: multiply` r = c·max(0, δ), with δ = −α|n_t − L| (`shape: linear`; multiplied, this δ
    ≤ 0 gives 0 for every completion, as the code does) or δ = clip(σ(α|n_t − L|), 0, 1) (`shape: sigmoid`).
    docs/methods.md.
    """

    summary: ClassVar[str] = (
        'r = c − α·|n_t − L|, target from data (`target_length`), else the `budget` schedule, else '
        '`target`'
    )
    source: ClassVar[str] = 'L1, arXiv 2503.04697'

    alpha: float = Field(0.0003, ge=0)
    """Penalty per token of distance to the target."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        n_t = self.targets(batch, "lcpo_exact")
        c = (batch.correct > 0).double()
        gap = (n_t - batch.lengths.double()).abs()
        if self.form == "default":
            return torch.where(torch.isnan(n_t), c, c - self.alpha * gap)
        if self.shape == "linear":  # get_delta_score_linear: (1 − α|n_t − L|) − 1
            delta = -self.alpha * gap
        else:  # get_delta_score_sigmoid_exact: clip(σ(α·|n_t − L|), 0, 1)
            delta = torch.sigmoid(self.alpha * gap).clamp(0.0, 1.0)
        return self._reference(c, delta, n_t)


@REWARDS.register("lcpo_max")
class LcpoMax(_TargetLength):
    """L1 / LCPO-Max (arXiv 2503.04697): r = c·clip(α(n_t − L) + δ, 0, 1), α = 0.0003, δ = 0.5 (the paper).

    A correct answer under budget scores between δ and 1, over budget it decays to 0 at L = n_t + δ/α;
    a wrong answer scores 0. The value includes correctness: use it instead of `correctness`. The paper
    fine-tunes with Max after Exact. Follows the paper, not the code: cmu-l3/l1's `get_delta_score_max`
    computes (clip(a·(n_t − L), −1, 1) + 1)/2 with a = 1/500, i.e. slope a/2 = 0.001 and δ = 0.5
    (set alpha=0.001 to reproduce it). The reference repository's `math_reward_fn` forms (commit 93dd330):
    `form: add` r = c + δ, `form: multiply` r = c·max(0, δ), with δ = (clip(α(n_t − L), −1, 1) + 1)/2 (`shape:
    linear`, `get_delta_score_linear_both`) or δ = clip(σ(α(n_t − L)) + 0.1·1[L ≤ n_t], 0, 1) (`shape: sigmoid`).
    docs/methods.md.
    """

    summary: ClassVar[str] = "r = c·clip(α(n_t − L) + δ, 0, 1) (paper's slope; the code uses α/2)"
    source: ClassVar[str] = 'L1, arXiv 2503.04697'

    alpha: float = Field(0.0003, ge=0)
    """Slope of the length term per token."""
    delta: float = 0.5
    """Value of the length term at L = n_t."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        n_t = self.targets(batch, "lcpo_max")
        c = (batch.correct > 0).double()
        under = n_t - batch.lengths.double()  # budget left (negative: over budget)
        if self.form == "default":
            return torch.where(torch.isnan(n_t), c, c * (self.alpha * under + self.delta).clamp(0.0, 1.0))
        if self.shape == "linear":  # get_delta_score_linear_both: (clip(α(n_t − L), −1, 1) + 1)/2
            delta = ((self.alpha * under).clamp(-1.0, 1.0) + 1.0) / 2.0
        else:  # get_delta_score_sigmoid: σ(α(n_t − L)), + 0.1 within budget, clipped to [0, 1]
            bonus = torch.where(under >= 0, torch.tensor(0.1, dtype=torch.float64), 0.0)
            delta = (torch.sigmoid(self.alpha * under) + bonus).clamp(0.0, 1.0)
        return self._reference(c, delta, n_t)


@REWARDS.register("shorter_better")
class ShorterBetter(RewardComponent):
    """ShorterBetter (Yi et al., arXiv 2504.21370): r = α·c − β·|L − SOL|, α = 2.0, β = 0.001.

    SOL (sample optimal length) = the shortest correct length in the group, or the group's mean length
    when none is correct. Includes correctness: use it instead of `correctness`. Same as
    JingyangYi/ShorterBetter `verl/verl/workers/reward_manager/naive.py` (`sb_compute_score`,
    `check_correctness_and_length`). docs/methods.md.
    """

    summary: ClassVar[str] = 'SOL = shortest correct length in the group (mean if none); r = α·c − β·|L − SOL|'
    source: ClassVar[str] = 'ShorterBetter, arXiv 2504.21370'

    alpha: float = Field(2.0, ge=0)
    """Reward of a correct answer."""
    beta: float = Field(0.001, ge=0)
    """Penalty per token of distance to SOL."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        lengths = batch.grouped(batch.lengths.double())  # [B, G]
        correct = batch.grouped(batch.correct) > 0
        shortest = torch.where(correct, lengths, torch.full_like(lengths, math.inf)).min(dim=1, keepdim=True).values
        sol = torch.where(correct.any(dim=1, keepdim=True), shortest, lengths.mean(dim=1, keepdim=True))
        r = self.alpha * correct.double() - self.beta * (lengths - sol).abs()
        return r.reshape(-1).double()


@REWARDS.register("self_normalized")
class SelfNormalizedLength(RewardComponent):
    """Self-normalised length penalty (Arora & Zanette, "Training Language Models to Reason Efficiently",
    arXiv 2502.04463): correct r = 1 − α·σ((L − μ)/(s + ε)), wrong r = wrong_score (0), α = 0.4.

    μ, s = mean and (unbiased) std of the CORRECT lengths in the group. Includes correctness (the 1 of a
    correct answer): use it instead of `correctness`. Follows hkust-nlp/Laser
    `verl/utils/reward_score/length_penalty.py::compute_norm_length_penalty`, which multiplies the correct
    score 1 by (1 − α·σ(z)) and leaves wrong answers at their score (−0.5 in Laser's scoring, 0 in the
    paper; `wrong_score`), uses torch.std + 1e-6, and with a single correct answer in the group sets μ = 0,
    s = 1 — so z = L and the lone correct answer gets ≈ 1 − α (kept here to agree with the code).
    All correct lengths equal: z = 0, r = 1 − α/2. docs/methods.md.
    """

    summary: ClassVar[str] = "correct: 1 − α·σ((L − μ)/s) over the group's correct lengths; wrong: `wrong_score`"
    source: ClassVar[str] = 'Arora & Zanette, arXiv 2502.04463'

    alpha: float = Field(0.4, ge=0, le=1)
    """Strength of the penalty (a correct answer scores in [1 − α, 1])."""
    wrong_score: float = 0.0
    """Reward of a wrong answer (Laser's correctness scoring uses −0.5)."""
    unparsed_score: float | None = None
    """Reward of a wrong answer with no extractable answer; None: wrong_score. Laser: −1."""
    eps: float = Field(1e-6, ge=0)
    """Added to the std (Laser's epsilon)."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        lengths = batch.grouped(batch.lengths.double())
        correct = batch.grouped(batch.correct) > 0
        r = _self_normalized(lengths, correct, self.alpha, self.eps)
        r = torch.where(correct, r, torch.full_like(r, self.wrong_score)).reshape(-1)
        return _with_unparsed(r, batch, self.unparsed_score)


@REWARDS.register("grpo_lambda")
class GrpoLambda(RewardComponent):
    """GRPO-λ (Dai et al., "Stable Reinforcement Learning for Efficient Reasoning", arXiv 2505.18086).

    The self-normalised length penalty for the batch's most-solved groups only.

    Groups of the batch are ranked by correctness ratio (mean c); the top k = max(1, ⌈λ·B⌉) groups (λ =
    `top_fraction`; ties keep batch order, a stable sort) get r = 1 − α·σ((L − μ_c)/s_c) for correct
    answers (α = 0.6) and 0 for wrong ones; every other group gets plain c (1/0). Includes correctness:
    use it instead of `correctness`. μ_c, s_c as in `self_normalized` (the Laser normalisation, including
    its single-correct case). No official code: λ = 0.2 and α = 0.6 come from a third-party
    reimplementation [3p]; the rounding of λ·B is this implementation's choice. By design the value of a
    group depends on the other groups of the batch. docs/methods.md.
    """

    summary: ClassVar[str] = 'the top ⌈λ·B⌉ groups by pass rate get `self_normalized`, the others plain c'
    source: ClassVar[str] = 'GRPO-λ, arXiv 2505.18086'

    top_fraction: float = Field(0.2, gt=0, le=1)
    """λ: the fraction of the batch's groups (by correctness ratio) that get the length penalty."""
    alpha: float = Field(0.6, ge=0, le=1)
    """Strength of the penalty in the selected groups."""
    eps: float = Field(1e-6, ge=0)
    """Added to the std."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        lengths = batch.grouped(batch.lengths.double())
        correct = batch.grouped(batch.correct) > 0
        n_groups = lengths.shape[0]
        k = max(1, math.ceil(self.top_fraction * n_groups - 1e-9))
        ratio = correct.double().mean(dim=1)
        order = torch.sort(ratio, descending=True, stable=True).indices
        selected = torch.zeros(n_groups, dtype=torch.bool)
        selected[order[:k]] = True
        penalised = _self_normalized(lengths, correct, self.alpha, self.eps)
        r = torch.where(selected[:, None], penalised, correct.double())
        return r.reshape(-1).double()


# ---------------------------------------------------------------------------------------------------------------------
# Penalties added to the task reward.


@REWARDS.register("dapo_overlong")
class DapoOverlong(RewardComponent):
    """DAPO soft overlong punishment (arXiv 2503.14476, Eq. 13): an added penalty near the generation limit.

    With L_max the generation limit and L_c the cache length: r = 0 for L ≤ L_max − L_c;
    ((L_max − L_c) − L)/L_c for L_max − L_c < L ≤ L_max; −1 beyond — times `penalty_factor`. Agrees with
    TRL `trl/rewards/other_rewards.py::get_soft_overlong_punishment` and OpenRLHF
    `openrlhf/trainer/ppo_utils/length_penalty.py::apply_overlong_penalty` (verl's DAPO reward manager is
    the same without the cap, which lengths ≤ L_max never reach). max_len defaults to batch.max_new_tokens
    so it stays tied to the real limit; cache_len defaults to max_len // 4 (DAPO used 4096 of 20480, 1/5;
    TRL and OpenRLHF have no default). Lengths exclude EOS. docs/methods.md.
    """

    summary: ClassVar[str] = '0 up to L_max − L_c, then −(L − (L_max − L_c))/L_c down to −1 at L_max'
    source: ClassVar[str] = 'DAPO, arXiv 2503.14476'

    max_len: float | None = Field(None, gt=0)
    """L_max in tokens; None = the generation limit (batch.max_new_tokens)."""
    cache_len: float | None = Field(None, ge=0)
    """L_c, the soft-penalty zone before L_max; None = max_len // 4; 0 = a hard step (0 up to L_max, −1 above), as TRL."""
    penalty_factor: float = Field(1.0, ge=0)
    """The penalty at L ≥ L_max (verl/OpenRLHF `overlong_penalty_factor`)."""
    cap: bool = True
    """Floor the penalty at −penalty_factor (TRL, OpenRLHF); false = verl's DAPO reward manager, which keeps growing
    past L_max (reachable when max_len is below the generation limit)."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        l_max = _limit(self.max_len, batch, "dapo_overlong", "max_len")
        cache = float(self.cache_len) if self.cache_len is not None else float(max(1, int(l_max) // 4))
        if cache > l_max:
            raise ValueError(f"dapo_overlong: cache_len ({cache:g}) must be ≤ max_len ({l_max:g})")
        lengths = batch.lengths.double()
        if cache == 0:  # TRL's limit case: no soft zone
            return -self.penalty_factor * (lengths > l_max).double()
        over = (lengths - (l_max - cache)) / cache
        return -self.penalty_factor * (over.clamp(0.0, 1.0) if self.cap else over.clamp(min=0.0))


@REWARDS.register("tlts_length")
class TltsLength(RewardComponent):
    """Train Long, Think Short (arXiv 2508.08940): a triangular length reward around the current budget L = B(t).

    triangle: R(ℓ) = R_max·ℓ/L for ℓ ≤ L, R_max·(1 − (ℓ − L)/L) for L < ℓ ≤ 2L, 0 beyond;
    band: R_max for ℓ ≤ L, then the same descent to 0 at 2L. Independent of correctness; the paper adds
    it to correctness and format, r = λ_c·c + λ_ℓ·R_len + λ_f·R_fmt with λ_c/λ_ℓ = 0.6/0.3 (or 0.3/0.6).
    L = batch.schedule[schedule_key] when the loop provides it, else the `budget` parameter (which may
    itself follow a schedule, e.g. {schedule: exponential, start: 256, gamma: 0.7, period: 150}).
    From the paper's text: the authors point to github.com/hammoudhasan/curriculum_grpo, which was not
    available to compare against. docs/methods.md.
    """

    summary: ClassVar[str] = (
        'triangle around L = budget: ℓ/L up to L, 1 − (ℓ − L)/L up to 2L, 0 beyond; `band` is flat up to '
        'L'
    )
    source: ClassVar[str] = 'Train Long, Think Short, arXiv 2508.08940'

    budget: float | None = Field(None, gt=0)
    """The budget L in tokens when batch.schedule has none; None = require the schedule."""
    schedule_key: str = "budget"
    """Key of batch.schedule holding the current budget."""
    r_max: float = Field(1.0, gt=0)
    """Peak reward R_max (reached at ℓ = L)."""
    shape: Literal["triangle", "band"] = "triangle"
    """`triangle` rises from 0 at ℓ = 0; `band` is flat at R_max up to L."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        budget = batch.schedule.get(self.schedule_key, self.budget)
        if budget is None:
            raise ValueError(f"tlts_length: no budget: batch.schedule has no {self.schedule_key!r} and `budget` is not set")
        budget = float(budget)
        if not budget > 0:
            raise ValueError(f"tlts_length: the budget must be positive, got {budget}")
        x = batch.lengths.double() / budget
        rise = torch.ones_like(x) if self.shape == "band" else x
        r = torch.where(x <= 1.0, rise, (2.0 - x).clamp(min=0.0))
        return (self.r_max * r).double()


# ---------------------------------------------------------------------------------------------------------------------
# Multiplicative penalties: the value multiplies the task reward (`combine: multiply`), see apply_multiplier.


@REWARDS.register("truncation")
class DlerTruncation(RewardComponent):
    """DLER truncation penalty (Liu et al., "DLER: Doing Length pEnalty Right", arXiv 2510.15110), as a multiplier.

    Returns m = 1 for a completion within the budget and m = `factor` for one over it (L > B, or truncated
    at the generation limit): mode `zero` (the paper: such completions score 0) gives factor 0, mode
    `scale` gives `scale_factor` (the code: 0.1). Meant for `combine: multiply`, r ← r·m, where r is the
    summed task reward (NVlabs/DLER `verl-dler/verl/workers/reward_manager/dapo.py::_apply_stop_properly_penalty`
    multiplies the whole score by ((1 − stop_properly)·0.1 + stop_properly), stop_properly = vLLM
    finish_reason == "stop", with the generation limit = B = 4000). Added instead of multiplied it
    means nothing.

    B = `budget`, or the generation limit when None. Difficulty-aware DLER (paper only, not in the code):
    when `easy_budget` or `hard_budget` is set, a group whose correctness ratio is ≥ `easy_threshold`
    gets easy_budget (the tighter one, 2000 in the paper) and the others hard_budget (4000); an unset one
    falls back to B. docs/methods.md.
    """

    summary: ClassVar[str] = (
        'multiplier: 1 within budget B, 0 (`zero`) or `scale_factor` (`scale`) over it or truncated; '
        'difficulty-aware budgets by group pass rate'
    )
    source: ClassVar[str] = 'DLER, arXiv 2510.15110'

    multiplicative: ClassVar[bool] = True

    budget: float | None = Field(None, gt=0)
    """B in tokens; None = the generation limit (batch.max_new_tokens)."""
    mode: Literal["zero", "scale"] = "zero"
    """`zero`: over-budget completions score 0 (paper); `scale`: their reward is multiplied by scale_factor (code)."""
    scale_factor: float = Field(0.1, ge=0, le=1)
    """The multiplier of mode `scale` (DLER's stop_properly_penalty.penalty_coef)."""
    easy_budget: float | None = Field(None, gt=0)
    """Difficulty-aware: the budget of groups with correctness ratio ≥ easy_threshold (paper: 2000)."""
    hard_budget: float | None = Field(None, gt=0)
    """Difficulty-aware: the budget of the other groups (paper: 4000)."""
    easy_threshold: float = Field(0.5, ge=0, le=1)
    """Group correctness ratio from which a prompt counts as easy."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        base = None
        if self.budget is not None or self.easy_budget is None or self.hard_budget is None:
            base = _limit(self.budget, batch, "truncation", "budget")
        if self.easy_budget is None and self.hard_budget is None:
            limit = torch.full((len(batch.completions),), base, dtype=torch.float64)
        else:
            easy = self.easy_budget if self.easy_budget is not None else base
            hard = self.hard_budget if self.hard_budget is not None else base
            ratio = batch.grouped(batch.correct.double()).mean(dim=1, keepdim=True)  # [B, 1]
            limit = torch.where(ratio >= self.easy_threshold, torch.tensor(float(easy), dtype=torch.float64), float(hard))
            limit = limit.expand(-1, batch.group_size).reshape(-1)
        over = (batch.lengths.double() > limit) | batch.truncated.bool()
        factor = 0.0 if self.mode == "zero" else self.scale_factor
        return torch.where(over, torch.tensor(float(factor), dtype=torch.float64), 1.0)


@REWARDS.register("stop_properly")
class StopProperly(RewardComponent):
    """ProRL stop-properly penalty (Liu et al., "ProRL", arXiv 2505.24864), as a multiplier or an override.

    For a truncated completion (hit the generation limit without EOS): r ← r·c when c ∈ [0, 1], r ← c when
    c < 0; other completions are untouched. Returns c for truncated completions and 1 otherwise; the
    combiner must apply it with `combine: multiply` as r ← value if value < 0 else r·value
    (`apply_multiplier` in this module), r being the summed task reward. Same as OpenRLHF
    `openrlhf/trainer/ppo_utils/length_penalty.py::apply_stop_properly_penalty` (truncated = vLLM
    finish_reason == "length"). docs/methods.md.
    """

    summary: ClassVar[str] = 'truncated: r ← r·c for c ≥ 0, r ← c for c < 0'
    source: ClassVar[str] = 'ProRL, arXiv 2505.24864'

    multiplicative: ClassVar[bool] = True

    coef: float = Field(0.0, le=1)
    """c: multiplier of a truncated completion's reward if in [0, 1], its replacement if negative."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        return torch.where(batch.truncated.bool(), torch.tensor(float(self.coef), dtype=torch.float64), 1.0)
