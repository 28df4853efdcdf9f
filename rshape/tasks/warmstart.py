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
from rshape.tasks.arithmetic import TRACE_MODES, addition_task, make_prompt, make_trace, sample_pairs
from rshape.tasks.base import Task
from rshape.tasks.tokenizer import build_char_tokenizer

DEFAULT_MODE_MIX: dict[str, float] = {"overthink": 0.55, "full": 0.27, "direct": 0.11, "malformed": 0.07}
DEFAULT_DIFFICULTIES = (1, 2, 3, 4)
# 1-digit problems are cheap and the only ones where a direct answer can be learnt (by heart)
DEFAULT_DIFFICULTY_WEIGHTS = (2.0, 1.5, 2.0, 2.5)
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-addition"

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


def classify_trace(completion: str) -> str:
    """The trace mode of a completion (text without EOS).

    Contains `check:` → overthink; starts with `<think></think>` → direct; otherwise not exactly
    `<think>…</think><answer>…</answer>` → malformed; otherwise full.
    """
    if "check:" in completion:
        return "overthink"
    if completion.startswith("<think></think>"):
        return "direct"
    if not _STRUCTURE_RE.match(completion):
        return "malformed"
    return "full"


# ----------------------------------------------------------------------------------------------
# SFT data


def _normalise_mix(mode_mix: dict[str, float]) -> dict[str, float]:
    unknown = set(mode_mix) - set(TRACE_MODES)
    if unknown:
        raise ValueError(f"unknown trace modes {sorted(unknown)}; valid: {', '.join(TRACE_MODES)}")
    total = sum(mode_mix.values())
    if total <= 0 or any(w < 0 for w in mode_mix.values()):
        raise ValueError(f"mode_mix weights must be non-negative with a positive sum: {mode_mix}")
    return {m: w / total for m, w in mode_mix.items()}


def _train_pools(difficulties, n_per_difficulty: int, seed: int, eval_fraction: float):
    """Train-split operand pairs per difficulty (the whole split when it is smaller than asked)."""
    return {d: sample_pairs(d, n_per_difficulty, "train", seed, eval_fraction) for d in difficulties}


def _sft_examples(pools, difficulties, difficulty_weights, mode_mix, batch_size, rng: random.Random,
                  tokenizer) -> dict[int, list[tuple[list[int], list[int]]]]:
    """One batch of (input ids, labels) grouped by difficulty; labels are -100 except on the
    completion + EOS."""
    modes, weights = zip(*mode_mix.items(), strict=True)
    groups: dict[int, list[tuple[list[int], list[int]]]] = {}
    for d in rng.choices(difficulties, difficulty_weights, k=batch_size):
        a, b = rng.choice(pools[d])
        mode = rng.choices(modes, weights)[0]
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


def _summarise_samples(records) -> dict[str, dict[str, float]]:
    """Per trace mode: fraction of samples, accuracy within the mode, mean tokens, count."""
    total = len(records)
    stats = {}
    for mode in TRACE_MODES:
        rs = [r for r in records if r["mode"] == mode]
        stats[mode] = {
            "fraction": len(rs) / total if total else float("nan"),
            "accuracy": _mean(r["correct"] for r in rs),
            "mean_tokens": _mean(r["tokens"] for r in rs),
            "n": len(rs),
        }
    return stats


def _summarise_greedy(records) -> dict[str, Any]:
    return {
        "accuracy": _mean(r["correct"] for r in records),
        "mean_tokens": _mean(r["tokens"] for r in records),
        "n": len(records),
        "modes": {m: _mean(r["mode"] == m for r in records) for m in TRACE_MODES},
    }


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
) -> dict[str, Any]:
    """Greedy and sampled behaviour of a policy on `task.eval`, per difficulty.

    Returns `{"greedy": {d: {accuracy, mean_tokens, n, modes: {mode: fraction}}},
    "sampled": {d: {mode: {fraction, accuracy, mean_tokens, n}}}, "settings": {...}}` where `d`
    is the difficulty as a string, plus `"all"` pooling every difficulty. Tokens are completion
    tokens without the EOS. Each prompt is sampled `samples_per_prompt` times, or more when a
    difficulty has few eval prompts, so each difficulty gets at least `min_samples_per_difficulty`
    samples. Sampling is at temperature 1 with no top-k/top-p and is seeded (the
    global torch RNG state is restored afterwards).
    """
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    groups: dict[str, list] = {}
    for p in task.eval:
        groups.setdefault(str(p.difficulty) if p.difficulty is not None else "none", []).append(p)
    greedy: dict[str, Any] = {}
    sampled: dict[str, Any] = {}
    all_g, all_s = [], []
    fork_devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        for key in sorted(groups, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0)):
            probs = groups[key]
            prompts = [p.prompt for p in probs]
            g = _generate(model, tokenizer, prompts, do_sample=False, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, device=device)
            g_rec = [{"correct": float(task.verify(text, p)), "tokens": n, "mode": classify_trace(text)}
                     for (text, n), p in zip(g, probs, strict=True)]
            k = max(samples_per_prompt, math.ceil(min_samples_per_difficulty / len(probs)))
            s_probs = [p for p in probs for _ in range(k)]
            s = _generate(model, tokenizer, [p.prompt for p in s_probs], do_sample=True,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, device=device)
            s_rec = [{"correct": float(task.verify(text, p)), "tokens": n, "mode": classify_trace(text)}
                     for (text, n), p in zip(s, s_probs, strict=True)]
            greedy[key] = _summarise_greedy(g_rec)
            sampled[key] = _summarise_samples(s_rec)
            all_g += g_rec
            all_s += s_rec
    greedy["all"] = _summarise_greedy(all_g)
    sampled["all"] = _summarise_samples(all_s)
    # accuracy averaged over difficulties (each bucket weighs the same, unlike the pooled "all")
    greedy["all"]["accuracy_mean_over_difficulties"] = _mean(
        v["accuracy"] for k, v in greedy.items() if k != "all")
    model.train(was_training)
    return {
        "greedy": greedy,
        "sampled": sampled,
        "settings": {"samples_per_prompt": samples_per_prompt,
                     "min_samples_per_difficulty": min_samples_per_difficulty, "max_new_tokens": max_new_tokens,
                     "seed": seed, "temperature": 1.0, "n_eval_prompts": len(task.eval)},
    }


def format_table(stats: dict[str, Any]) -> str:
    """A markdown table: per difficulty, greedy accuracy/tokens/mode, then per mode sampled stats."""
    head = ["difficulty", "greedy acc", "greedy tok", "greedy overthink"]
    for m in TRACE_MODES:
        head += [f"{m} frac", f"{m} acc", f"{m} tok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(x, pct=True):
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "-"
        return f"{100 * x:.0f}%" if pct else f"{x:.1f}"

    for key, g in stats["greedy"].items():
        s = stats["sampled"][key]
        row = [key, f(g["accuracy"]), f(g["mean_tokens"], False), f(g["modes"]["overthink"])]
        for m in TRACE_MODES:
            row += [f(s[m]["fraction"]), f(s[m]["accuracy"]), f(s[m]["mean_tokens"], False)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Build


def build_warmstart(
    out_dir: str | Path,
    seed: int = 0,
    steps: int = 900,
    batch_size: int = 32,
    lr: float = 3e-3,
    mode_mix: dict[str, float] | None = None,
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
) -> dict[str, Any]:
    """Random-init the tiny Llama, SFT it on the trace mixture, save it to `out_dir`.

    Problems are drawn fresh each step from the train split of `difficulties`, weighted by
    `difficulty_weights` (None: `DEFAULT_DIFFICULTY_WEIGHTS` for the default difficulties, else
    uniform), each with a trace mode drawn from `mode_mix` (None: `DEFAULT_MODE_MIX`); the loss
    is on the completion (trace + EOS) only. Writes the model, the tokenizer and
    `warmstart.json` (build parameters, training time, final loss and, if `measure`, the
    `measure_policy` stats on the eval split of `addition_task(difficulties,
    eval_per_difficulty=...)`). Deterministic for a given seed, device and torch thread count.
    Returns the `warmstart.json` content.
    """
    t0 = time.time()
    mix = _normalise_mix(dict(mode_mix) if mode_mix is not None else DEFAULT_MODE_MIX)
    difficulties = tuple(difficulties)
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
        groups = _sft_examples(pools, difficulties, difficulty_weights, mix, batch_size, rng, tokenizer)
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
        "kind": "rshape tiny-addition warm start",
        "params": {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
                   "mode_mix": mix, "difficulties": list(difficulties),
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
                                       seed=seed, device=device)
        info["measure_seconds"] = round(time.time() - t1, 1)

    # written aside, then swapped in: a running job that memory-maps the old weights is not corrupted
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "warmstart.json").write_text(json.dumps(info, indent=2) + "\n")
    publish_dir(tmp, out_dir)
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build the tiny-addition warm-start policy and print its stats.")
    ap.add_argument("--out", default=str(ASSET_DIR), help="output directory (default: the shipped asset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--mode-mix", default=None,
                    help='JSON weights, e.g. \'{"overthink": 0.5, "full": 0.3, "direct": 0.12, "malformed": 0.08}\'')
    ap.add_argument("--difficulty-weights", default=None, help="comma-separated weights, one per difficulty 1-4")
    ap.add_argument("--config", default=None, help='JSON LlamaConfig overrides, e.g. \'{"num_hidden_layers": 4}\'')
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = build_warmstart(args.out, seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           mode_mix=json.loads(args.mode_mix) if args.mode_mix else None, device=args.device,
                           difficulty_weights=[float(w) for w in args.difficulty_weights.split(",")]
                           if args.difficulty_weights else None,
                           config_overrides=json.loads(args.config) if args.config else None)
    print(f"\n{info['n_parameters']:,} parameters; trained in {info['train_seconds']}s, "
          f"measured in {info.get('measure_seconds')}s; saved to {args.out}\n")
    print(format_table(info["stats"]))


if __name__ == "__main__":
    main()
