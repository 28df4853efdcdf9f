"""Token log-probs in row chunks, and the clipped policy-gradient loss with its aggregations (METHODS.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rshape.rl.rollout import Rollouts, positions_from_mask


def completion_logits(model: torch.nn.Module, rollouts: Rollouts, temperature: float = 1.0) -> torch.Tensor:
    """Logits that predict each completion token, [R, T, V], divided by the sampling temperature."""
    ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], dim=1)  # [R, P+T]
    mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask.to(rollouts.prompt_mask.dtype)], dim=1)
    T = rollouts.completion_ids.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                use_cache=False, logits_to_keep=T + 1)
    return out.logits[:, :-1, :] / temperature  # [R, T, V]: position P-1+t predicts token P+t


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, with_entropy: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits)[token] without keeping a float32 log-softmax of the whole vocabulary.

    logits [R, T, V], tokens [R, T] → logp [R, T] (float32), entropy [R, T] or None.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)  # [R, T]
    logp = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            entropy = lse - (probs * logits).sum(-1)
    return logp, entropy


def token_logprobs(model: torch.nn.Module, rollouts: Rollouts, temperature: float = 1.0, chunk: int = 16,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token) for every completion token, computed `chunk` rows at a time. → [N, T] (and entropy)."""
    n = rollouts.completion_ids.shape[0]
    lps, ents = [], []
    for start in range(0, n, chunk):
        part = rollouts.select(torch.arange(start, min(n, start + chunk)))
        lp, ent = gather_logprobs(completion_logits(model, part, temperature), part.completion_ids, with_entropy)
        lps.append(lp)
        ents.append(ent)
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)


@dataclass
class LossTerms:
    loss: torch.Tensor  # scalar, already divided by the global normaliser
    policy: torch.Tensor  # scalar, the surrogate part
    kl: torch.Tensor  # scalar, the mean k3 over tokens (0 when unused)
    clip_low: torch.Tensor  # tokens clipped at 1 − ε_low with A < 0 (count)
    clip_high: torch.Tensor  # tokens clipped at 1 + ε_high with A > 0 (count)
    approx_kl: torch.Tensor  # Σ over tokens of ½(log ratio)² (sum)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π || π_ref) per token: exp(ref − lp) − (ref − lp) − 1 (Schulman 2020)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, *, clip_low: float, clip_high: float, agg: str,
                        num_sequences: int, num_tokens: int, ref_logp: torch.Tensor | None = None,
                        kl_beta: float = 0.0) -> LossTerms:
    """PPO/GRPO clipped surrogate with asymmetric clip (DAPO's clip-higher) and optional k3 KL.

    per token: ℓ_t = −min(ρ_t·A, clip(ρ_t, 1−ε_low, 1+ε_high)·A) + β·k3_t, ρ_t = exp(logp − old_logp).
    agg `grpo`: Σ_i (Σ_t ℓ_i,t / |y_i|) / num_sequences  (per-sequence mean, then mean; DeepSeekMath);
    agg `dapo`: Σ_i Σ_t ℓ_i,t / num_tokens  (token mean over the whole batch; DAPO, arXiv 2503.14476).
    The normalisers are those of the whole (mini)batch, so summing the losses of its row chunks
    gives the loss of the batch.  logp, old_logp, mask: [R, T]; advantages: [R].
    """
    mask = mask.float()
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None]  # [R, 1]
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv)
    per_token = -surr
    kl = torch.zeros_like(per_token)
    if ref_logp is not None and kl_beta > 0:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + kl_beta * kl
    if agg == "grpo":
        def reduce(x: torch.Tensor) -> torch.Tensor:
            return ((x * mask).sum(1) / mask.sum(1).clamp_min(1)).sum() / num_sequences
    elif agg == "dapo":
        def reduce(x: torch.Tensor) -> torch.Tensor:
            return (x * mask).sum() / max(num_tokens, 1)
    else:
        raise ValueError(f"unknown loss aggregation {agg!r}; valid: grpo, dapo")
    with torch.no_grad():
        low = ((ratio < 1 - clip_low) & (adv < 0)).float()
        high = ((ratio > 1 + clip_high) & (adv > 0)).float()
        stats = ((low * mask).sum(), (high * mask).sum(), (0.5 * log_ratio**2 * mask).sum())
    return LossTerms(loss=reduce(per_token), policy=reduce(-surr).detach(), kl=(kl * mask).sum().detach() / max(num_tokens, 1),
                     clip_low=stats[0], clip_high=stats[1], approx_kl=stats[2])
