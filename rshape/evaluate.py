"""Held-out evaluation, shared by `rshape rl` and `rshape eval`: accuracy (greedy, or sampled avg@k), pass@k,
mean tokens of all, right and wrong answers, truncation, overall and per difficulty, each with a 95% interval."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rshape.rl.distributed import SINGLE, Ranks
from rshape.rl.rollout import rollout
from rshape.rl.sampling import sample_keys
from rshape.stats import cluster_interval, clustered_mean, pass_at_k, wilson_interval
from rshape.tasks.base import Task


def evaluate_policy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, task: Task, *,
                    max_new_tokens: int, batch_size: int = 64, device: torch.device | None = None,
                    decoder: str = "auto", samples: int = 0, temperature: float = 1.0, top_p: float = 1.0,
                    seed: int = 0, ranks: Ranks = SINGLE) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Evaluate on `task.eval`. samples = 0: one greedy completion per problem; k ≥ 1: k sampled completions
    (temperature, top_p), accuracy = avg@k. Sampling noise is keyed by (seed, problem id, sample index) only,
    so every evaluation of a run sees the same noise (common random numbers across checkpoints). With several
    data-parallel ranks each generates its contiguous share of the problems and the records are gathered.

    → (metrics `eval/accuracy`, `eval/accuracy_low`, `eval/accuracy_high` (95%: Wilson for greedy, per-problem
    for avg@k), `eval/length`, `eval/truncation`, each also `/difficulty_d`; per-completion records)."""
    k = max(1, samples)
    records = []
    per_batch = max(1, batch_size // k) if samples else batch_size
    mine = task.eval[ranks.share(len(task.eval))]
    for start in range(0, len(mine), per_batch):
        problems = mine[start: start + per_batch]
        keys = (sample_keys(seed, 0, [p.id for p in problems for _ in range(k)], [i for _ in problems for i in range(k)])
                if samples else None)
        ro = rollout(model, tokenizer, problems, group_size=k, max_new_tokens=max_new_tokens, keys=keys,
                     temperature=temperature, top_p=top_p, system_prompt=task.system_prompt, chat=task.chat, device=device,
                     decoder=decoder)
        for i, (text, n, trunc) in enumerate(zip(ro.completions, ro.lengths.tolist(), ro.truncated.tolist())):
            p = problems[i // k]
            records.append({"id": p.id, "difficulty": p.difficulty, "sample": i % k,
                            "correct": bool(task.verify(text, p)), "length": n, "truncated": trunc,
                            "completion": text})
    records = [r for part in ranks.gather(records) for r in part]
    return summarize(records), records


def evaluate_recipe(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, task: Task, recipe: Any,
                    device: torch.device | None = None, ranks: Ranks = SINGLE) -> dict[str, float]:
    """`evaluate_policy` with a recipe's `eval` settings (generation limit, batch, greedy or avg@k)."""
    ev, ro = recipe.eval, recipe.rollout
    m, _ = evaluate_policy(model, tokenizer, task, max_new_tokens=ev.max_new_tokens or ro.max_new_tokens,
                           batch_size=ev.batch_size, device=device, decoder=ro.decoder, samples=ev.samples,
                           temperature=ev.temperature or ro.temperature, top_p=ev.top_p or ro.top_p, seed=ev.seed,
                           ranks=ranks)
    return m


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    """Overall and per difficulty (suffix `/difficulty_d`), each with a 95% interval (`_low`, `_high`):

    - `eval/accuracy`: greedy accuracy (Wilson interval), or avg@k, the mean over problems of the fraction of
      their k samples that are right (per-problem interval: rshape.stats.cluster_interval);
    - `eval/pass@j` for j = 2, 4, 8, … and k (k > 1 samples): the unbiased pass@j averaged over problems;
    - `eval/length`, `eval/length_correct`, `eval/length_wrong`: mean tokens of all, right and wrong completions
      (clustered by problem: rshape.stats.clustered_mean); `eval/truncation`: the share that hit the limit."""
    def stats(rs: list[dict[str, Any]], suffix: str) -> dict[str, float]:
        by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rs:
            by_problem[r["id"]].append(r)
        groups = list(by_problem.values())
        correct = sum(r["correct"] for r in rs)
        if all(len(g) == 1 for g in groups):
            low, high = wilson_interval(correct, len(rs))
        else:
            low, high = cluster_interval([sum(r["correct"] for r in g) / len(g) for g in groups])
        out = {f"eval/accuracy{suffix}": correct / len(rs), f"eval/accuracy_low{suffix}": low,
               f"eval/accuracy_high{suffix}": high}
        k = min(len(g) for g in groups)
        for j in sorted({2 ** i for i in range(1, k.bit_length()) if 2 ** i < k} | ({k} if k > 1 else set())):
            per_problem = [pass_at_k(len(g), sum(r["correct"] for r in g), j) for g in groups]
            low, high = cluster_interval(per_problem)
            out.update({f"eval/pass@{j}{suffix}": sum(per_problem) / len(per_problem),
                        f"eval/pass@{j}_low{suffix}": low, f"eval/pass@{j}_high{suffix}": high})
        for name, keep in (("length", None), ("length_correct", True), ("length_wrong", False)):
            mean, low, high = clustered_mean([[r["length"] for r in g if keep is None or r["correct"] == keep]
                                              for g in groups])
            out.update({f"eval/{name}{suffix}": mean, f"eval/{name}_low{suffix}": low,
                        f"eval/{name}_high{suffix}": high})
        out[f"eval/truncation{suffix}"] = sum(r["truncated"] for r in rs) / len(rs)
        return out

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
