"""Scoring an evaluation set with a reward model (or ensemble) and reporting the metrics of rshape.rm.metrics.

Used at training checkpoints, at the end of `train-rm` and by `rshape eval-rm`. The report is a JSON-able
dict; `print_report` prints it as tables.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from rshape.rm.data import PreferencePair, ScoredExample
from rshape.rm.metrics import best_of_n_curve, preference_metrics, regression_metrics
from rshape.rm.modeling import EnsembleRM, RewardModel, quiet_transformers, response_lengths

Scorer = RewardModel | EnsembleRM


def _score(scorer: Scorer, prompts: list[Any], responses: list[Any], batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(aggregated [N], member scores [K, N] or None)."""
    if isinstance(scorer, EnsembleRM):
        from rshape.rm.modeling import aggregate_members

        members = scorer.score_members(prompts, responses, batch_size)
        return aggregate_members(members, scorer.aggregate, scorer.k), members
    return scorer.score(prompts, responses, batch_size), None


def pair_inputs(pairs: Sequence[PreferencePair]) -> tuple[list[Any], list[Any]]:
    """(prompts, responses) of every response of a pair set: the P chosen, then the P rejected."""
    return [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs]


def pairs_report(pairs: Sequence[PreferencePair], scores: torch.Tensor, lengths: Sequence[int],
                 members: torch.Tensor | None = None) -> dict[str, Any]:
    """The pairwise metrics from scores [2P] (chosen then rejected), lengths [2P] and optional member scores [K, 2P]."""
    P = len(pairs)
    cats = [p.category for p in pairs]
    ties = [p.tie for p in pairs]
    out = preference_metrics(scores[:P], scores[P:], lengths[:P], lengths[P:], cats, ties)
    if members is not None:
        for k in range(members.shape[0]):
            m = preference_metrics(members[k, :P], members[k, P:], lengths[:P], lengths[P:], cats, ties)
            out[f"members/{k}/accuracy"] = m["accuracy"]
            out[f"members/{k}/calibration/ece"] = m["calibration/ece"]
        out["ensemble/disagreement"] = members.std(0, unbiased=False).mean().item()
    return out


def evaluate_pairs(scorer: Scorer, pairs: Sequence[PreferencePair], batch_size: int = 64) -> dict[str, Any]:
    """Pairwise accuracy (overall, per category), length bias, calibration; per member for an ensemble."""
    prompts, responses = pair_inputs(pairs)
    scores, members = _score(scorer, prompts, responses, batch_size)
    return pairs_report(pairs, scores, response_lengths(scorer.tokenizer, responses), members)


def evaluate_scored(scorer: Scorer, examples: Sequence[ScoredExample], names: Sequence[str],
                    batch_size: int = 64) -> dict[str, Any]:
    """Regression heads: MSE and Pearson per attribute, length bias of the scalar reward."""
    prompts = [e.prompt for e in examples]
    responses = [e.response for e in examples]
    models = scorer.members if isinstance(scorer, EnsembleRM) else [scorer]
    atts = torch.stack([m.score_attributes(prompts, responses, batch_size) for m in models])  # [K, N, A]
    pred = atts.mean(0)
    target = torch.tensor([[float("nan") if r is None else r for r in e.ratings] for e in examples], dtype=torch.float32)
    scalar, members = _score(scorer, prompts, responses, batch_size)
    out: dict[str, Any] = regression_metrics(pred, target, names, response_lengths(scorer.tokenizer, responses), scalar)
    out["examples"] = len(examples)
    if members is not None:
        out["ensemble/disagreement"] = members.std(0, unbiased=False).mean().item()
    return out


def reward_stats(scorer: Scorer, examples: Sequence[PreferencePair] | Sequence[ScoredExample],
                 batch_size: int = 64) -> tuple[float, float]:
    """Mean and (population) std of the reward over every response of the set (saved beside the export)."""
    prompts, responses = [], []
    for e in examples:
        if isinstance(e, PreferencePair):
            prompts += [e.prompt, e.prompt]
            responses += [e.chosen, e.rejected]
        else:
            prompts.append(e.prompt)
            responses.append(e.response)
    s, _ = _score(scorer, prompts, responses, batch_size)
    return s.double().mean().item(), s.double().std(unbiased=False).item()


def best_of_n(scorer: Scorer, policy: str = "builtin:tiny-addition", n: int = 16, prompts: int = 100,
              difficulties: Sequence[int] = (1, 2, 3, 4), max_new_tokens: int = 128, temperature: float = 1.0,
              seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 64, prompts_per_batch: int = 16
              ) -> dict[str, Any]:
    """N samples per held-out addition prompt from `policy`, picked by the RM; verifier accuracy against n ≤ N.

    Sampling: rshape.rl.rollout.rollout with keys rshape.rl.sampling.sample_keys(seed, 0, prompt id, sample index),
    so the samples are the same whichever RM picks among them.
    """
    from transformers import AutoModelForCausalLM

    from rshape.batch import verify
    from rshape.models import load_tokenizer, resolve_model_path
    from rshape.rl.rollout import rollout
    from rshape.rl.sampling import sample_keys
    from rshape.tasks.arithmetic import addition_task

    device = torch.device(device)
    t0 = time.perf_counter()
    path = resolve_model_path(policy)
    tok = load_tokenizer(policy)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    task = addition_task(list(difficulties), train_per_difficulty=1,
                         eval_per_difficulty=math.ceil(prompts / len(difficulties)), seed=seed)
    problems = task.eval
    rewards, correct, lengths = [], [], []
    for i in range(0, len(problems), prompts_per_batch):
        chunk = problems[i: i + prompts_per_batch]
        keys = sample_keys(seed, 0, [p.id for p in chunk for _ in range(n)], [g for _ in chunk for g in range(n)])
        ro = rollout(model, tok, chunk, group_size=n, max_new_tokens=max_new_tokens, keys=keys,
                     temperature=temperature, device=device)
        correct.append(ro.grouped(verify(ro, task)))
        s, _ = _score(scorer, [p.prompt for p in ro.problems], ro.completions, batch_size)
        rewards.append(s.view(-1, n))
        lengths.append(ro.lengths.float().view(-1, n))
    R, C, L = torch.cat(rewards), torch.cat(correct), torch.cat(lengths)
    out: dict[str, Any] = {"policy": policy, "n": n, "prompts": len(problems), "temperature": temperature,
                           "curve": best_of_n_curve(R, C)}
    picks = R.argmax(1)
    out["picked_length_mean"] = L[torch.arange(len(problems)), picks].mean().item()
    out["sample_length_mean"] = L.mean().item()
    diffs = torch.tensor([p.difficulty for p in problems])
    out["by_difficulty"] = {int(d): best_of_n_curve(R[diffs == d], C[diffs == d], [1, n]) for d in sorted(set(diffs.tolist()))}
    out["time_s"] = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------- printing


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def print_report(report: dict[str, Any], console: Any) -> None:
    """The eval report as tables: accuracy per category, length bias, calibration, best-of-N."""
    from rich.table import Table

    ev = report.get("eval", {})
    title = f"reward model {report.get('model', '')} — held-out {report.get('data', '')}"
    if "accuracy" in ev:
        t = Table(title=title)
        for col in ("split", "pairs", "accuracy"):
            t.add_column(col, justify="right")
        t.add_row("all", str(ev.get("pairs")), _f(ev.get("accuracy")))
        for k in sorted(ev):
            if k.startswith("accuracy/"):
                cat = k.split("/", 1)[1]
                t.add_row(cat, str(ev.get(f"pairs/{cat}")), _f(ev[k]))
        t.add_row("chosen shorter", str(ev.get("length/pairs_chosen_shorter")), _f(ev.get("length/accuracy_chosen_shorter")))
        t.add_row("chosen longer", str(ev.get("length/pairs_chosen_longer")), _f(ev.get("length/accuracy_chosen_longer")))
        for k in sorted(ev):
            if k.startswith("members/") and k.endswith("/accuracy"):
                t.add_row(f"member {k.split('/')[1]}", str(ev.get("pairs")), _f(ev[k]))
        console.print(t)
        console.print(f"length bias: pearson(reward, length) {_f(ev.get('length/pearson'))}, spearman "
                      f"{_f(ev.get('length/spearman'))}; calibration ECE {_f(ev.get('calibration/ece'))}; "
                      f"mean margin {_f(ev.get('margin_mean'))}"
                      + (f"; ties {ev['ties']}: mean |Δr| {_f(ev.get('ties/mean_abs_diff'))}" if ev.get("ties") else "")
                      + (f"; member disagreement {_f(ev['ensemble/disagreement'])}" if "ensemble/disagreement" in ev else ""))
    elif ev:
        t = Table(title=title)
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in ev.items():
            t.add_row(k, _f(v))
        console.print(t)
    bon = report.get("best_of_n")
    if bon:
        t = Table(title=f"best-of-N with {bon['policy']} ({bon['prompts']} held-out prompts, T={bon['temperature']})")
        for col in ("n", "RM pick accuracy", "random pick", "oracle (pass@n)"):
            t.add_column(col, justify="right")
        for row in bon["curve"]:
            t.add_row(str(row["n"]), _f(row["accuracy"]), _f(row["mean"]), _f(row["oracle"]))
        console.print(t)
        console.print(f"mean length: picked {_f(bon['picked_length_mean'], 1)} vs all samples "
                      f"{_f(bon['sample_length_mean'], 1)} tokens")
