"""Held-out evaluation: accuracy (greedy, or sampled avg@k) and mean tokens, overall and per difficulty,
each accuracy with a 95% interval."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rshape.rl.rollout import rollout
from rshape.rl.sampling import sample_keys
from rshape.stats import cluster_interval, wilson_interval
from rshape.tasks.base import Task


def evaluate_policy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, task: Task, *,
                    max_new_tokens: int, batch_size: int = 64, device: torch.device | None = None,
                    decoder: str = "auto", samples: int = 0, temperature: float = 1.0, top_p: float = 1.0,
                    seed: int = 0) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Evaluate on `task.eval`. samples = 0: one greedy completion per problem; k ≥ 1: k sampled completions
    (temperature, top_p), accuracy = avg@k. Sampling noise is keyed by (seed, problem id, sample index) only,
    so every evaluation of a run sees the same noise (common random numbers across checkpoints).

    → (metrics `eval/accuracy`, `eval/accuracy_low`, `eval/accuracy_high` (95%: Wilson for greedy, per-problem
    for avg@k), `eval/length`, `eval/truncation`, each also `/difficulty_d`; per-completion records)."""
    k = max(1, samples)
    records = []
    per_batch = max(1, batch_size // k) if samples else batch_size
    for start in range(0, len(task.eval), per_batch):
        problems = task.eval[start: start + per_batch]
        keys = (sample_keys(seed, 0, [p.id for p in problems for _ in range(k)], [i for _ in problems for i in range(k)])
                if samples else None)
        ro = rollout(model, tokenizer, problems, group_size=k, max_new_tokens=max_new_tokens, keys=keys,
                     temperature=temperature, top_p=top_p, system_prompt=task.system_prompt, device=device,
                     decoder=decoder)
        for i, (text, n, trunc) in enumerate(zip(ro.completions, ro.lengths.tolist(), ro.truncated.tolist())):
            p = problems[i // k]
            records.append({"id": p.id, "difficulty": p.difficulty, "sample": i % k,
                            "correct": bool(task.verify(text, p)), "length": n, "truncated": trunc,
                            "completion": text})
    return summarize(records), records


def evaluate_recipe(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, task: Task, recipe: Any,
                    device: torch.device | None = None) -> dict[str, float]:
    """`evaluate_policy` with a recipe's `eval` settings (generation limit, batch, greedy or avg@k)."""
    ev, ro = recipe.eval, recipe.rollout
    m, _ = evaluate_policy(model, tokenizer, task, max_new_tokens=ev.max_new_tokens or ro.max_new_tokens,
                           batch_size=ev.batch_size, device=device, decoder=ro.decoder, samples=ev.samples,
                           temperature=ev.temperature or ro.temperature, top_p=ev.top_p or ro.top_p, seed=ev.seed)
    return m


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy with its 95% interval, mean length and truncation rate, overall and per difficulty."""
    def stats(rs: list[dict[str, Any]], suffix: str) -> dict[str, float]:
        by_problem: dict[str, list[bool]] = defaultdict(list)
        for r in rs:
            by_problem[r["id"]].append(r["correct"])
        if all(len(v) == 1 for v in by_problem.values()):
            low, high = wilson_interval(sum(r["correct"] for r in rs), len(rs))
        else:
            low, high = cluster_interval([sum(v) / len(v) for v in by_problem.values()])
        return {f"eval/accuracy{suffix}": sum(r["correct"] for r in rs) / len(rs),
                f"eval/accuracy_low{suffix}": low, f"eval/accuracy_high{suffix}": high,
                f"eval/length{suffix}": sum(r["length"] for r in rs) / len(rs),
                f"eval/truncation{suffix}": sum(r["truncated"] for r in rs) / len(rs)}

    out = stats(records, "")
    out["eval/problems"] = len({r["id"] for r in records})
    out["eval/samples_per_problem"] = max(r.get("sample", 0) for r in records) + 1 if records else 0
    by_d: dict[int, list] = defaultdict(list)
    for r in records:
        if r["difficulty"] is not None:
            by_d[r["difficulty"]].append(r)
    for d in sorted(by_d):
        out.update(stats(by_d[d], f"/difficulty_{d}"))
    return out
