"""One step of the GRPO family, top to bottom:

    generate → score → filter (dynamic sampling) → advantages → update → metrics

Each stage is a small function; `rl_step` runs them in order and returns the step's record (its metrics and the
logged samples). `rshape.rl.loop.train` runs the steps and owns everything around them (set-up, logs,
evaluation, checkpoints).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from rshape.batch import Batch, grouped, nanstd, verify
from rshape.curriculum.sampler import CurriculumSampler
from rshape.recipe import Recipe
from rshape.rewards import RewardScores, RewardSet
from rshape.rl.advantages import AdvantageInputs, estimate, estimator_needs, normalize_then_sum, step_advantages
from rshape.rl.context import LoopContext
from rshape.rl.distributed import SINGLE, Ranks, gather_batch
from rshape.rl.lean_forward import lean_forward
from rshape.rl.loss import (
    clipped_policy_loss,
    completion_logits,
    gather_logprobs,
    length_sorted_chunks,
    rows_per_chunk,
    token_logprobs,
)
from rshape.rl.masters import Float32Masters
from rshape.rl.rollout import rollout
from rshape.rl.sampling import sample_keys
from rshape.rl.session import RunSession
from rshape.schedules import Schedule


class NonFiniteError(RuntimeError):
    """The loss or the gradient of a step is not finite: the step is abandoned before the optimizer moves."""


@dataclass
class Trainer:
    """What a step reads and moves: the run, the reward set, the estimator, the optimizer and the sampler."""

    run: RunSession
    rewards: RewardSet
    advantage_fn: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    params: list[torch.nn.Parameter]
    sampler: CurriculumSampler
    schedules: dict[str, Schedule]
    monitor: list[Any]  # a fixed split of training problems for rewards that probe the policy
    masters: Float32Masters | None = None  # what the optimizer moves when the trained weights are 16-bit

    @property
    def recipe(self) -> Recipe:
        return self.run.recipe


@dataclass
class Scored:
    """A verified batch with each reward component's raw values."""

    batch: Batch
    raws: dict[str, torch.Tensor]  # component name → [N]

    def select(self, rows: torch.Tensor) -> Scored:
        """The given rows (whole groups)."""
        return Scored(self.batch.select(rows), {k: v[rows] for k, v in self.raws.items()})

    @staticmethod
    def concat(parts: list[Scored], pad_token_id: int) -> Scored:
        """Several scored rounds (dynamic sampling) as one batch."""
        return Scored(Batch.concat([p.batch for p in parts], pad_token_id),
                      {k: torch.cat([p.raws[k] for p in parts]) for k in parts[0].raws})


# ---------------------------------------------------------------------------------------------- generate, score


def generation_limit(t: Trainer, step: int) -> int:
    """The generation limit of this step: a token-budget schedule when `rollout.max_new_tokens_from` names one."""
    cfg = t.recipe.rollout
    if cfg.max_new_tokens_from is None:
        return cfg.max_new_tokens
    return max(1, min(cfg.max_new_tokens, round(t.schedules[cfg.max_new_tokens_from](step))))


def generate_and_score(t: Trainer, step: int, round_: int, context: LoopContext, schedule_values: dict[str, float]
                       ) -> Scored:
    """B new prompts × G samples, verified, every reward component called once."""
    cfg, run = t.recipe.rollout, t.run
    B, G = cfg.prompts_per_step, cfg.group_size
    problems = t.sampler.next(B)
    limit = generation_limit(t, step)
    tag = "" if round_ == 0 else f"round{round_}:"  # refills draw fresh noise
    mine = problems[run.ranks.share(len(problems))]  # this rank's whole groups (all of them with one rank)
    keys = sample_keys(t.recipe.seed, step, [tag + p.id for p in mine for _ in range(G)],
                       [g for _ in mine for g in range(G)])  # [b·G]
    batch = rollout(run.model, run.tokenizer, mine, group_size=G, max_new_tokens=limit, keys=keys,
                    temperature=cfg.temperature, top_p=cfg.top_p, system_prompt=run.task.system_prompt, chat=run.task.chat,
                    device=run.device, with_entropies=t.rewards.needs_entropies, decoder=cfg.decoder)
    batch = gather_batch(batch, run.ranks, run.tokenizer.pad_token_id)  # [B·G] on every rank
    correct = verify(batch, run.task)  # [N]
    batch.step, batch.context, batch.schedule = step, context, schedule_values
    t.sampler.observe([p.id for p in problems], batch.grouped(correct).mean(1).tolist(), step)  # before filtering
    return Scored(batch, t.rewards.raw_scores(reward_view(batch, t.recipe)))


def reward_view(batch: Batch, recipe: Recipe) -> Batch:
    """The batch as rewards see it: `reward_lengths: with_eos` counts the EOS of stopped completions."""
    return batch.counting_eos() if recipe.reward_lengths == "with_eos" else batch


def dynamic_sampling(t: Trainer, step: int, scored: Scored, context: LoopContext, schedule_values: dict[str, float]
                     ) -> tuple[Scored, dict[str, float]]:
    """DAPO's dynamic sampling: keep the groups whose rewards differ, refill with new prompts until B groups are
    kept or `max_rounds` refills were drawn."""
    ds, G = t.recipe.algorithm.dynamic_sampling, t.recipe.rollout.group_size
    B = t.recipe.rollout.prompts_per_step
    kept: list[Scored] = []
    metrics: dict[str, float] = {}
    n_kept, rounds = 0, 0
    while True:
        total = grouped(t.rewards.combine(scored.raws, step).total, G)  # [B, G]
        informative = nanstd(total, dim=1, unbiased=False) > ds.std_eps  # [B]; over the scorable rewards
        if rounds == 0:
            metrics["sampling/zero_std_frac"] = 1.0 - informative.float().mean().item()
        kept.append(scored.select(informative.repeat_interleave(G).nonzero().squeeze(1)))
        n_kept += int(informative.sum())
        if n_kept >= B or rounds >= ds.max_rounds:
            break
        rounds += 1
        scored = generate_and_score(t, step, rounds, context, schedule_values)
    metrics.update({"sampling/extra_rounds": rounds, "sampling/kept_groups": n_kept, "sampling/hit_cap": float(n_kept < B)})
    return Scored.concat(kept, t.run.tokenizer.pad_token_id), metrics


# ---------------------------------------------------------------------------------------------- advantages


def sequence_stats(policy: Any, batch: Batch, recipe: Recipe, needs: set[str]) -> dict[str, torch.Tensor]:
    """Per-sequence mean token log-prob / entropy under the sampling policy, for estimators that ask."""
    if not needs or not batch.token_ids.shape[0]:
        return {}
    with torch.no_grad():
        lp, ent = token_logprobs(policy.model, batch, recipe.rollout.temperature, recipe.algorithm.logprob_chunk,
                                 with_entropy="seq_entropies" in needs)  # [N, T]
    mask = batch.token_mask.float()
    count = mask.sum(1).clamp_min(1)
    out = {"seq_logprobs": ((lp * mask).sum(1) / count).cpu()}
    if ent is not None:
        out["seq_entropies"] = ((ent * mask).sum(1) / count).cpu()
    return {k: v for k, v in out.items() if k in needs}


def advantages_of(t: Trainer, scored: Scored, scores: RewardScores) -> torch.Tensor:
    """Every route from rewards to advantages: GDPO's normalise-then-sum or the recipe's estimator → [N], plus the
    process-reward step returns of `combine: per_step` components → [N, T]."""
    algo, batch, G = t.recipe.algorithm, scored.batch, t.recipe.rollout.group_size
    seq_stats = sequence_stats(t.run.policy, batch, t.recipe, estimator_needs(t.advantage_fn, algo.advantage_params))
    if t.rewards.mode == "normalize_then_sum":  # GDPO replaces the estimator
        advantages = normalize_then_sum(scored.raws, scores.added, G)
    elif not len(batch.correct):  # every group dropped: nothing to learn from
        advantages = torch.zeros(0)
    else:
        advantages = estimate(t.advantage_fn, AdvantageInputs.of(batch, scores.total, algo.adv_eps, **seq_stats),
                              **algo.advantage_params)  # [N]; unscorable rows 0
    per_step = step_advantages(t.rewards.step_rewards(batch, t.run.tokenizer), G, batch.token_ids.shape[1])
    if per_step is not None:  # process supervision: each token also gets its steps' return
        advantages = advantages[:, None] + per_step  # [N, T]
    return advantages


# ---------------------------------------------------------------------------------------------- update


def shared_logprobs(model: torch.nn.Module, ro: Batch, temperature: float, chunk: int | None, ranks: Ranks
                    ) -> torch.Tensor:
    """token_logprobs of every row, each rank computing its share and the shares summed → [N, T]."""
    n = ro.token_ids.shape[0]
    if ranks.world == 1:
        return token_logprobs(model, ro, temperature, chunk)[0]
    rows = torch.arange(n)[ranks.share(n)]
    out = torch.zeros(ro.token_ids.shape, device=ro.token_ids.device)  # [N, T]
    if len(rows):
        out[rows.to(out.device)] = token_logprobs(model, ro.select(rows), temperature, chunk)[0]
    return ranks.sum_(out)


def policy_update(policy: Any, ro: Batch, advantages: torch.Tensor, recipe: Recipe, optimizer: torch.optim.Optimizer,
                  params: list[torch.nn.Parameter], step: int, ranks: Ranks = SINGLE,
                  masters: Float32Masters | None = None) -> dict[str, float]:
    """`epochs` passes of `minibatches` optimizer steps over the rollouts; returns loss/policy metrics. With several
    data-parallel ranks each back-propagates its share of every minibatch's row chunks (the minibatch's normalisers
    make the chunk losses add up) and the gradients are summed before the step. With `masters` the gradients move
    onto the float32 masters, which the optimizer steps and which are then rounded into the model."""
    algo, temperature = recipe.algorithm, recipe.rollout.temperature
    model = policy.model
    device = ro.token_ids.device
    advantages = advantages.to(device)
    n = ro.token_ids.shape[0]
    reuse = algo.epochs > 1 or algo.minibatches > 1
    with torch.no_grad():
        old_logp = shared_logprobs(model, ro, temperature, algo.logprob_chunk, ranks) if reuse else None  # [N, T]
        ref_logp = None
        if algo.kl_beta > 0:
            with policy.reference() as ref:
                ref_logp = shared_logprobs(ref, ro, temperature, algo.logprob_chunk, ranks)  # [N, T]
    totals = {"loss": 0.0, "policy": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "approx_kl": 0.0}
    entropy_sum, grad_norms, tokens_seen = 0.0, [], 0
    g = torch.Generator().manual_seed(recipe.seed * 7_919 + step)
    forward = lean_forward(model) or model  # rshape's own LoRA forward where it applies (rshape.rl.lean_forward)
    for epoch in range(algo.epochs):
        order = torch.randperm(n, generator=g) if algo.minibatches > 1 else torch.arange(n)
        for mb_rows in order.chunk(algo.minibatches):
            mb = ro.select(mb_rows)
            num_tokens = mb.num_tokens
            optimizer.zero_grad(set_to_none=True)
            non_finite = None
            chunks = length_sorted_chunks(mb, rows_per_chunk(model, mb, algo.logprob_chunk))
            for chunk_rows in chunks[ranks.rank::ranks.world]:  # this rank's share of the chunks
                part = mb.select(chunk_rows).trimmed()  # similar lengths, padding-only columns dropped
                rows, width = mb_rows[chunk_rows], part.token_ids.shape[1]
                logp, ent = gather_logprobs(completion_logits(forward, part, temperature), part.token_ids,
                                            with_entropy=epoch == 0, entropy_grad=algo.entropy_coef > 0)  # [c, t]
                mask = part.token_mask
                terms = clipped_policy_loss(
                    logp, old_logp[rows, :width] if reuse else logp.detach(),
                    advantages[rows] if advantages.dim() == 1 else advantages[rows, :width], mask,
                    clip_low=algo.clip_low, clip_high=algo.clip_high, agg=algo.loss_agg,
                    num_sequences=len(mb_rows), num_tokens=num_tokens, max_len=recipe.rollout.max_new_tokens,
                    ratio_level=algo.ratio_level, ref_logp=ref_logp[rows, :width] if ref_logp is not None else None,
                    kl_beta=algo.kl_beta, entropy=ent, entropy_coef=algo.entropy_coef)
                if not torch.isfinite(terms.loss):
                    non_finite = terms.loss.item()
                    break
                terms.loss.backward()
                for k in ("loss", "policy", "kl"):
                    totals[k] += getattr(terms, k).item() / (algo.epochs * algo.minibatches)
                for k in ("clip_low", "clip_high", "approx_kl"):
                    totals[k] += getattr(terms, k).item()
                if ent is not None and epoch == 0:
                    entropy_sum += (ent.detach() * mask).sum().item()
            if ranks.any(non_finite is not None):  # every rank stops together
                what = f"the loss is {non_finite}" if non_finite is not None else "another rank's loss is"
                raise NonFiniteError(f"step {step}: {what} (not finite); likely causes: a reward or advantage that is "
                                     "inf or huge, or a learning rate too high. The latest checkpoint is the last good "
                                     "state")
            if masters is not None:
                masters.take_gradients()
            stepped = masters.params if masters is not None else params  # what the optimizer moves
            ranks.sum_gradients(stepped)
            tokens_seen += num_tokens
            grad_norms.append(torch.nn.utils.clip_grad_norm_(stepped, recipe.optim.max_grad_norm).item())
            if not math.isfinite(grad_norms[-1]):
                raise NonFiniteError(f"step {step}: the gradient norm is {grad_norms[-1]} (not finite); likely causes: "
                                     "weights already broken by a learning rate too high, or an inf advantage. The "
                                     "latest checkpoint is the last good state")
            optimizer.step()
            if masters is not None:
                masters.write_back()
    if ranks.world > 1:  # the loss terms and counts of every rank's chunks
        keys = list(totals)
        summed = ranks.sum_(torch.tensor([totals[k] for k in keys] + [entropy_sum], dtype=torch.float64,
                                          device=ranks.device_for_collectives()))
        totals, entropy_sum = dict(zip(keys, summed[:-1].tolist())), summed[-1].item()
    tokens_per_epoch = max(1, ro.num_tokens)
    return {
        "loss/total": totals["loss"], "loss/policy": totals["policy"], "loss/kl": totals["kl"],
        "policy/entropy": entropy_sum / tokens_per_epoch,
        "policy/clip_frac_low": totals["clip_low"] / max(1, tokens_seen),
        "policy/clip_frac_high": totals["clip_high"] / max(1, tokens_seen),
        "policy/approx_kl": totals["approx_kl"] / max(1, tokens_seen),
        "optim/grad_norm": sum(grad_norms) / len(grad_norms),
    }


def update(t: Trainer, batch: Batch, advantages: torch.Tensor, step: int) -> dict[str, float]:
    """The policy update (DAPO's overlong filtering first: truncated samples leave the loss), then the LR step."""
    if t.recipe.algorithm.mask_truncated:
        batch.token_mask &= ~batch.truncated.to(batch.token_mask.device)[:, None]
    if batch.token_ids.shape[0] and batch.num_tokens:
        metrics = policy_update(t.run.policy, batch, advantages, t.recipe, t.optimizer, t.params, step, t.run.ranks,
                                t.masters)
    else:  # nothing to learn from (every group dropped or masked): no optimizer step
        metrics = {"optim/skipped": 1.0}
    with warnings.catch_warnings():  # the LR follows RL steps, skipped or not: torch's order warning is moot
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        t.scheduler.step()
    return metrics


# ---------------------------------------------------------------------------------------------- metrics


def rollout_metrics(ro: Batch, correct: torch.Tensor, bucket_of: Any = None) -> dict[str, float]:
    """Accuracy and token lengths of the step's samples: overall, by correctness, by difficulty label and,
    with a tracker's `bucket_of(problem)`, by difficulty bucket (easy / medium / hard)."""
    lengths = ro.lengths.float()
    ok = correct > 0
    m: dict[str, float] = {
        "accuracy": correct.mean().item(),
        "length/mean": lengths.mean().item(),
        "length/p50": lengths.quantile(0.5).item(),
        "length/p90": lengths.quantile(0.9).item(),
        "length/correct_mean": lengths[ok].mean().item() if ok.any() else float("nan"),
        "length/wrong_mean": lengths[~ok].mean().item() if (~ok).any() else float("nan"),
        "truncation_rate": ro.truncated.float().mean().item(),
        "groups/all_correct": ro.grouped(ok).all(1).float().mean().item(),
        "groups/all_wrong": ro.grouped(~ok).all(1).float().mean().item(),
    }
    difficulty = torch.tensor([p.difficulty if p.difficulty is not None else -1 for p in ro.problems])
    for d in sorted(set(difficulty.tolist()) - {-1}):
        sel = difficulty == d
        m[f"accuracy/difficulty_{d}"] = correct[sel].mean().item()
        m[f"length/difficulty_{d}"] = lengths[sel].mean().item()
    if bucket_of is not None:
        buckets = [bucket_of(p) or "unknown" for p in ro.problems]
        for b in sorted(set(buckets)):
            sel = torch.tensor([x == b for x in buckets])
            m[f"accuracy/bucket_{b}"] = correct[sel].mean().item()
            m[f"length/bucket_{b}"] = lengths[sel].mean().item()
    return m


def logged_samples(scored: Scored, scores: RewardScores, step: int, n_prompts: int) -> list[dict[str, Any]]:
    """The first completion of each of the first `n_prompts` groups, with its rewards (samples.jsonl)."""
    b, G = scored.batch, scored.batch.group_size
    return [{"step": step, "prompt": b.problems[i].prompt, "completion": b.completions[i], "answer": b.problems[i].answer,
             "correct": bool(b.correct[i]), "length": int(b.lengths[i]), "truncated": bool(b.truncated[i]),
             "reward": scores.total[i].item(), **{f"reward/{k}": v[i].item() for k, v in scores.raw.items()}}
            for i in range(0, min(n_prompts * G, len(b.completions)), G)]


# ---------------------------------------------------------------------------------------------- the step


@dataclass
class StepRecord:
    """What one step logs: its metrics (metrics.jsonl) and a few samples (samples.jsonl)."""

    metrics: dict[str, Any]
    samples: list[dict[str, Any]]


def rl_step(t: Trainer, step: int) -> StepRecord:
    """generate → score → filter → advantages → update → metrics."""
    t0 = time.perf_counter()
    schedule_values = {name: s(step) for name, s in t.schedules.items()}
    run = t.run
    context = LoopContext(run.model, run.tokenizer, run.task, t.recipe, step, t.monitor, run.device)

    scored = generate_and_score(t, step, 0, context, schedule_values)
    policy_view = rollout_metrics(scored.batch, scored.batch.correct, t.sampler.tracker.bucket)  # first B prompts, unfiltered
    sampling: dict[str, float] = {}
    if t.recipe.algorithm.dynamic_sampling.enabled:
        scored, sampling = dynamic_sampling(t, step, scored, context, schedule_values)
    t_gen = time.perf_counter() - t0

    scores = t.rewards.combine(scored.raws, step)
    t.rewards.update_multipliers(scored.raws)  # constrained components: λ moves after it is used
    advantages = advantages_of(t, scored, scores)  # [N] or [N, T]
    update_metrics = update(t, scored.batch, advantages, step)
    dt = time.perf_counter() - t0

    batch = scored.batch
    metrics = {"step": step, **scores.metrics, **policy_view, **update_metrics, **sampling,
               **{f"schedule/{k}": v for k, v in schedule_values.items()},
               "advantage/abs_mean": (advantages.abs().mean() if advantages.dim() == 1 else
                                      advantages.abs()[batch.token_mask.cpu()].mean()).item(),
               "optim/lr": t.scheduler.get_last_lr()[0],
               "perf/step_time": dt, "perf/gen_time": t_gen, "perf/tokens_per_s": int(batch.lengths.sum()) / max(dt, 1e-9)}
    for wc in t.rewards.components:  # e.g. an RM ensemble's member disagreement
        metrics.update({f"reward/{wc.name}/{k}": v for k, v in wc.component.last_metrics().items()})
    metrics.update(t.sampler.metrics())
    metrics["rollout/max_new_tokens"] = batch.max_new_tokens
    t.sampler.report(step, metrics)  # stage promotion reads the step's metrics
    return StepRecord(metrics, logged_samples(scored, scores, step, t.recipe.train.log_samples))
