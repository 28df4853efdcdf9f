"""`rshape rl`: the GRPO-family training loop.

    set up → for each step: rl_step (rshape.rl.step: generate → score → filter → advantages → update →
    metrics), log, evaluate, checkpoint → final evaluation, summary

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

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from rshape.batch import verify
from rshape.curriculum.sampler import CurriculumSampler
from rshape.progress import StepProgress
from rshape.recipe import Recipe, recipe_to_yaml
from rshape.rewards import build_rewards
from rshape.rl.advantages import ADVANTAGES
from rshape.rl.masters import Float32Masters
from rshape.rl.rollout import check_decoder, rollout
from rshape.rl.sampling import sample_keys
from rshape.rl.session import RunSession
from rshape.rl.step import Trainer, rl_step
from rshape.runs import JsonlWriter, RunDirError, restore_checkpoint
from rshape.sampler import PromptSampler
from rshape.schedules import lr_factor, parse_schedule


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
                ok = ro.grouped(verify(ro, task))
                rates += ok.mean(1).tolist()
        model.train(was_training)
        return rates

    return estimate


# keys a resumed run may change without --accept-changes: they do not alter what the finished steps computed (the
# device, threads and log-prob chunking change float rounding only)
SAFE_ON_RESUME = ("train.steps", "train.progress", "train.log_samples", "train.checkpoint_every", "eval.", "threads",
                  "device", "output_dir", "trackers.", "algorithm.logprob_chunk")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}{key}.").items()} if d else {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def recipe_changes(recipe: Recipe) -> list[tuple[str, Any, Any]]:
    """(key, the run's value, the new value) for every key the resumed recipe changes from the run's recipe.yaml."""
    saved = Path(recipe.output_dir) / "recipe.yaml"
    if not saved.is_file():
        return []
    old, new = _flat(yaml.safe_load(saved.read_text()) or {}), _flat(recipe.model_dump(mode="json"))
    return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def set_up(recipe: Recipe, resume: bool, accept_changes: bool = False,
           say: Callable[[str], None] | None = None) -> tuple[Trainer, int]:
    """Everything a step needs, fresh or restored from the latest checkpoint; returns it and the last step done.

    A resumed run must be the same run: a changed key outside SAFE_ON_RESUME is refused (one line per key) unless
    `accept_changes`; accepted changes are recorded in recipe_changes.jsonl with the step they took effect at."""
    changes = recipe_changes(recipe) if resume else []
    unsafe = [c for c in changes if not any(c[0] == s or (s.endswith(".") and c[0].startswith(s)) for s in SAFE_ON_RESUME)]
    if unsafe and not accept_changes:
        raise RunDirError("\n".join([f"{recipe.output_dir}: --resume with a recipe that differs from the run's:"]
                                    + [f"  {k}: {old!r} → {new!r}" for k, old, new in unsafe]
                                    + ["resume with the run's own settings, or pass --accept-changes to continue "
                                       "with these (recorded in recipe_changes.jsonl)"]))
    run = RunSession.open(recipe, resume, keep_reference=recipe.algorithm.kl_beta > 0, say=say)
    if recipe.rollout.prompts_per_step < run.ranks.world:
        raise RunDirError(f"rollout.prompts_per_step ({recipe.rollout.prompts_per_step}) is smaller than the "
                          f"{run.ranks.world} data-parallel ranks: every rank needs at least one prompt (group) per step")
    rewards = build_rewards(recipe.rewards, mode=recipe.reward_combine)
    check_decoder(run.model, recipe.rollout.decoder)  # before anything is written to the run directory
    if recipe.rollout.decoder == "compiled":
        run.say("compiling the decode step at each new batch shape (10–30 s, cached across runs)")
    run.model.train()
    params = run.policy.trainable_parameters()
    masters = Float32Masters(params) if Float32Masters.needed(params, recipe.optim.float32_master) else None
    optimizer = torch.optim.AdamW(masters.params if masters else params, lr=recipe.optim.lr, betas=recipe.optim.betas,
                                  weight_decay=recipe.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(recipe.optim.schedule, recipe.optim.warmup_steps, recipe.train.steps))
    cur = recipe.curriculum
    estimate = probe_estimator(run.model, run.tokenizer, run.task, recipe, run.device) if cur.tracker.kind == "probe" else None
    sampler = CurriculumSampler(run.task.train, recipe.seed, cur, estimate=estimate,
                                cache_path=run.run_dir / "curriculum_probe.json")  # plain seeded epochs by default
    monitor = PromptSampler(run.task.train, recipe.seed + 1).next(min(64, len(run.task.train)))  # fixed monitor split
    t = Trainer(run, rewards, ADVANTAGES.get(recipe.algorithm.advantage), optimizer, scheduler, params, sampler,
                {name: parse_schedule(spec) for name, spec in recipe.schedules.items()}, monitor, masters)
    logs = ("metrics", "samples", "eval")
    if not resume:
        run.start({"dtype": str(run.dtype)}, logs)
        return t, 0
    state = restore_checkpoint(run.run_dir, run.model, optimizer)
    if masters is not None:
        masters.load_state_dict(state.get("masters"))
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    rewards.load_state_dict(state["reward_state"])
    steps = recipe.train.steps
    if state["step"] == steps and not (run.run_dir / "summary.json").is_file():
        # trained to the end but stopped before its summary (e.g. killed during the final evaluation): finish it
        run.resume_logs({"metrics": steps, "samples": steps, "eval": steps - 1})
        record_changes(run, changes, steps)
        return t, steps
    if state["step"] >= steps:
        raise RunDirError(f"{run.run_dir}: already trained {state['step']} steps; raise train.steps to continue it")
    run.resume_logs(dict.fromkeys(logs, state["step"]))
    record_changes(run, changes, state["step"])
    return t, state["step"]


def record_changes(run: RunSession, changes: list[tuple[str, Any, Any]], step: int) -> None:
    """Append the accepted changes to recipe_changes.jsonl and make recipe.yaml describe the run as it continues."""
    if not changes or not run.ranks.main:
        return
    log = JsonlWriter(run.run_dir / "recipe_changes.jsonl")
    for key, old, new in changes:
        log.write({"step": step, "key": key, "old": old, "new": new})
    log.close()
    (run.run_dir / "recipe.yaml").write_text(recipe_to_yaml(run.recipe))


def checkpoint(t: Trainer, step: int) -> None:
    t.run.checkpoint(step, optimizer=t.optimizer.state_dict(), scheduler=t.scheduler.state_dict(),
                     sampler=t.sampler.state_dict(), torch_rng=torch.get_rng_state(), reward_state=t.rewards.state_dict(),
                     masters=t.masters.state_dict() if t.masters is not None else None)


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a finished step, with a checkpoint of that step written."""

    def __init__(self, step: int, run_dir: Path, signal_name: str) -> None:
        self.step, self.run_dir, self.signal_name = step, run_dir, signal_name
        super().__init__(f"{run_dir}: stopped by {signal_name} after step {step}; its checkpoint is written")


@contextmanager
def stop_requests() -> Iterator[dict[str, str | None]]:
    """While a run trains, SIGINT / SIGTERM ask it to stop after the current step (a second one stops at once)."""
    flag: dict[str, str | None] = {"signal": None}

    def handler(signum: int, frame: Any) -> None:
        if flag["signal"] is not None:
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def train(recipe: Recipe, resume: bool = False, console: Any = None, accept_changes: bool = False) -> dict[str, Any]:
    """Run `rshape rl` as the recipe says; returns the summary (first and last eval). SIGINT / SIGTERM stop it after
    the current step with a checkpoint (RunInterrupted), so that --resume continues exactly."""
    say = (lambda line: console.print(line, style="dim", highlight=False)) if console is not None else None
    t, start_step = set_up(recipe, resume, accept_changes, say)
    run, steps = t.run, recipe.train.steps
    if start_step == 0:
        run.evaluate(0)
    with stop_requests() as stop, StepProgress(steps, start_step, enabled=recipe.train.progress and run.ranks.main,
                                               console=console) as progress:
        for step in range(start_step + 1, steps + 1):
            record = rl_step(t, step)
            run.logs["metrics"].write(record.metrics)
            for sample in record.samples:
                run.logs["samples"].write(sample)
            progress.update(step, record.metrics)
            if recipe.eval.every and step % recipe.eval.every == 0 and step != steps:
                run.evaluate(step)
            on_schedule = bool(recipe.train.checkpoint_every and step % recipe.train.checkpoint_every == 0)
            stopping = run.ranks.any(stop["signal"] is not None)  # every rank stops after the same step
            if on_schedule or stopping:
                checkpoint(t, step)
            if stopping:
                run.close_logs()
                raise RunInterrupted(step, run.run_dir, stop["signal"] or "SIGTERM")
    final_eval = run.evaluate(steps)
    if not (recipe.train.checkpoint_every and steps % recipe.train.checkpoint_every == 0):
        checkpoint(t, steps)
    return run.finish(final_eval, steps)
