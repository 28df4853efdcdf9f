"""The built-in warm-started policy: a tiny Llama taught the addition world's trace mixture by SFT.

`build_warmstart` random-initialises a ~0.66M-parameter Llama over the character tokenizer and
fine-tunes it on freshly sampled train-split problems (1-4 digits), drawing each example's trace
mode from a mixture (see `rshape.tasks.arithmetic.make_trace`). The mixture is chosen so that the
resulting policy gives every reward something to shape:

- greedy decoding produces the redundant `overthink` trace (accurate, but a length reward can
  remove the repeated steps), while the shorter `full` trace is sampled often enough for RL to
  find it;
- `direct` answers (no steps) are sampled sometimes and are much less accurate on 3-4 digits than
  on 1-2 digits;
- `malformed` outputs appear at a small rate, so a format reward has work to do.

`measure_policy` measures these properties on the eval split. Run
`python -m rshape.tasks.warmstart --out DIR` to build a checkpoint and print the table; the
shipped one lives in `rshape/assets/tiny-addition/`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from rshape.runs import publish_dir
from rshape.tasks.arithmetic import (
    GRADED_TRACE_MODES,
    PARTIAL_FULL_COLUMNS,
    TRACE_MODES,
    addition_task,
    column_steps,
    make_prompt,
    make_trace,
    sample_pairs,
)
from rshape.tasks.base import Task
from rshape.tasks.tokenizer import build_char_tokenizer
from rshape.tasks.worlds import (
    DEFAULT_DIFFICULTIES,
    DEFAULT_DIFFICULTY_WEIGHTS,
    DEFAULT_MODE_MIX,
    WORLDS,
)

_STRUCTURE_RE = re.compile(r"^<think>.*</think><answer>.*</answer>$", re.DOTALL)


def tiny_llama_config(vocab_size: int, **overrides: Any) -> LlamaConfig:
    """A ~0.66M-parameter Llama: hidden 128, 4 layers, 4 heads, MLP 256, context 256, tied embeddings.

    `overrides` replace any `LlamaConfig` field (e.g. `num_hidden_layers=4`).
    """
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


_FULL_STEP_RE = re.compile(r"^\d+\+\d+\+\d+=\d+$")
_SHORT_STEP_RE = re.compile(r"^\d+$")


def first_pass_steps(completion: str) -> list[str]:
    """The step lines of the reasoning's first pass (the `<think>` block up to `check:` or `</think>`)."""
    body = completion.removeprefix("<think>") if completion.startswith("<think>") else ""
    body = re.split(r"check:|</think>|<answer>", body, maxsplit=1)[0]
    return [line for line in body.split("\n") if line.strip()]


def abbreviated_columns(completion: str) -> int:
    """How many first-pass steps are abbreviated (a bare column sum such as `13`)."""
    return sum(bool(_SHORT_STEP_RE.match(x)) for x in first_pass_steps(completion))


def classify_trace(completion: str) -> str:
    """The trace mode of a completion (text without EOS).

    Contains `check:` → overthink; starts with `<think></think>` → direct; otherwise not exactly
    `<think>…</think><answer>…</answer>` → malformed; otherwise full. In the graded world, steps that are
    all abbreviated make full / overthink `short` / `overthink_short`; exactly the first two written out and the
    rest (at least one) abbreviated `partial` / `overthink_partial`; any other mixture `mixed` / `overthink_mixed`.
    """
    steps = first_pass_steps(completion)
    n_short = sum(bool(_SHORT_STEP_RE.match(x)) for x in steps)
    n_full = sum(bool(_FULL_STEP_RE.match(x)) for x in steps)
    is_short = [bool(_SHORT_STEP_RE.match(x)) for x in steps]
    partial = (len(steps) > PARTIAL_FULL_COLUMNS and n_full == PARTIAL_FULL_COLUMNS
               and not any(is_short[:PARTIAL_FULL_COLUMNS]) and all(is_short[PARTIAL_FULL_COLUMNS:]))
    kind = "" if n_short == 0 else "short" if n_full == 0 else "partial" if partial else "mixed"
    if "check:" in completion:
        return f"overthink_{kind}" if kind else "overthink"
    if completion.startswith("<think></think>"):
        return "direct"
    if not _STRUCTURE_RE.match(completion):
        return "malformed"
    return kind or "full"


# ----------------------------------------------------------------------------------------------
# SFT data


def _normalise_mix(mode_mix: dict[str, float]) -> dict[str, float]:
    """One trace mixture scaled to sum to 1."""
    unknown = set(mode_mix) - set(GRADED_TRACE_MODES)
    if unknown:
        raise ValueError(f"unknown trace modes {sorted(unknown)}; valid: {', '.join(GRADED_TRACE_MODES)}")
    total = sum(mode_mix.values())
    if total <= 0 or any(w < 0 for w in mode_mix.values()):
        raise ValueError(f"mode_mix weights must be non-negative with a positive sum: {mode_mix}")
    return {m: w / total for m, w in mode_mix.items()}


def normalise_mixes(mode_mix: dict, difficulties: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """The trace mixture of each difficulty: `mode_mix` is one mixture for all ({mode: weight}) or one per
    difficulty ({difficulty: {mode: weight}}, keys may be strings as in JSON)."""
    if mode_mix and all(isinstance(v, dict) for v in mode_mix.values()):
        per = {int(d): m for d, m in mode_mix.items()}
        missing = [d for d in difficulties if d not in per]
        if missing:
            raise ValueError(f"mode_mix has no mixture for difficulties {missing}")
        return {d: _normalise_mix(per[d]) for d in difficulties}
    mix = _normalise_mix(mode_mix)
    return {d: mix for d in difficulties}


def _train_pools(difficulties, n_per_difficulty: int, seed: int, eval_fraction: float):
    """Train-split operand pairs per difficulty (the whole split when it is smaller than asked)."""
    return {d: sample_pairs(d, n_per_difficulty, "train", seed, eval_fraction) for d in difficulties}


def _sft_examples(pools, difficulties, difficulty_weights, mixes, batch_size, rng: random.Random,
                  tokenizer) -> dict[int, list[tuple[list[int], list[int]]]]:
    """One batch of (input ids, labels) grouped by difficulty; labels are -100 except on the
    completion + EOS. `mixes` is each difficulty's trace mixture (`normalise_mixes`)."""
    groups: dict[int, list[tuple[list[int], list[int]]]] = {}
    for d in rng.choices(difficulties, difficulty_weights, k=batch_size):
        a, b = rng.choice(pools[d])
        mode = rng.choices(list(mixes[d]), list(mixes[d].values()))[0]
        prompt_ids = tokenizer(make_prompt(a, b), add_special_tokens=False)["input_ids"]
        comp_ids = tokenizer(make_trace(a, b, mode, rng), add_special_tokens=False)["input_ids"]
        comp_ids = comp_ids + [tokenizer.eos_token_id]
        groups.setdefault(d, []).append((prompt_ids + comp_ids, [-100] * len(prompt_ids) + comp_ids))
    return groups


def _right_pad(examples, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s, _ in examples], dtype=torch.long, device=device)
    lab = torch.tensor([s + [-100] * (width - len(s)) for _, s in examples], dtype=torch.long, device=device)
    return ids, lab


def _sft_step_loss(model, groups, pad_id: int, device) -> float:
    """Backpropagate the mean completion-token loss of a batch, one forward per difficulty.

    Splitting the batch by difficulty (sequence length) saves padding; summing token losses and
    dividing by the batch's token count keeps the gradient that of the whole mixed batch. Right
    padding under causal attention: real tokens never see the pads, so no mask is needed.
    """
    n_tokens = sum(sum(t != -100 for t in lab[1:]) for g in groups.values() for _, lab in g)
    total = 0.0
    for d in sorted(groups):
        ids, labels = _right_pad(groups[d], pad_id, device)
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
            ignore_index=-100, reduction="sum") / n_tokens
        loss.backward()
        total += loss.item()
    return total


# ----------------------------------------------------------------------------------------------
# Measurement


@torch.no_grad()
def _generate(model, tokenizer, prompts: list[str], *, do_sample: bool, max_new_tokens: int,
              batch_size: int, device) -> list[tuple[str, int]]:
    """(completion text without EOS, completion length in tokens without EOS) per prompt."""
    tokenizer.padding_side = "left"
    out: list[tuple[str, int]] = []
    eos = tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=1.0 if do_sample else None,
            top_k=0 if do_sample else None,
            top_p=1.0 if do_sample else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            n = row.index(eos) if eos in row else len(row)
            out.append((tokenizer.decode(row[:n], skip_special_tokens=True), n))
    return out


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _summarise_samples(records, modes: tuple[str, ...] = TRACE_MODES) -> dict[str, dict[str, float]]:
    """Per trace mode: fraction of samples, accuracy within the mode, mean tokens, count."""
    total = len(records)
    stats = {}
    for mode in modes:
        rs = [r for r in records if r["mode"] == mode]
        stats[mode] = {
            "fraction": len(rs) / total if total else float("nan"),
            "accuracy": _mean(r["correct"] for r in rs),
            "mean_tokens": _mean(r["tokens"] for r in rs),
            "n": len(rs),
        }
    return stats


def _summarise_greedy(records, modes: tuple[str, ...] = TRACE_MODES) -> dict[str, Any]:
    return {
        "accuracy": _mean(r["correct"] for r in records),
        "mean_tokens": _mean(r["tokens"] for r in records),
        "n": len(records),
        "modes": {m: _mean(r["mode"] == m for r in records) for m in modes},
    }


def forced_prefix(problem, level: str) -> str:
    """The completion prefix that commits the policy to a level: `full` (`<think>` and the first column's digit
    of a, e.g. `<think>8+` on 58+67: a written first step) or `direct` (`<think></think>`)."""
    if level == "direct":
        return "<think></think>"
    if level == "full":
        return "<think>" + column_steps(problem.meta["a"], problem.meta["b"])[0].split("+", 1)[0] + "+"
    raise ValueError(f"unknown forced level {level!r}; valid: full, direct")


def _records(task: Task, probs, outputs, prefixes=None, tokenizer=None) -> list[dict[str, Any]]:
    """Verdict, tokens, trace kind and re-check flag per completion; a forced prefix counts as completion."""
    recs = []
    for i, ((text, n), p) in enumerate(zip(outputs, probs, strict=True)):
        pre = prefixes[i] if prefixes else ""
        if pre:
            text, n = pre + text, n + len(tokenizer(pre, add_special_tokens=False)["input_ids"])
        recs.append({"correct": float(task.verify(text, p)), "tokens": n, "mode": classify_trace(text),
                     "check": "check:" in text, "abbreviated": abbreviated_columns(text)})
    return recs


def measure_policy(
    model,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    samples_per_prompt: int = 8,
    min_samples_per_difficulty: int = 400,
    max_new_tokens: int = 128,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    modes: tuple[str, ...] = TRACE_MODES,
    forced_levels: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Greedy and sampled behaviour of a policy on `task.eval`, per difficulty.

    Returns `{"greedy": {d: {accuracy, mean_tokens, n, modes: {mode: fraction}}},
    "sampled": {d: {mode: {fraction, accuracy, mean_tokens, n}}}, "forced": {level: {d: {accuracy,
    mean_tokens, check, n}}}, "settings": {...}}` where `d` is the difficulty as a string, plus `"all"`
    pooling every difficulty. Tokens are completion tokens without the EOS. Each prompt is sampled
    `samples_per_prompt` times, or more when a difficulty has few eval prompts, so each difficulty gets
    at least `min_samples_per_difficulty` samples. Sampling is at temperature 1 with no top-k/top-p and
    is seeded (the global torch RNG state is restored afterwards). `forced_levels` (`w1`, `w2`, `w3`,
    `direct`): greedy completions after `forced_prefix` — the accuracy and tokens of each compression
    level, the achievable front (`check` = the fraction that still re-checks).
    """
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    groups: dict[str, list] = {}
    for p in task.eval:
        groups.setdefault(str(p.difficulty) if p.difficulty is not None else "none", []).append(p)
    greedy: dict[str, Any] = {}
    sampled: dict[str, Any] = {}
    by_abbrev: dict[str, Any] = {}
    forced: dict[str, dict[str, Any]] = {lvl: {} for lvl in forced_levels}
    forced_all: dict[str, list] = {lvl: [] for lvl in forced_levels}
    all_g, all_s = [], []
    gen = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, device=device)
    fork_devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        for key in sorted(groups, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0)):
            probs = groups[key]
            g = _generate(model, tokenizer, [p.prompt for p in probs], do_sample=False, **gen)
            g_rec = _records(task, probs, g)
            k = max(samples_per_prompt, math.ceil(min_samples_per_difficulty / len(probs)))
            s_probs = [p for p in probs for _ in range(k)]
            s_rec = _records(task, s_probs, _generate(model, tokenizer, [p.prompt for p in s_probs], do_sample=True,
                                                      **gen))
            for lvl in forced_levels:
                pre = [forced_prefix(p, lvl) for p in probs]
                f = _generate(model, tokenizer, [p.prompt + x for p, x in zip(probs, pre)], do_sample=False, **gen)
                f_rec = _records(task, probs, f, pre, tokenizer)
                forced[lvl][key] = _summarise_forced(f_rec)
                forced_all[lvl] += f_rec
            greedy[key] = _summarise_greedy(g_rec, modes)
            sampled[key] = _summarise_samples(s_rec, modes)
            by_abbrev[key] = _summarise_abbreviated(s_rec)
            all_g += g_rec
            all_s += s_rec
    greedy["all"] = _summarise_greedy(all_g, modes)
    sampled["all"] = _summarise_samples(all_s, modes)
    for lvl in forced_levels:
        forced[lvl]["all"] = _summarise_forced(forced_all[lvl])
    # accuracy averaged over difficulties (each bucket weighs the same, unlike the pooled "all")
    greedy["all"]["accuracy_mean_over_difficulties"] = _mean(
        v["accuracy"] for k, v in greedy.items() if k != "all")
    model.train(was_training)
    out = {
        "greedy": greedy,
        "sampled": sampled,
        "settings": {"samples_per_prompt": samples_per_prompt,
                     "min_samples_per_difficulty": min_samples_per_difficulty, "max_new_tokens": max_new_tokens,
                     "seed": seed, "temperature": 1.0, "n_eval_prompts": len(task.eval)},
    }
    if forced_levels:
        out["forced"] = forced
    if any(r["abbreviated"] for r in all_s):
        by_abbrev["all"] = _summarise_abbreviated(all_s)
        out["sampled_by_abbreviated"] = by_abbrev
    return out


def _summarise_abbreviated(records) -> dict[str, dict[str, float]]:
    """Sampled completions with a step-by-step first pass, by how many of its steps are abbreviated."""
    out: dict[str, dict[str, float]] = {}
    for k in sorted({r["abbreviated"] for r in records}):
        rs = [r for r in records if r["abbreviated"] == k and r["mode"] not in ("direct", "malformed")]
        if rs:
            out[str(k)] = {"accuracy": _mean(r["correct"] for r in rs), "mean_tokens": _mean(r["tokens"] for r in rs),
                           "n": len(rs)}
    return out


def _summarise_forced(records) -> dict[str, float]:
    return {"accuracy": _mean(r["correct"] for r in records), "mean_tokens": _mean(r["tokens"] for r in records),
            "check": _mean(r["check"] for r in records), "n": len(records)}


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.0f}%" if pct else f"{x:.1f}"


def format_table(stats: dict[str, Any]) -> str:
    """A markdown table: per difficulty, greedy accuracy/tokens/mode, then per mode sampled stats."""
    modes = list(next(iter(stats["sampled"].values())))
    head = ["difficulty", "greedy acc", "greedy tok", "greedy mode"]
    for m in modes:
        head += [f"{m} frac", f"{m} acc", f"{m} tok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, g in stats["greedy"].items():
        s = stats["sampled"][key]
        top = max(g["modes"], key=lambda m: g["modes"][m])
        row = [key, _fmt(g["accuracy"]), _fmt(g["mean_tokens"], False), f"{top} {_fmt(g['modes'][top])}"]
        for m in modes:
            row += [_fmt(s[m]["fraction"]), _fmt(s[m]["accuracy"]), _fmt(s[m]["mean_tokens"], False)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_front(stats: dict[str, Any]) -> str:
    """A markdown table of the achievable front: per forced compression level and difficulty, accuracy and
    mean tokens (greedy after the level's prefix), beside the unforced greedy policy."""
    keys = list(stats["greedy"])
    head = ["level"] + [f"{k} digits" if k.isdigit() else k for k in keys]
    lines = ["accuracy / mean tokens per difficulty (greedy; forced levels start with the level's prefix)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [("policy (unforced)", stats["greedy"])] + [(f"forced {lvl}", v) for lvl, v in stats.get("forced", {}).items()]
    for name, per in rows:
        lines.append("| " + " | ".join([name] + [f"{_fmt(per[k]['accuracy'])} / {_fmt(per[k]['mean_tokens'], False)}"
                                                  for k in keys]) + " |")
    return "\n".join(lines)


def format_abbreviated(stats: dict[str, Any]) -> str:
    """A markdown table: sampled accuracy / mean tokens (n) by number of abbreviated steps, per difficulty."""
    per = stats.get("sampled_by_abbreviated", {})
    keys = list(per)
    ks = sorted({int(k) for v in per.values() for k in v})
    lines = ["| abbreviated steps | " + " | ".join(f"{k} digits" if k.isdigit() else k for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for k in ks:
        cells = [f"{_fmt(per[d][str(k)]['accuracy'])} / {_fmt(per[d][str(k)]['mean_tokens'], False)} "
                 f"({per[d][str(k)]['n']})" if str(k) in per[d] else "-" for d in keys]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_kinds(stats: dict[str, Any]) -> str:
    """A long markdown table of sampled completions: per difficulty and trace kind, share / accuracy / tokens."""
    lines = ["| digits | kind | share | accuracy | mean tokens | n |", "|---|---|---|---|---|---|"]
    for key, per in stats["sampled"].items():
        for m, v in per.items():
            if v["n"]:
                lines.append(f"| {key} | {m} | {_fmt(v['fraction'])} | {_fmt(v['accuracy'])} | "
                             f"{_fmt(v['mean_tokens'], False)} | {v['n']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Build


def build_warmstart(
    out_dir: str | Path,
    seed: int = 0,
    steps: int = 900,
    batch_size: int = 32,
    lr: float = 3e-3,
    mode_mix: dict | None = None,
    device: str | torch.device = "cpu",
    *,
    difficulties: tuple[int, ...] | list[int] = DEFAULT_DIFFICULTIES,
    difficulty_weights: tuple[float, ...] | list[float] | None = None,
    config_overrides: dict[str, Any] | None = None,
    warmup_steps: int = 30,
    weight_decay: float = 0.01,
    eval_fraction: float = 0.2,
    measure: bool = True,
    eval_per_difficulty: int = 50,
    samples_per_prompt: int = 8,
    min_samples_per_difficulty: int = 400,
    log_every: int = 100,
    verbose: bool = True,
    world: str = "addition",
) -> dict[str, Any]:
    """Random-init the tiny Llama, SFT it on the trace mixture, save it to `out_dir`.

    `world` (`addition` | `graded`, see `WORLDS`) names the build in `warmstart.json` and sets what is
    measured: the graded world's eight trace kinds and its forced compression levels (the front).

    Problems are drawn fresh each step from the train split of `difficulties`, weighted by
    `difficulty_weights` (None: `DEFAULT_DIFFICULTY_WEIGHTS` for the default difficulties, else
    uniform), each with a trace mode drawn from `mode_mix` (one mixture, or one per difficulty; None:
    `DEFAULT_MODE_MIX`); the loss is on the completion (trace + EOS) only. Writes the model, the tokenizer and
    `warmstart.json` (build parameters, training time, final loss and, if `measure`, the
    `measure_policy` stats on the eval split of `addition_task(difficulties,
    eval_per_difficulty=...)`). Deterministic for a given seed, device and torch thread count.
    Returns the `warmstart.json` content.
    """
    t0 = time.time()
    difficulties = tuple(difficulties)
    mixes = normalise_mixes(dict(mode_mix) if mode_mix is not None else DEFAULT_MODE_MIX, difficulties)
    if difficulty_weights is None:
        difficulty_weights = (DEFAULT_DIFFICULTY_WEIGHTS if difficulties == DEFAULT_DIFFICULTIES
                              else (1.0,) * len(difficulties))
    difficulty_weights = tuple(float(w) for w in difficulty_weights)
    if len(difficulty_weights) != len(difficulties):
        raise ValueError("difficulty_weights must have one weight per difficulty")
    out_dir = Path(out_dir)

    tokenizer = build_char_tokenizer()
    torch.manual_seed(seed)
    config = tiny_llama_config(len(tokenizer), **(config_overrides or {}))
    model = LlamaForCausalLM(config).to(device)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    n_params = sum(p.numel() for p in model.parameters())

    rng = random.Random(f"warmstart-{seed}")
    pools = _train_pools(difficulties, steps * batch_size + 1, seed, eval_fraction)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    losses: list[float] = []
    for step in range(steps):
        groups = _sft_examples(pools, difficulties, difficulty_weights, mixes, batch_size, rng, tokenizer)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        losses.append(_sft_step_loss(model, groups, tokenizer.pad_token_id, device))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if verbose and log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            print(f"step {step + 1}/{steps}  loss {_mean(losses[-log_every:]):.4f}  "
                  f"({time.time() - t0:.0f}s)", flush=True)
    train_seconds = time.time() - t0
    model.eval()

    info: dict[str, Any] = {
        "kind": f"rshape tiny-{world} warm start",
        "params": {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
                   "mode_mix": (next(iter(mixes.values())) if len({json.dumps(m) for m in mixes.values()}) == 1
                                else {str(d): m for d, m in mixes.items()}),
                   "difficulties": list(difficulties),
                   "difficulty_weights": list(difficulty_weights),
                   "config_overrides": dict(config_overrides or {}), "warmup_steps": warmup_steps,
                   "weight_decay": weight_decay, "eval_fraction": eval_fraction},
        "n_parameters": n_params,
        "final_loss": _mean(losses[-50:]),
        "train_seconds": round(train_seconds, 1),
    }
    if measure:
        t1 = time.time()
        task = addition_task(difficulties, train_per_difficulty=0, eval_per_difficulty=eval_per_difficulty,
                             eval_fraction=eval_fraction)
        info["stats"] = measure_policy(model, tokenizer, task, samples_per_prompt=samples_per_prompt,
                                       min_samples_per_difficulty=min_samples_per_difficulty,
                                       seed=seed, device=device, **measure_options(world))
        info["measure_seconds"] = round(time.time() - t1, 1)

    # written aside, then swapped in: a running job that memory-maps the old weights is not corrupted
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "warmstart.json").write_text(json.dumps(info, indent=2) + "\n")
    publish_dir(tmp, out_dir)
    return info


def build_world(world: str, out_dir: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Build a built-in world's warm start with its own defaults (`WORLDS[world]`); `overrides` replace any
    `build_warmstart` argument."""
    w = WORLDS[world]
    kwargs: dict[str, Any] = dict(steps=w.steps, mode_mix=w.mode_mix, difficulties=w.difficulties,
                                  difficulty_weights=w.difficulty_weights, eval_per_difficulty=w.eval_per_difficulty,
                                  world=world)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return build_warmstart(out_dir or w.out_dir, **kwargs)


def measure_options(world: str) -> dict[str, Any]:
    if world == "graded":
        return {"modes": GRADED_TRACE_MODES, "forced_levels": ("full", "direct")}
    return {}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build a built-in warm-start policy and print its stats.")
    ap.add_argument("--world", choices=sorted(WORLDS), default="addition",
                    help="addition: builtin:tiny-addition; graded: builtin:tiny-graded (compressed traces)")
    ap.add_argument("--out", default=None, help="output directory (default: the world's shipped asset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="SFT steps (default: the world's)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--mode-mix", default=None,
                    help='JSON weights, e.g. \'{"overthink": 0.5, "full": 0.3, "direct": 0.12, "malformed": 0.08}\', '
                         'or one mixture per difficulty: \'{"2": {...}, "3": {...}}\'')
    ap.add_argument("--difficulty-weights", default=None, help="comma-separated weights, one per difficulty")
    ap.add_argument("--config", default=None, help='JSON LlamaConfig overrides, e.g. \'{"num_hidden_layers": 4}\'')
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or str(WORLDS[args.world].out_dir)
    info = build_world(args.world, out, seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       mode_mix=json.loads(args.mode_mix) if args.mode_mix else None, device=args.device,
                       difficulty_weights=[float(x) for x in args.difficulty_weights.split(",")]
                       if args.difficulty_weights else None,
                       config_overrides=json.loads(args.config) if args.config else None)
    print(f"\n{info['n_parameters']:,} parameters; trained in {info['train_seconds']}s, "
          f"measured in {info.get('measure_seconds')}s; saved to {out}\n")
    print(format_table(info["stats"]) if args.world == "addition" else
          "\n\n".join([format_front(info["stats"]), format_abbreviated(info["stats"]), format_kinds(info["stats"])]))


if __name__ == "__main__":
    main()
