"""Greedy evaluation on the held-out split: accuracy and mean tokens, overall and per difficulty."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rshape.rl.rollout import rollout
from rshape.tasks.base import Task


def greedy_eval(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, task: Task, *,
                max_new_tokens: int, batch_size: int = 64, device: torch.device | None = None, decoder: str = "auto"
                ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """→ (metrics `eval/accuracy`, `eval/length`, `eval/accuracy/difficulty_d`, ..., per-problem records).
    decoder: `auto` / `fast` / `hf` (rshape.rl.rollout.stepper)."""
    records = []
    for start in range(0, len(task.eval), batch_size):
        problems = task.eval[start: start + batch_size]
        ro = rollout(model, tokenizer, problems, group_size=1, max_new_tokens=max_new_tokens, keys=None,
                     system_prompt=task.system_prompt, device=device, decoder=decoder)
        for p, text, n, trunc in zip(problems, ro.texts, ro.lengths.tolist(), ro.truncated.tolist()):
            records.append({"id": p.id, "difficulty": p.difficulty, "correct": bool(task.verify(text, p)),
                            "length": n, "truncated": trunc, "completion": text})
    return summarize(records), records


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    def stats(rs: list[dict[str, Any]], suffix: str) -> dict[str, float]:
        return {f"eval/accuracy{suffix}": sum(r["correct"] for r in rs) / len(rs),
                f"eval/length{suffix}": sum(r["length"] for r in rs) / len(rs),
                f"eval/truncation{suffix}": sum(r["truncated"] for r in rs) / len(rs)}

    out = stats(records, "")
    by_d: dict[int, list] = defaultdict(list)
    for r in records:
        if r["difficulty"] is not None:
            by_d[r["difficulty"]].append(r)
    for d in sorted(by_d):
        out.update(stats(by_d[d], f"/difficulty_{d}"))
    return out
