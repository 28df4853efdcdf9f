"""Advantage estimators: from one step's rewards to one advantage per completion (docs/methods.md).

Every estimator is a function `f(x: AdvantageInputs, **params) -> Tensor [N]` registered by name;
rows are prompt-major (row b·G + g is sample g of prompt b). Parameters come from the recipe's
`algorithm.advantage_params`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rshape.batch import Batch, grouped, nanstd
from rshape.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")


@dataclass
class AdvantageInputs:
    """What an estimator may read: the step's batch and the combined reward. Tensors are [N] = [B·G]."""

    rewards: torch.Tensor  # float, the combined reward
    batch: Batch  # the step's rows: lengths, verdicts, group size, generation limit
    eps: float = 1e-4
    seq_logprobs: torch.Tensor | None = None  # mean token log-prob under the sampling policy (estimators that ask)
    seq_entropies: torch.Tensor | None = None  # mean token entropy under the sampling policy (estimators that ask)

    @classmethod
    def of(cls, batch: Batch, rewards: torch.Tensor, eps: float = 1e-4, **seq_stats: torch.Tensor) -> AdvantageInputs:
        return cls(rewards=rewards, batch=batch, eps=eps, **seq_stats)

    @property
    def group_size(self) -> int:  # G
        return self.batch.group_size

    @property
    def lengths(self) -> torch.Tensor:  # long, completion tokens before EOS
        return self.batch.lengths

    @property
    def correct(self) -> torch.Tensor:  # float 0/1 from the verifier
        return self.batch.correct

    @property
    def max_new_tokens(self) -> int:  # this step's generation limit
        return self.batch.max_new_tokens

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """[N] → [B, G], float32."""
        return grouped(x.float(), self.group_size)


def estimator(name: str, summary: str, source: str) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register an estimator under `name`, with the one-line `summary` and `source` of the README's table."""

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        fn.summary, fn.source = summary, source  # type: ignore[attr-defined]
        return ADVANTAGES.register(name)(fn)

    return add


def check_advantage_params(fn: Callable[..., torch.Tensor], params: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """Problems with `algorithm.advantage_params` for estimator `fn`: unknown keys, non-numbers, and values the
    estimator refuses (it is run once on a 2 × 2 example batch)."""
    sig = inspect.signature(fn)
    known = [n for n in list(sig.parameters)[1:]]
    out = []
    for k, v in params.items():
        if k not in known:
            out.append(((k,), f"unknown parameter; valid: {', '.join(known) or '(none)'}"))
        elif isinstance(v, bool) or not isinstance(v, (int, float, str)) or (isinstance(v, float) and not math.isfinite(v)):
            out.append(((k,), f"expected a finite number, got {v!r}"))
    if params and not out:  # only what the recipe sets can be refused
        example = Batch(prompts=[""] * 4, completions=[""] * 4, completion_ids=[[]] * 4,
                        lengths=torch.tensor([1, 2, 3, 4]), truncated=torch.zeros(4, dtype=torch.bool),
                        correct=torch.tensor([1.0, 0.0, 0.0, 1.0]), problems=[None] * 4, group_size=2,  # type: ignore[list-item]
                        max_new_tokens=8)
        try:
            fn(AdvantageInputs(torch.tensor([1.0, 0.0, 0.0, 1.0]), example, seq_logprobs=torch.zeros(4),
                               seq_entropies=torch.zeros(4)), **params)
        except ValueError as exc:
            name, _, message = str(exc).partition(": ")
            out.append(((name,) if name in params else (), message if name in params else str(exc)))
    return out


def estimate(fn: Callable[..., torch.Tensor], x: AdvantageInputs, **params: Any) -> torch.Tensor:
    """Run an estimator. Completions whose reward is NaN (unscorable: no added reward component applied) are left
    out of every group and batch statistic and get advantage 0, as TRL does: group-statistics estimators run on
    each group's scorable rows (a group with fewer than two gets 0); `batch_statistics` estimators use nan-aware
    group means and whiten over the scorable rows. → [N] float32"""
    unscorable = torch.isnan(x.rewards)  # [N]
    if not unscorable.any():
        return fn(x, **params)
    if getattr(fn, "batch_statistics", False):
        return fn(x, **params).nan_to_num(0.0)
    out = torch.zeros(x.rewards.numel())
    G = x.group_size
    for g0 in range(0, x.rewards.numel(), G):
        rows = torch.arange(g0, g0 + G)[~unscorable[g0:g0 + G]]
        if len(rows) < 2:
            continue
        sub = dataclasses.replace(x.batch.select(rows), group_size=len(rows))
        stats = {k: getattr(x, k)[rows] for k in ("seq_logprobs", "seq_entropies") if getattr(x, k) is not None}
        out[rows] = fn(AdvantageInputs(x.rewards[rows], sub, x.eps, **stats), **params).float()
    return out


def estimator_needs(fn: Callable[..., torch.Tensor], params: dict[str, Any]) -> set[str]:
    """What an estimator asks the loop for: `fn.needs`, a set or a function of the estimator's parameters."""
    needs = getattr(fn, "needs", set())
    return set(needs(**params)) if callable(needs) else set(needs)


@estimator("grpo",
           summary='A = (r − group mean)/(std + `adv_eps`), unbiased std of the group (or of the batch, or none: '
                   "TRL's `scale_rewards`)",
           source='DeepSeekMath, arXiv 2402.03300')
def grpo_advantages(x: AdvantageInputs, *, scale_rewards: str = "group") -> torch.Tensor:
    """GRPO: A_i = (r_i − mean_g) / (std + eps) over the G siblings.

    std is the unbiased (Bessel-corrected) sample std, as TRL and verl compute it: of the group (`scale_rewards:
    group`, the paper), of the raw rewards of the whole batch (`batch`, TRL's option), or no division (`none`:
    centred only). A group whose rewards are all equal gets A = 0. Unscorable (NaN) rewards are left out of the
    means and stds (TRL's nanmean / nanstd) and get A = 0. Source: DeepSeekMath (arXiv 2402.03300) §4.1;
    docs/methods.md.
    """
    scale = _choice("scale_rewards", scale_rewards, ("group", "batch", "none"))
    r = x.grouped(x.rewards)  # [B, G]
    if not torch.isnan(r).any():
        mean = r.mean(dim=1, keepdim=True)
        std = {"group": lambda: r.std(dim=1, keepdim=True), "batch": lambda: r.std() if r.numel() > 1 else
               torch.zeros(()), "none": lambda: None}[scale]()  # unbiased
        return ((r - mean) / (std + x.eps) if std is not None else r - mean).reshape(-1)
    mean = torch.nanmean(r, dim=1, keepdim=True)
    std = {"group": lambda: nanstd(r, dim=1, keepdim=True), "batch": lambda: nanstd(r), "none": lambda: None}[scale]()
    return ((r - mean) / (std + x.eps) if std is not None else r - mean).reshape(-1).nan_to_num(0.0)


# ---------------------------------------------------------------------------------------------
# The menu of docs/methods.md. Helpers first; every estimator computes in float64 and returns float32.


def _mask_tokens(x: AdvantageInputs) -> torch.Tensor:
    """Tokens in each completion's loss mask, EOS included: min(L + 1, max_new_tokens) [N] float64.

    This is what verl's `response_mask` and OpenRLHF's `action_mask` count (the EOS token is a
    trained token; a truncated completion has no EOS and fills the limit)."""
    return (x.lengths.double() + 1).clamp(max=x.max_new_tokens)


def _grouped64(x: AdvantageInputs, t: torch.Tensor) -> torch.Tensor:
    return grouped(t.double().contiguous(), x.group_size)


def _require(x: AdvantageInputs, field: str, name: str) -> torch.Tensor:
    t = getattr(x, field)
    if t is None:
        raise ValueError(f"advantage estimator {name!r} needs x.{field} (the mean token "
                         f"{'log-prob' if field == 'seq_logprobs' else 'entropy'} of each completion under the "
                         f"sampling policy); the loop fills it when the estimator's `needs` names {field!r}")
    if t.numel() != x.rewards.numel():
        raise ValueError(f"x.{field} has {t.numel()} entries, expected one per completion ({x.rewards.numel()})")
    return t


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(valid)}")
    return value


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    return float(value)


def _group_baseline(x: AdvantageInputs) -> torch.Tensor:
    """r − mean_g [B, G] float64 (the mean of the scorable, non-NaN rewards); a group of one keeps its reward
    (verl: no baseline without siblings)."""
    r = _grouped64(x, x.rewards)
    if x.group_size == 1:
        return r
    mean = torch.nanmean(r, dim=1, keepdim=True) if torch.isnan(r).any() else r.mean(dim=1, keepdim=True)
    return r - mean


def _whiten(a: torch.Tensor, w: torch.Tensor, var_eps: float, bessel: bool) -> torch.Tensor:
    """(a − μ)/σ over the whole batch with weights w (tokens or 1 per completion).

    bessel=False (OpenRLHF): σ² = max(Σw(a−μ)²/Σw, var_eps); bessel=True (verl masked_whiten):
    σ² = Σw(a−μ)²/Σw · T/(T−1) + var_eps with T = Σw. NaN entries of a (unscorable) weigh 0 and stay NaN."""
    if torch.isnan(a).any():
        w = torch.where(torch.isnan(a), torch.zeros_like(w), w)
        a_in = a.nan_to_num(0.0)
        return torch.where(torch.isnan(a), a, _whiten(a_in, w, var_eps, bessel))
    total = w.sum()
    mean = (w * a).sum() / total
    var = (w * (a - mean) ** 2).sum() / total
    if bessel:
        if total > 1:
            var = var * total / (total - 1)
        return (a - mean) * torch.rsqrt(var + var_eps)
    return (a - mean) * torch.rsqrt(var.clamp(min=var_eps))


@estimator("dr_grpo", summary='A = r − group mean (no std)', source='Dr. GRPO, arXiv 2503.20783')
def dr_grpo_advantages(x: AdvantageInputs) -> torch.Tensor:
    """Dr. GRPO: A_i = r_i − mean_g (no division by the group std).

    The constant divisor of Dr. GRPO (the generation limit) belongs to the loss aggregation
    (`algorithm.loss_agg: dr_grpo`), not to this estimator. Same as OpenRLHF's `dr_grpo` and verl's
    GRPO with `norm_adv_by_std_in_grpo=False`. Source: Dr. GRPO, "Understanding R1-Zero-Like
    Training" (arXiv 2503.20783); docs/methods.md.
    """
    r = _grouped64(x, x.rewards)
    return (r - r.mean(dim=1, keepdim=True)).reshape(-1).float()


@estimator("rloo", summary='A = r − mean of the other siblings', source='RLOO, arXiv 2402.14740')
def rloo_advantages(x: AdvantageInputs) -> torch.Tensor:
    """RLOO: A_i = r_i − mean_{j≠i} r_j = G/(G−1)·(r_i − mean_g).

    Same values as OpenRLHF's `rloo` ((Σ_g r − r_i)/(G−1) baseline) and verl's
    `compute_rloo_outcome_advantage`. Needs G ≥ 2. Source: Ahmadian et al., "Back to Basics"
    (arXiv 2402.14740); docs/methods.md.
    """
    G = x.group_size
    if G < 2:
        raise ValueError("rloo needs at least 2 samples per prompt (rollout.group_size ≥ 2)")
    r = _grouped64(x, x.rewards)
    baseline = (r.sum(dim=1, keepdim=True) - r) / (G - 1)
    return (r - baseline).reshape(-1).float()


@estimator("reinforce_pp_baseline",
           summary='r − group mean, then whitened over the batch (token-weighted)',
           source='REINFORCE++, arXiv 2501.03262 / OpenRLHF')
def reinforce_pp_baseline_advantages(x: AdvantageInputs, *, weighting: str = "token", var_eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++-baseline: a_i = r_i − mean_g, then whitened over the whole batch,
    A_i = (a_i − μ)/σ with μ, σ² the mean and POPULATION variance of a over the batch and
    σ = sqrt(max(σ², var_eps)).

    As in OpenRLHF (`openrlhf/trainer/ppo_utils/experience_maker.py`, `reinforce_baseline`): the
    group mean is subtracted from the reward, the advantage is the return of every token (γ = 1),
    and the batch statistics are over ALL action TOKENS — so with `weighting: token` (default) a
    completion weighs as many tokens as its loss mask has, min(L + 1, max_new_tokens) with the EOS;
    `weighting: sequence` weighs each completion once. OpenRLHF's rstd = var.clamp(min=1e-8).rsqrt()
    is reproduced by `var_eps` (not `algorithm.adv_eps`). Assumes no per-token KL in the reward
    (rshape's KL is a loss term). A group of one keeps its raw reward before whitening (verl's
    convention; OpenRLHF would give 0). The statistics are over the rows given: rows dropped by
    dynamic sampling before this call do not count. Source: REINFORCE++ (arXiv 2501.03262);
    docs/methods.md "Batch normalisation". `batch_norm` is DLER's verl variant.
    """
    w = _mask_tokens(x) if _choice("weighting", weighting, ("token", "sequence")) == "token" else torch.ones(x.rewards.numel(),
                                                                                                           dtype=torch.float64)
    a = _group_baseline(x).reshape(-1)
    return _whiten(a, w, _positive("var_eps", var_eps), bessel=False).float()


@estimator("batch_norm",
           summary="DLER: r − group mean, whitened over the batch as verl does, + `correct_boost` where reward ≥ "
                   "threshold (DLER's script)",
           source='DLER, arXiv 2510.15110')
def batch_norm_advantages(x: AdvantageInputs, *, weighting: str = "token", var_eps: float = 1e-8,
                          correct_boost: float = 0.1, boost_threshold: float = 1.0) -> torch.Tensor:
    """DLER's batch-wise normalisation: a_i = r_i − mean_g, whitened over the batch as verl's
    `masked_whiten` does, then a bonus for high-reward completions:
    A_i = (a_i − μ)·rsqrt(σ²·T/(T−1) + var_eps) + correct_boost·[r_i ≥ boost_threshold − 1e-5].

    Read from NVlabs/DLER: `verl-dler/dler.sh` runs verl's `reinforce_plus_plus_baseline`
    (`verl-dler/verl/trainer/ppo/core_algos.py`: group mean subtracted, tiled over the response
    tokens, `verl_F.masked_whiten` over the response mask of the whole batch — token-weighted mean,
    Bessel-corrected variance over the T masked tokens, 1e-8 added to the variance) and its
    `dp_actor.update_policy` adds `correct_sample_advantage_boost_value` (0.1 in dler.sh; the
    config's default is 0) to the advantage of every sample whose score is ≥ the threshold (1.0)
    minus 1e-5. So it is NOT identical to `reinforce_pp_baseline` (OpenRLHF): the variance is
    unbiased and eps is added instead of clamping (a negligible difference for thousands of tokens),
    and the boost is extra; `correct_boost: 0` gives plain verl REINFORCE++-baseline. The threshold is
    compared with the combined reward (DLER's score: 1 for a correct in-budget answer; a truncated
    one is scaled by 0.1). `weighting` as in `reinforce_pp_baseline`. DLER also drops zero-std
    groups (dynamic sampling) before whitening; that is the loop's job. Source: DLER (NVlabs),
    docs/methods.md "Truncation penalty" and §6 "Batch normalisation".
    """
    w = _mask_tokens(x) if _choice("weighting", weighting, ("token", "sequence")) == "token" else torch.ones(x.rewards.numel(),
                                                                                                           dtype=torch.float64)
    a = _group_baseline(x).reshape(-1)
    adv = _whiten(a, w, _positive("var_eps", var_eps), bessel=True)
    adv = adv + float(correct_boost) * (x.rewards.double() >= boost_threshold - 1e-5).double()
    return adv.float()


grpo_advantages.batch_statistics = True  # type: ignore[attr-defined]  # (nan-aware itself, and `batch` scales)
reinforce_pp_baseline_advantages.batch_statistics = True  # type: ignore[attr-defined]
batch_norm_advantages.batch_statistics = True  # type: ignore[attr-defined]


@estimator("drpo",
           summary='A = G·∂J_q/∂s: length-weighted softmax over correct answers, −softmax(s/τ) over wrong ones; '
                   'correct answers never negative',
           source='DRPO (Optimization-AI/DRPO)')
def drpo_advantages(x: AdvantageInputs, *, lam: float = 0.1, tau: float = 10.0) -> torch.Tensor:
    """DRPO as an advantage: A_i = G·∂J_q/∂s_i at the current policy, for the loop's `grpo` aggregation.

    Per question q with positives P (correct) and negatives N (wrong), s_i = mean token log π(o_i),
    ℓ_i = n_i / C (n_i = tokens in o_i's loss mask, EOS included; C = x.max_new_tokens, the padded
    response width in the reference), w̃ = softmax_P((1 − ℓ)/λ):
        J_q = Σ_{i∈P} w̃_i·s_i − τ·log Σ_{j∈N} exp(s_j/τ),     loss = −(1/Q)·Σ_q J_q,
    Q counting every question, also the all-correct and all-wrong ones, which contribute 0.
    Hence ∂J_q/∂s_i = w̃_i (i ∈ P) and −softmax_N(s/τ)_j (j ∈ N). The loop's `grpo` aggregation
    is −(1/N_seq)·Σ_i A_i·s_i in gradient at the sampling policy (ratio 1), with N_seq = Q·G
    sequences; multiplying by G makes it equal to the DRPO gradient. Correct answers never get a
    negative advantage (w̃ ≥ 0); length only reweights the positives; answers of a group that is
    all correct or all wrong get 0. λ → ∞ recovers DisCO's uniform weights.

    Read from Optimization-AI/DRPO `verl/verl/trainer/ppo/core_algos.py`
    (`compute_policy_loss_drpo`): pos = reward == 1, neg = reward == 0 (here x.correct), length
    ratio = response-mask sum / response width, weight = exp((1 − ratio)/tau2) normalised over the
    positives (tau2 = λ = 0.1), the negatives' log-sum-exp surrogate sum_exp/sum_exp.detach() (its
    gradient is softmax_N(s/τ)/τ, times τ), τ = 10, divided by num_questions. The reference's loss
    has no importance ratio or clipping; the equivalence here holds at the sampling policy (one
    on-policy step; with epochs or minibatches > 1 the loop's clipped surrogate takes over). The
    KL-constraint penalty β·[KL − δ]₊·KL (β = 1e3, δ = 1e-4) is not part of this estimator; it
    belongs to the loss (rshape's KL settings), not to the advantages. The rewards of the recipe do not
    enter: DRPO's signal is the verifier's x.correct and the length. s must be the mean over the
    same mask the loss uses. Source: DRPO (Optimization-AI); docs/methods.md.
    """
    lam, tau = _positive("lam", lam), _positive("tau", tau)
    s = _grouped64(x, _require(x, "seq_logprobs", "drpo"))
    pos = _grouped64(x, x.correct) > 0.5
    neg = ~pos
    valid = (pos.any(dim=1) & neg.any(dim=1))[:, None]
    ell = _grouped64(x, _mask_tokens(x)) / x.max_new_tokens
    w = torch.softmax(((1 - ell) / lam).masked_fill(~pos, float("-inf")).masked_fill(~valid, 0.0), dim=1)
    p = torch.softmax((s / tau).masked_fill(~neg, float("-inf")).masked_fill(~valid, 0.0), dim=1)
    adv = torch.where(pos, w, -p).masked_fill(~valid, 0.0) * x.group_size
    return adv.reshape(-1).float()


drpo_advantages.needs = {"seq_logprobs"}


@estimator("canon",
           summary="sort the group by length (or entropy); compare each half with the other half's mean reward",
           source='CANON (biuboomc/CANON)')
def canon_advantages(x: AdvantageInputs, *, metric: str = "length", alpha: float = 1.0, beta: float = 0.0, mu: float = 1.0,
                     l_max: float | str = 1.0) -> torch.Tensor:
    """CANON (conditional advantage): split each group at the median of a metric and compare the halves.

    Sort the G siblings by the metric (stable sort: ties keep their sampling order, as Python's
    `sorted` in the reference), S = the first ⌊G/2⌋ (lower), H = the rest; r̄_S, r̄_H their mean
    rewards. `metric: length` (tokens in the loss mask, EOS included, as the reference's
    response_mask.sum):
        o ∈ H: A = [μ(α·r − r̄_S + β) + (1 − μ)(r − r̄_H)] / L_max
        o ∈ S: A = [μ(r − α·r̄_H − β) + (1 − μ)(r − r̄_S)] / L_max
    `metric: entropy` (mean token entropy under the sampling policy, x.seq_entropies) — the
    reference places α the other way round there:
        o ∈ H: A = [μ(r − α·r̄_S + β) + (1 − μ)(r − r̄_H)] / L_max
        o ∈ S: A = [μ(α·r − r̄_H − β) + (1 − μ)(r − r̄_S)] / L_max
    (identical at the default α = 1). Defaults α = 1, β = 0, μ = 1 (pure inter-half comparison).
    The reference always divides by max_length (its Dr.GRPO-style estimators); here `l_max`
    defaults to 1 — set `l_max: max_new_tokens` (or a number) to reproduce that scale. A group of
    one gets r/L_max (the reference sets both half means to 0). No std normalisation.
    Read from biuboomc/CANON `verl/trainer/ppo/core_algos.py`
    (`compute_dr_length_on_mean_group_outcome_advantage`, `compute_dr_entropy_per_token_group_outcome_advantage`;
    `_lambda` there is μ here). Source: CANON (biuboomc); docs/methods.md.
    """
    metric = _choice("metric", metric, ("length", "entropy"))
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu: must be in [0, 1], got {mu!r}")
    if isinstance(l_max, str):
        if l_max != "max_new_tokens":
            raise ValueError(f"l_max: expected a number or 'max_new_tokens', got {l_max!r}")
        scale = float(x.max_new_tokens)
    else:
        scale = _positive("l_max", l_max)
    G = x.group_size
    key = _mask_tokens(x) if metric == "length" else _require(x, "seq_entropies", "canon").double()
    r = _grouped64(x, x.rewards)
    order = torch.sort(_grouped64(x, key), dim=1, stable=True).indices  # [B, G]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(G).expand_as(order))
    high = rank >= G // 2
    if G > 1:
        mean_s = (r * ~high).sum(dim=1, keepdim=True) / (G // 2)
        mean_h = (r * high).sum(dim=1, keepdim=True) / (G - G // 2)
    else:
        mean_s = mean_h = torch.zeros_like(r)
    if metric == "length":
        a_high = mu * (alpha * r - mean_s + beta) + (1 - mu) * (r - mean_h)
        a_low = mu * (r - alpha * mean_h - beta) + (1 - mu) * (r - mean_s)
    else:
        a_high = mu * (r - alpha * mean_s + beta) + (1 - mu) * (r - mean_h)
        a_low = mu * (alpha * r - mean_h - beta) + (1 - mu) * (r - mean_s)
    return (torch.where(high, a_high, a_low) / scale).reshape(-1).float()


# the loop reads this set statically, so it asks for entropies even for `metric: length` (unused then)
canon_advantages.needs = lambda metric="length", **_: {"seq_entropies"} if metric == "entropy" else set()


@estimator("pref_grpo", summary='pairwise win rate within the group (ties ½), GRPO-normalised, clamped', source='Pref-GRPO')
def pref_grpo_advantages(x: AdvantageInputs, *, adv_clip_max: float = 5.0, decimals: int = 3) -> torch.Tensor:
    """Pref-GRPO: pairwise win rates in the group, then GRPO normalisation, clamped.

    Every pair (i, j) of the G siblings is compared once on the scalar reward (r_i > r_j: i wins,
    equal: a tie, half a win each); win_i = (wins_i + 0.5·ties_i)/(G − 1), rounded to `decimals`
    places (−1: no rounding); A_i = clamp((win_i − mean_g)/(std_g + 1e-8), ±adv_clip_max) with the
    unbiased std. Read from CodeGoat24/Pref-GRPO `fastvideo/train_flux_pref_grpo.py`: `cal_win_rate`
    (itertools.combinations, a judge's verdict or 0.5/0.5, `round(wins/count, 3)`), the group
    normalisation `(r − mean)/(r.std() + 1e-8)` and `torch.clamp(adv, -adv_clip_max, adv_clip_max)`
    with `--adv_clip_max 5.0` (scripts/_common_finetune.sh). Here the judge is the scalar reward.
    An all-equal group gets 0. Needs G ≥ 2. Source: Pref-GRPO (CodeGoat24); docs/methods.md.
    """
    G = x.group_size
    if G < 2:
        raise ValueError("pref_grpo needs at least 2 samples per prompt (rollout.group_size ≥ 2)")
    clip = _positive("adv_clip_max", adv_clip_max)
    if int(decimals) != decimals or decimals < -1:
        raise ValueError(f"decimals: expected an integer ≥ −1, got {decimals!r}")
    r = _grouped64(x, x.rewards)
    diff = r[:, :, None] - r[:, None, :]  # [B, G, G]
    half_points = 2 * (diff > 0).sum(dim=2) + (diff == 0).sum(dim=2) - 1  # the diagonal is a self-tie
    win = half_points.double() / (2 * (G - 1))
    if decimals >= 0:  # Python's round, as the reference (exact decimal rounding of the binary value)
        win = torch.tensor([round(v, int(decimals)) for v in win.reshape(-1).tolist()], dtype=torch.float64).view_as(win)
    adv = (win - win.mean(dim=1, keepdim=True)) / (win.std(dim=1, keepdim=True) + 1e-8)
    return adv.clamp(-clip, clip).reshape(-1).float()


def process_token_advantages(step_rewards: list[list[tuple[int, float]]], group_size: int, width: int,
                             normalize: str = "none", eps: float = 1e-4) -> torch.Tensor:
    """Token-level advantages from per-step rewards (process supervision). → [N, width]

    step_rewards[i] lists (index of the step's last token, reward) for completion i. Each token gets the
    return of the steps that end at or after it (DeepSeekMath §4.1.3, arXiv 2402.03300):

        Â_{i,t} = Σ_{j: end(j) ≥ t} r̂_i^j,   r̂ = r (`none`)  or  (r − mean R_g)/(std R_g + eps) (`group`)

    where R_g holds every step reward of the completion's group (unbiased std; a group whose step rewards are
    all equal, or that has fewer than two, gets r̂ = 0 under `group`). Tokens after the last step get 0.
    With Clip or Delta step rewards and `none`, the return from any token is bounded (Gao et al. 2024).
    """
    if normalize not in ("none", "group"):
        raise ValueError(f"unknown step normalisation {normalize!r}; valid: none, group")
    n = len(step_rewards)
    out = torch.zeros(n, width, dtype=torch.float64)
    for g0 in range(0, n, group_size):
        group = step_rewards[g0:g0 + group_size]
        values = torch.tensor([r for row in group for _, r in row], dtype=torch.float64)
        mean, std = (values.mean(), values.std()) if values.numel() > 1 else (torch.tensor(0.0), torch.tensor(0.0))
        for i, row in enumerate(group, g0):
            for end, r in row:
                if normalize == "group":
                    r = float((r - mean) / (std + eps)) if std > 0 else 0.0
                out[i, min(max(end, 0), width - 1)] += r
    return out.flip(1).cumsum(1).flip(1).float()


# ----------------------------------------------------------------------------------------------
# The routes that replace or add to the estimator: GDPO's normalise-then-sum and process-reward step returns


def group_normalize(x: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(x − group mean)/(group std + eps) over the group's non-NaN values (unbiased std, TRL's nanmean / nanstd);
    0 for a group of equal values or with one value, and where x is NaN (it then adds nothing)."""
    g = grouped(x, group_size)
    std = nanstd(g, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
    centred = g - torch.nanmean(g, dim=1, keepdim=True)
    out = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))  # NaN std (one value) → 0
    return out.nan_to_num(0.0).reshape(-1)


def normalize_then_sum(raws: dict[str, torch.Tensor], added: dict[str, tuple[float, torch.Tensor]], group_size: int,
                       eps: float = 1e-4) -> torch.Tensor:
    """GDPO's advantage (`reward_combine: normalize_then_sum`), used instead of the estimator. → [N]

        A = whiten_batch( Σ_k gate_k · w_k · (r_k − mean_g r_k)/(std_g r_k + ε) )

    over the added components k (`added`: name → (weight, gate [N]) from `RewardSet.combine`); whitening uses the
    batch mean and unbiased std (+ ε).
    """
    n = next(iter(raws.values())).numel()
    normalized = torch.zeros(n)
    for name, (w, gate) in added.items():
        raw = raws[name]
        normalized += torch.where(gate, w * group_normalize(raw, group_size, eps), torch.zeros_like(raw))
    if added:  # unscorable rows (no added component applies) leave the batch statistics and get 0, as in TRL
        unscorable = torch.stack([torch.isnan(raws[name]) for name in added]).all(0)
        normalized = torch.where(unscorable, torch.full_like(normalized, float("nan")), normalized)
    if not torch.isnan(normalized).any():
        std = normalized.std() if n > 1 else torch.tensor(0.0)
        return (normalized - normalized.mean()) / (std + eps)
    std = nanstd(normalized) if n > 1 else torch.tensor(0.0)
    return ((normalized - torch.nanmean(normalized)) / (std + eps)).nan_to_num(0.0)


def step_advantages(parts: list[tuple[float, list[list[tuple[int, float]]], str]], group_size: int, width: int,
                    eps: float = 1e-4) -> torch.Tensor | None:
    """[N, width] token-level advantages of the `combine: per_step` components (`RewardSet.step_rewards`):
    Σ weight × `process_token_advantages` of each; None without any."""
    if not parts:
        return None
    out = torch.zeros(len(parts[0][1]), width)
    for weight, steps, normalize in parts:
        out += weight * process_token_advantages(steps, group_size, width, normalize, eps)
    return out
