"""`rshape rl`: the GRPO-family training loop, top to bottom.

    sample prompts → generate G completions each → verify and score → advantages → clipped
    policy update → log → evaluate → checkpoint

Switches that change the algorithm (all recipe keys):
- `algorithm.advantage`   how rewards become advantages (`grpo`: group mean/std).
- `algorithm.loss_agg`    `grpo` (per-sequence token mean, then mean) or `dapo` (batch token mean).
- `algorithm.clip_low/clip_high`   asymmetric ratio clip (DAPO clip-higher when high > low).
- `algorithm.kl_beta`     k3 KL to the reference (adapters off under LoRA); 0 = no KL, no extra pass.
- `algorithm.epochs/minibatches`   updates per batch; old log-probs are computed once before them
                          (when both are 1, old = current detached, so the ratio is exactly 1).
- `rewards`               the weighted components; the total that is logged is the one optimised.
                          A `combine: per_step` (process) component adds token-level advantages instead.
- `rollout.temperature/top_p`      sampling; the training log-probs use the same temperature.
Sampling noise is keyed by (seed, step, prompt id, sample index), so runs and resumes reproduce.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any

import torch

from rshape.curriculum import CurriculumSampler
from rshape.evaluate import evaluate_recipe
from rshape.models import load_policy, resolve_device, resolve_dtype
from rshape.recipe import Recipe, recipe_to_yaml
from rshape.rewards import RewardBatch, build_rewards
from rshape.rl.advantages import ADVANTAGES, AdvantageInputs, estimator_needs
from rshape.rl.context import LoopContext, batch_from_rollouts
from rshape.rl.loss import (
    clipped_policy_loss,
    completion_logits,
    gather_logprobs,
    length_sorted_chunks,
    rows_per_chunk,
    token_logprobs,
)
from rshape.rl.rollout import Rollouts, check_decoder, concat_rollouts, rollout
from rshape.rl.sampling import sample_keys
from rshape.runs import (
    JsonlWriter,
    RunDirError,
    manifest,
    prepare_run_dir,
    restore_checkpoint,
    save_checkpoint,
    trainable_state_dict,
    truncate_jsonl_after_step,
    write_json,
)
from rshape.sampler import PromptSampler
from rshape.schedules import parse_schedule
from rshape.tasks import build_task


def lr_factor(schedule: str, warmup: int, total: int):
    """Multiplier of the base LR at optimizer step s: linear warm-up, then constant/linear/cosine to 0."""

    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return f


def rollout_metrics(ro: Rollouts, correct: torch.Tensor, bucket_of: Any = None) -> dict[str, float]:
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
        "groups/all_correct": ok.view(-1, ro.group_size).all(1).float().mean().item(),
        "groups/all_wrong": (~ok).view(-1, ro.group_size).all(1).float().mean().item(),
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


def probe_estimator(model, tokenizer, task: Any, recipe: Recipe, device: torch.device):
    """The offline difficulty probe: pass rate of the initial policy over `samples` samples per prompt."""
    k = recipe.curriculum.tracker.samples

    def estimate(problems: list) -> list[float]:
        rates: list[float] = []
        chunk_size = max(1, recipe.eval.batch_size // k)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in range(0, len(problems), chunk_size):
                chunk = problems[i:i + chunk_size]
                keys = sample_keys(recipe.seed, 0, [f"probe:{p.id}" for p in chunk for _ in range(k)],
                                   [g for _ in chunk for g in range(k)])
                ro = rollout(model, tokenizer, chunk, group_size=k, max_new_tokens=recipe.rollout.max_new_tokens,
                             keys=keys, temperature=recipe.rollout.temperature, top_p=recipe.rollout.top_p,
                             system_prompt=task.system_prompt, device=device, decoder=recipe.rollout.decoder)
                ok = torch.tensor([float(task.verify(t, p)) for t, p in zip(ro.texts, ro.problems)]).view(-1, k)
                rates += ok.mean(1).tolist()
        model.train(was_training)
        return rates

    return estimate


def select_scored(ro: Rollouts, batch: RewardBatch, raws: dict[str, torch.Tensor], rows: torch.Tensor
                  ) -> tuple[Rollouts, RewardBatch, dict[str, torch.Tensor]]:
    """The given rows of a scored batch (rows keep whole groups)."""
    idx = rows.tolist()
    sub = dataclasses.replace(
        batch, prompts=[batch.prompts[i] for i in idx], completions=[batch.completions[i] for i in idx],
        completion_ids=[batch.completion_ids[i] for i in idx], lengths=batch.lengths[rows],
        truncated=batch.truncated[rows], correct=batch.correct[rows], problems=[batch.problems[i] for i in idx],
        token_entropies=batch.token_entropies[rows] if batch.token_entropies is not None else None)
    return ro.select(rows), sub, {k: v[rows] for k, v in raws.items()}


def merge_scored(parts: list[tuple[Rollouts, RewardBatch, dict[str, torch.Tensor]]], pad_token_id: int
                 ) -> tuple[Rollouts, RewardBatch, dict[str, torch.Tensor]]:
    """Concatenate scored rounds of dynamic sampling into one batch."""
    ros, batches, raws = zip(*parts)
    ro = concat_rollouts(list(ros), pad_token_id)
    first = batches[0]
    batch = dataclasses.replace(
        first, prompts=[x for b in batches for x in b.prompts], completions=ro.texts,
        completion_ids=[x for b in batches for x in b.completion_ids], lengths=ro.lengths, truncated=ro.truncated,
        correct=torch.cat([b.correct for b in batches]), problems=ro.problems, token_entropies=ro.entropies)
    return ro, batch, {k: torch.cat([r[k] for r in raws]) for k in raws[0]}


def sequence_stats(policy, ro: Rollouts, recipe: Recipe, needs: set[str]) -> dict[str, torch.Tensor]:
    """Per-sequence mean token log-prob / entropy under the sampling policy, for estimators that ask."""
    if not needs or not ro.completion_ids.shape[0]:
        return {}
    with torch.no_grad():
        lp, ent = token_logprobs(policy.model, ro, recipe.rollout.temperature, recipe.algorithm.logprob_chunk,
                                 with_entropy="seq_entropies" in needs)  # [N, T]
    mask = ro.completion_mask.float()
    count = mask.sum(1).clamp_min(1)
    out = {"seq_logprobs": ((lp * mask).sum(1) / count).cpu()}
    if ent is not None:
        out["seq_entropies"] = ((ent * mask).sum(1) / count).cpu()
    return {k: v for k, v in out.items() if k in needs}


def policy_update(policy, ro: Rollouts, advantages: torch.Tensor, recipe: Recipe, optimizer, params,
                  step: int) -> dict[str, float]:
    """`epochs` passes of `minibatches` optimizer steps over the rollouts; returns loss/policy metrics."""
    algo, temperature = recipe.algorithm, recipe.rollout.temperature
    model = policy.model
    device = ro.completion_ids.device
    advantages = advantages.to(device)
    n = ro.completion_ids.shape[0]
    reuse = algo.epochs > 1 or algo.minibatches > 1
    with torch.no_grad():
        old_logp = token_logprobs(model, ro, temperature, algo.logprob_chunk)[0] if reuse else None  # [N, T]
        ref_logp = None
        if algo.kl_beta > 0:
            with policy.reference() as ref:
                ref_logp = token_logprobs(ref, ro, temperature, algo.logprob_chunk)[0]  # [N, T]
    totals = {"loss": 0.0, "policy": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "approx_kl": 0.0}
    entropy_sum, grad_norms, tokens_seen = 0.0, [], 0
    g = torch.Generator().manual_seed(recipe.seed * 7_919 + step)
    for epoch in range(algo.epochs):
        order = torch.randperm(n, generator=g) if algo.minibatches > 1 else torch.arange(n)
        for mb_rows in order.chunk(algo.minibatches):
            mb = ro.select(mb_rows)
            num_tokens = mb.num_tokens
            optimizer.zero_grad(set_to_none=True)
            for chunk_rows in length_sorted_chunks(mb, rows_per_chunk(model, mb, algo.logprob_chunk)):
                part = mb.select(chunk_rows).trimmed()  # similar lengths, padding-only columns dropped
                rows, width = mb_rows[chunk_rows], part.completion_ids.shape[1]
                logp, ent = gather_logprobs(completion_logits(model, part, temperature), part.completion_ids,
                                            with_entropy=epoch == 0, entropy_grad=algo.entropy_coef > 0)  # [c, t]
                mask = part.completion_mask
                terms = clipped_policy_loss(
                    logp, old_logp[rows, :width] if reuse else logp.detach(),
                    advantages[rows] if advantages.dim() == 1 else advantages[rows, :width], mask,
                    clip_low=algo.clip_low, clip_high=algo.clip_high, agg=algo.loss_agg,
                    num_sequences=len(mb_rows), num_tokens=num_tokens, max_len=recipe.rollout.max_new_tokens,
                    ratio_level=algo.ratio_level, ref_logp=ref_logp[rows, :width] if ref_logp is not None else None,
                    kl_beta=algo.kl_beta, entropy=ent, entropy_coef=algo.entropy_coef)
                terms.loss.backward()
                for k in ("loss", "policy", "kl"):
                    totals[k] += getattr(terms, k).item() / (algo.epochs * algo.minibatches)
                for k in ("clip_low", "clip_high", "approx_kl"):
                    totals[k] += getattr(terms, k).item()
                if ent is not None and epoch == 0:
                    entropy_sum += (ent.detach() * mask).sum().item()
            tokens_seen += num_tokens
            grad_norms.append(torch.nn.utils.clip_grad_norm_(params, recipe.optim.max_grad_norm).item())
            optimizer.step()
    tokens_per_epoch = max(1, ro.num_tokens)
    return {
        "loss/total": totals["loss"], "loss/policy": totals["policy"], "loss/kl": totals["kl"],
        "policy/entropy": entropy_sum / tokens_per_epoch,
        "policy/clip_frac_low": totals["clip_low"] / max(1, tokens_seen),
        "policy/clip_frac_high": totals["clip_high"] / max(1, tokens_seen),
        "policy/approx_kl": totals["approx_kl"] / max(1, tokens_seen),
        "optim/grad_norm": sum(grad_norms) / len(grad_norms),
    }


def train(recipe: Recipe, resume: bool = False, console: Any = None) -> dict[str, Any]:
    """Run `rshape rl` as the recipe says; returns the summary (first and last eval)."""
    # ----------------------------------------------------------------- set-up
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    device = resolve_device(recipe.device)
    dtype = resolve_dtype(recipe.dtype, device)
    run_dir = prepare_run_dir(recipe.output_dir, resume)
    torch.manual_seed(recipe.seed)
    task = build_task(recipe.task, recipe.seed)
    rewards = build_rewards(recipe.rewards, recipe.rollout.max_new_tokens, mode=recipe.reward_combine)
    schedules = {name: parse_schedule(spec) for name, spec in recipe.schedules.items()}
    policy = load_policy(recipe.model, device, dtype, keep_reference=recipe.algorithm.kl_beta > 0)
    model, tokenizer = policy.model, policy.tokenizer
    check_decoder(model, recipe.rollout.decoder)  # before anything is written to the run directory
    model.train()
    params = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=recipe.optim.lr, betas=recipe.optim.betas,
                                  weight_decay=recipe.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(recipe.optim.schedule, recipe.optim.warmup_steps, recipe.train.steps))
    cur = recipe.curriculum
    estimate = probe_estimator(model, tokenizer, task, recipe, device) if cur.tracker.kind == "probe" else None
    sampler = CurriculumSampler(task.train, recipe.seed, cur, estimate=estimate,
                                cache_path=run_dir / "curriculum_probe.json")  # plain seeded epochs by default
    monitor = PromptSampler(task.train, recipe.seed + 1).next(min(64, len(task.train)))  # fixed monitor split
    advantage_fn = ADVANTAGES.get(recipe.algorithm.advantage)
    rollout_cfg = recipe.rollout
    B, G = rollout_cfg.prompts_per_step, rollout_cfg.group_size

    start_step = 0
    if resume:
        state = restore_checkpoint(run_dir, model, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        rewards.load_state_dict(state["reward_state"])
        start_step = state["step"]
        if start_step >= recipe.train.steps:
            raise RunDirError(f"{run_dir}: already trained {start_step} steps; raise train.steps to continue it")
        for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl"):
            truncate_jsonl_after_step(run_dir / name, start_step)
    else:
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
        write_json(run_dir / "manifest.json", manifest(recipe.seed, device, {"dtype": str(dtype)}))
    metrics_log = JsonlWriter(run_dir / "metrics.jsonl")
    samples_log = JsonlWriter(run_dir / "samples.jsonl")
    eval_log = JsonlWriter(run_dir / "eval.jsonl")

    def evaluate(step: int) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            m = evaluate_recipe(model, tokenizer, task, recipe, device)
        model.train()
        eval_log.write({"step": step, **m})
        return m

    def checkpoint(step: int) -> None:
        save_checkpoint(run_dir, step, model, {
            "step": step, "trainable": trainable_state_dict(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
            "torch_rng": torch.get_rng_state(), "reward_state": rewards.state_dict(),
        }, tokenizer=tokenizer)

    if start_step == 0:
        evaluate(0)

    def generation_limit(step: int) -> int:
        """The generation limit of this step: a token-budget schedule when `rollout.max_new_tokens_from` names one."""
        if rollout_cfg.max_new_tokens_from is None:
            return rollout_cfg.max_new_tokens
        return max(1, min(rollout_cfg.max_new_tokens, round(schedules[rollout_cfg.max_new_tokens_from](step))))

    def generate_and_score(step: int, round_: int, context: LoopContext, schedule_values: dict[str, float]
                           ) -> tuple[Rollouts, RewardBatch, dict[str, torch.Tensor]]:
        """B new prompts × G samples, verified, every reward component called once."""
        problems = sampler.next(B)
        limit = generation_limit(step)
        tag = "" if round_ == 0 else f"round{round_}:"  # refills draw fresh noise
        keys = sample_keys(recipe.seed, step, [tag + p.id for p in problems for _ in range(G)],
                           [g for _ in problems for g in range(G)])  # [B·G]
        ro = rollout(model, tokenizer, problems, group_size=G, max_new_tokens=limit,
                     keys=keys, temperature=rollout_cfg.temperature, top_p=rollout_cfg.top_p,
                     system_prompt=task.system_prompt, device=device, with_entropies=rewards.needs_entropies,
                     decoder=rollout_cfg.decoder)
        batch = batch_from_rollouts(ro, task, step, limit, context=context, schedule=schedule_values)
        sampler.observe([p.id for p in problems], batch.correct.view(-1, G).mean(1).tolist(), step)  # before any filtering
        return ro, batch, rewards.raw_scores(batch)

    # ----------------------------------------------------------------- the loop
    from rshape.progress import StepProgress

    progress = StepProgress(recipe.train.steps, start_step, enabled=recipe.train.progress, console=console)
    with progress:
        for step in range(start_step + 1, recipe.train.steps + 1):
            t0 = time.perf_counter()
            schedule_values = {name: s(step) for name, s in schedules.items()}
            context = LoopContext(model, tokenizer, task, recipe, step, monitor, device)

            ro, batch, raws = generate_and_score(step, 0, context, schedule_values)
            policy_view = rollout_metrics(ro, batch.correct, sampler.tracker.bucket)  # the first B prompts, unfiltered
            sampling = {}
            if recipe.algorithm.dynamic_sampling.enabled:  # DAPO: keep groups whose rewards differ, refill
                ds = recipe.algorithm.dynamic_sampling
                kept: list[tuple[Rollouts, RewardBatch, dict[str, torch.Tensor]]] = []
                n_kept, rounds = 0, 0
                while True:
                    total = rewards.combine(raws, step, G).total.view(-1, G)  # [B, G]
                    informative = total.std(dim=1, unbiased=False) > ds.std_eps  # [B]
                    if rounds == 0:
                        sampling["sampling/zero_std_frac"] = 1.0 - informative.float().mean().item()
                    rows = informative.repeat_interleave(G).nonzero().squeeze(1)
                    kept.append(select_scored(ro, batch, raws, rows))
                    n_kept += int(informative.sum())
                    if n_kept >= B or rounds >= ds.max_rounds:
                        break
                    rounds += 1
                    ro, batch, raws = generate_and_score(step, rounds, context, schedule_values)
                sampling.update({"sampling/extra_rounds": rounds, "sampling/kept_groups": n_kept,
                                 "sampling/hit_cap": float(n_kept < B)})
                ro, batch, raws = merge_scored(kept, tokenizer.pad_token_id)
            t_gen = time.perf_counter() - t0
            correct = batch.correct  # [N]
            scores = rewards.combine(raws, step, G)
            rewards.update_multipliers(raws)  # constrained components: λ moves after it is used
            seq_stats = sequence_stats(policy, ro, recipe, estimator_needs(advantage_fn, recipe.algorithm.advantage_params))
            advantages = (scores.advantages if scores.advantages is not None  # normalize_then_sum
                          else torch.zeros(0) if not len(correct)  # every group dropped: nothing to learn from
                          else advantage_fn(AdvantageInputs(
                              rewards=scores.total, group_size=G, lengths=ro.lengths, correct=correct,
                              max_new_tokens=batch.max_new_tokens, eps=recipe.algorithm.adv_eps, **seq_stats),
                              **recipe.algorithm.advantage_params))  # [N]
            step_advantages = rewards.step_advantages(batch, tokenizer, ro.completion_ids.shape[1])  # [N, T] or None
            if step_advantages is not None:  # process supervision: each token also gets its steps' return
                advantages = advantages[:, None] + step_advantages
            if recipe.algorithm.mask_truncated:  # DAPO overlong filtering: truncated samples leave the loss
                ro.completion_mask &= ~ro.truncated.to(ro.completion_mask.device)[:, None]

            if ro.completion_ids.shape[0] and ro.num_tokens:
                update = policy_update(policy, ro, advantages, recipe, optimizer, params, step)
            else:  # nothing to learn from (every group dropped or masked): no optimizer step
                update = {"optim/skipped": 1.0}
            with warnings.catch_warnings():  # the LR follows RL steps, skipped or not: torch's order warning is moot
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                scheduler.step()
            dt = time.perf_counter() - t0

            metrics = {"step": step, **scores.metrics, **policy_view, **update, **sampling,
                       **{f"schedule/{k}": v for k, v in schedule_values.items()},
                       "advantage/abs_mean": (advantages.abs().mean() if advantages.dim() == 1 else
                                              advantages.abs()[ro.completion_mask.cpu()].mean()).item(),
                       "optim/lr": scheduler.get_last_lr()[0],
                       "perf/step_time": dt, "perf/gen_time": t_gen,
                       "perf/tokens_per_s": int(ro.lengths.sum()) / max(dt, 1e-9)}
            for wc in rewards.components:  # e.g. an RM ensemble's member disagreement
                extra = getattr(wc.component, "last_metrics", None)
                if callable(extra):
                    metrics.update({f"reward/{wc.name}/{k}": v for k, v in extra().items()})
            metrics.update(sampler.metrics())
            metrics["rollout/max_new_tokens"] = batch.max_new_tokens
            sampler.report(step, metrics)  # stage promotion reads the step's metrics
            metrics_log.write(metrics)
            for i in range(0, min(recipe.train.log_samples * G, len(ro.texts)), G):
                samples_log.write({"step": step, "prompt": ro.problems[i].prompt, "completion": ro.texts[i],
                                   "answer": ro.problems[i].answer, "correct": bool(correct[i]),
                                   "length": int(ro.lengths[i]), "truncated": bool(ro.truncated[i]),
                                   "reward": scores.total[i].item(),
                                   **{f"reward/{k}": v[i].item() for k, v in scores.raw.items()}})
            progress.update(step, metrics)

            if recipe.eval.every and step % recipe.eval.every == 0 and step != recipe.train.steps:
                evaluate(step)
            if recipe.train.checkpoint_every and step % recipe.train.checkpoint_every == 0:
                checkpoint(step)
    # ----------------------------------------------------------------- the end
    from rshape.runs import read_jsonl

    final_eval = evaluate(recipe.train.steps)
    if not (recipe.train.checkpoint_every and recipe.train.steps % recipe.train.checkpoint_every == 0):
        checkpoint(recipe.train.steps)
    for log in (metrics_log, samples_log, eval_log):
        log.close()
    evals = read_jsonl(run_dir / "eval.jsonl")
    summary = {"run_dir": str(run_dir), "first_eval": evals[0], "final_eval": final_eval,
               "steps": recipe.train.steps}
    write_json(run_dir / "summary.json", summary)
    return summary
