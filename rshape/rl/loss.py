"""Token log-probs in row chunks, and the clipped policy-gradient loss with its aggregations (docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rshape.batch import Batch
from rshape.recipe import chunk_rows
from rshape.rl.rollout import positions_from_mask


def completion_logits(model: torch.nn.Module, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    """Logits that predict each completion token, [R, T, V], divided by the sampling temperature."""
    ids = torch.cat([batch.prompt_ids, batch.token_ids], dim=1)  # [R, P+T]
    mask = torch.cat([batch.prompt_mask, batch.token_mask.to(batch.prompt_mask.dtype)], dim=1)
    T = batch.token_ids.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                use_cache=False, logits_to_keep=T + 1)
    return out.logits[:, :-1, :] / temperature  # [R, T, V]: position P-1+t predicts token P+t


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, with_entropy: bool = False,
                    entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits)[token] without keeping a float32 log-softmax of the whole vocabulary.

    logits [R, T, V], tokens [R, T] → logp [R, T] (float32), entropy [R, T] or None (differentiable
    only with entropy_grad, for an entropy bonus).
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)  # [R, T]
    logp = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    entropy = None
    if with_entropy or entropy_grad:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            probs = torch.softmax(logits, dim=-1)
            entropy = lse - (probs * logits).sum(-1)
    return logp, entropy


def rows_per_chunk(model: torch.nn.Module, batch: Batch, chunk: int | None) -> int:
    """`algorithm.logprob_chunk` rows (`chunk_rows`) for this batch's width (prompt + completion columns) and the
    model's vocabulary."""
    vocab = model.get_output_embeddings().weight.shape[0]
    return chunk_rows(chunk, batch.prompt_ids.shape[1] + batch.token_ids.shape[1], vocab)


def length_sorted_chunks(batch: Batch, chunk: int) -> list[torch.Tensor]:
    """Row indices in chunks of `chunk`, rows ordered by length, so that each chunk, trimmed of the
    columns that are padding in all its rows (`Batch.trimmed`), carries little padding."""
    total = batch.prompt_mask.sum(1) + batch.token_mask.sum(1)
    return list(torch.argsort(total.cpu(), stable=True).split(chunk))


def token_logprobs(model: torch.nn.Module, batch: Batch, temperature: float = 1.0, chunk: int | None = None,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token) for every completion token, computed `chunk` rows at a time over length-sorted,
    trimmed chunks. → [N, T] (and entropy [N, T]); 0 outside the completion mask."""
    n, T = batch.token_ids.shape
    device = batch.token_ids.device
    logp = torch.zeros(n, T, device=device)
    entropy = torch.zeros(n, T, device=device) if with_entropy else None
    for rows in length_sorted_chunks(batch, rows_per_chunk(model, batch, chunk)):
        part = batch.select(rows).trimmed()
        width = part.token_ids.shape[1]
        lp, ent = gather_logprobs(completion_logits(model, part, temperature), part.token_ids, with_entropy)
        logp[rows.to(device), :width] = lp.masked_fill(~part.token_mask, 0.0)
        if entropy is not None:
            entropy[rows.to(device), :width] = ent.masked_fill(~part.token_mask, 0.0)
    return logp, entropy


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
                        num_sequences: int, num_tokens: int, max_len: int | None = None, ratio_level: str = "token",
                        ref_logp: torch.Tensor | None = None, kl_beta: float = 0.0,
                        entropy: torch.Tensor | None = None, entropy_coef: float = 0.0) -> LossTerms:
    """PPO/GRPO clipped surrogate with asymmetric clip, GSPO's sequence ratio, k3 KL and an entropy bonus.

    per token: ℓ_t = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·k3_t − c_H·H_t, where
    ρ = ρ_t = exp(logp_t − old_t) (ratio_level `token`), or, for GSPO (arXiv 2507.18071, ratio_level
    `sequence`), ρ = s_i = exp(mean_t(logp_t − old_t)) shared by every token of sequence i, so the
    loss is the sequence-level clipped objective and the gradient flows through s_i.
    Aggregations (docs/methods.md), with the normalisers of the whole (mini)batch so that the losses of
    its row chunks add up to the loss of the batch:
      `grpo`:    Σ_i (Σ_t ℓ_i,t / |y_i|) / num_sequences      (DeepSeekMath: sequence mean, then mean)
      `dapo`:    Σ_i Σ_t ℓ_i,t / num_tokens                   (DAPO, arXiv 2503.14476: batch token mean)
      `dr_grpo`: Σ_i Σ_t ℓ_i,t / (num_sequences · max_len)    (Dr. GRPO, arXiv 2503.20783: a constant divisor; the loop passes
                 the recipe's `rollout.max_new_tokens`, constant even when a budget schedule lowers a step's limit)
    logp, old_logp, mask, entropy: [R, T]; advantages: [R], or [R, T] for token-level (process) advantages.
    """
    mask = mask.float()
    log_ratio = logp - old_logp  # [R, T]
    if ratio_level == "sequence":
        seq_log_ratio = (log_ratio * mask).sum(1) / mask.sum(1).clamp_min(1)  # [R]
        ratio = torch.exp(seq_log_ratio)[:, None].expand_as(log_ratio)  # [R, T], equal along T
    elif ratio_level == "token":
        ratio = torch.exp(log_ratio)
    else:
        raise ValueError(f"unknown ratio_level {ratio_level!r}; valid: token, sequence")
    adv = advantages[:, None] if advantages.dim() == 1 else advantages  # [R, 1] or [R, T]
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv)
    per_token = -surr
    kl = torch.zeros_like(per_token)
    if ref_logp is not None and kl_beta > 0:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + kl_beta * kl
    if entropy is not None and entropy_coef > 0:
        per_token = per_token - entropy_coef * entropy
    if agg == "grpo":
        def reduce(x: torch.Tensor) -> torch.Tensor:
            return ((x * mask).sum(1) / mask.sum(1).clamp_min(1)).sum() / num_sequences
    elif agg == "dapo":
        def reduce(x: torch.Tensor) -> torch.Tensor:
            return (x * mask).sum() / max(num_tokens, 1)
    elif agg == "dr_grpo":
        if not max_len:
            raise ValueError("loss aggregation dr_grpo needs max_len (the generation limit)")

        def reduce(x: torch.Tensor) -> torch.Tensor:
            return (x * mask).sum() / (num_sequences * max_len)
    else:
        raise ValueError(f"unknown loss aggregation {agg!r}; valid: grpo, dapo, dr_grpo")
    with torch.no_grad():
        low = ((ratio < 1 - clip_low) & (adv < 0)).float()
        high = ((ratio > 1 + clip_high) & (adv > 0)).float()
        stats = ((low * mask).sum(), (high * mask).sum(), (0.5 * log_ratio**2 * mask).sum())
    return LossTerms(loss=reduce(per_token), policy=reduce(-surr).detach(), kl=(kl * mask).sum().detach() / max(num_tokens, 1),
                     clip_low=stats[0], clip_high=stats[1], approx_kl=stats[2])
