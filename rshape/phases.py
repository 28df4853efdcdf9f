"""Phases: one recipe that chains an SFT warm start and RL phases, each starting from the previous weights.

    phases:
      - {name: warm, kind: sft, sft: {steps: 40, mode_mix: {full: 1.0}}}
      - {name: format, overrides: {train.steps: 20, rewards: {correctness: {weight: 1}, format: {weight: 1}}}}
      - {name: length, overrides: {train.steps: 40, rewards.length: {type: kimi_length, weight: 0.4}}}

Phase i runs in `output_dir/<i>_<name>/` with the base recipe plus its `overrides` (dotted keys, or
whole sections). It starts from the weights of phase i−1: its LoRA adapter (`model.adapter`), or, for
full fine-tuning, its saved model (`model.name`). `--resume` skips finished phases (those with a
summary.json) and resumes the unfinished one from its latest checkpoint (`train.checkpoint_every`, for
sft phases too), or starts it again if it stopped before its first checkpoint.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from rshape.recipe import Recipe, SftConfig, phase_recipe
from rshape.rl.loop import train
from rshape.rl.rollout import positions_from_mask, render_prompt
from rshape.rl.session import RunSession
from rshape.runs import latest_checkpoint, read_jsonl, restore_checkpoint, write_json
from rshape.tasks.arithmetic import make_trace


def run_phases(recipe: Any, resume: bool = False, console: Any = None) -> dict[str, Any]:
    """Run every phase in order; returns the last RL phase's summary with the phases listed."""
    base = recipe.model_dump(mode="json")
    previous: Path | None = None
    summaries = []
    for i, phase in enumerate(recipe.phases, 1):
        data = phase_recipe(base, phase, i, previous, recipe.model.lora.enabled)
        sub = Recipe.model_validate(data)
        run_dir = Path(sub.output_dir)
        done = (run_dir / "summary.json").is_file()
        if not done:
            resuming = resume and latest_checkpoint(run_dir) is not None
            if resume and not resuming and run_dir.exists():  # stopped before its first checkpoint: nothing to
                shutil.rmtree(run_dir)  # continue from, so the phase starts again (its partial logs go with it)
            if phase.kind == "sft":
                sft_phase(sub, phase.sft, resume=resuming)
            else:
                train(sub, resume=resuming, console=console)
        previous = latest_checkpoint(run_dir)
        summaries.append({"phase": phase.name, "kind": phase.kind, "run_dir": str(run_dir),
                          "final_eval": read_jsonl(run_dir / "eval.jsonl")[-1]})
    first = read_jsonl(Path(summaries[0]["run_dir"]) / "eval.jsonl")[0]
    summary = {"run_dir": recipe.output_dir, "first_eval": first, "final_eval": summaries[-1]["final_eval"],
               "steps": sum(p.sft.steps if p.kind == "sft" else 0 for p in recipe.phases), "phases": summaries}
    write_json(Path(recipe.output_dir) / "summary.json", summary)
    return summary


def sft_examples(task: Any, cfg: SftConfig, rng: random.Random, n: int) -> list[tuple[Any, str]]:
    """(prompt, target completion) pairs: tiny-world traces of the mixed kinds, or a data column."""
    out = []
    for problem in rng.sample(task.train, min(n, len(task.train))):
        if "a" in problem.meta and "b" in problem.meta:  # the built-in addition world
            mode = rng.choices(list(cfg.mode_mix), list(cfg.mode_mix.values()))[0]
            out.append((problem.prompt, make_trace(problem.meta["a"], problem.meta["b"], mode, rng)))
        elif cfg.completion_key in problem.meta:
            out.append((problem.prompt, str(problem.meta[cfg.completion_key])))
        else:
            raise ValueError(f"sft phase: problem {problem.id} has no '{cfg.completion_key}' column to imitate")
    return out


def sft_loss(model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[Any, str]], system_prompt: str | None,
             device: torch.device, chat: str = "never") -> torch.Tensor:
    """Mean cross-entropy of the completion tokens (and EOS) given the rendered prompt."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    rows, labels = [], []
    for prompt, completion in pairs:
        p = tokenizer(render_prompt(prompt, tokenizer, system_prompt, chat), add_special_tokens=not has_template)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)  # [B, W] right-padded
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels], device=device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), lab[:, 1:].reshape(-1),
                                             ignore_index=-100)


def sft_phase(recipe: Any, cfg: SftConfig, resume: bool = False) -> dict[str, Any]:
    """Supervised fine-tuning as one phase: same policy loading, run directory and checkpoint format as `rl`.

    Loss: mean token cross-entropy of the target completion (+ EOS) given the prompt. Step s trains on the
    examples drawn with the seed (recipe seed, s), so with checkpoints every `train.checkpoint_every` steps
    (weights, optimizer, RNG) `resume` continues exactly where an interrupted phase stopped.
    """
    run = RunSession.open(recipe, resume)
    model, tokenizer, task, device = run.model, run.tokenizer, run.task, run.device
    params = run.policy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    start = 0
    if resume:
        start = restore_checkpoint(run.run_dir, model, optimizer)["step"]
        run.resume_logs({"metrics": start, "eval": min(start, cfg.steps - 1)})  # the final eval is redone
    else:
        run.start({"phase": "sft"}, ("metrics", "eval"))

    def checkpoint(step: int) -> None:
        run.checkpoint(step, optimizer=optimizer.state_dict(), torch_rng=torch.get_rng_state())

    if start == 0:
        run.evaluate(0)
    model.train()
    every = recipe.train.checkpoint_every
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        pairs = sft_examples(task, cfg, random.Random(f"{recipe.seed}-sft-{step}"), cfg.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = sft_loss(model, tokenizer, pairs, task.system_prompt, device, task.chat)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, recipe.optim.max_grad_norm).item()
        optimizer.step()
        run.logs["metrics"].write({"step": step, "sft/loss": loss.item(), "optim/grad_norm": grad_norm,
                           "perf/step_time": time.perf_counter() - t0})
        if every and step % every == 0 and step != cfg.steps:
            checkpoint(step)
    final = run.evaluate(cfg.steps)
    checkpoint(cfg.steps)
    return run.finish(final, cfg.steps)
