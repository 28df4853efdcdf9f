"""Reward-model data: preference pairs and scored examples, read and checked before anything trains.

Pairs: (prompt, chosen, rejected, optional margin, optional category, optional tie flag). Scored: (prompt,
response, one rating or several attributes). Sources: JSONL (exact line numbers in errors), JSON (an array
of objects or an object of equal-length columns), anything `datasets` reads (.csv/.tsv/.parquet/.arrow, a
`save_to_disk` directory, `hf:NAME`), and the built-in tiny-world preference set. A bad record raises
DataError with one line naming the file and line (or row).

Chat-shaped data: a prompt may be a list of {role, content} messages; chosen/rejected may be assistant
messages or whole conversations (TRL's conversational format, with or without a separate prompt): the
shared prefix becomes the prompt. Rendering to model inputs is rshape.rm.modeling.render_example.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from rshape.rm.recipe import BUILTIN_PREFERENCES, RMDataConfig
from rshape.tasks import DataError
from rshape.tasks.arithmetic import column_steps, make_prompt, make_trace, sample_pairs
from rshape.tasks.base import Problem
from rshape.tasks.sources import read_records

Prompt = str | list[dict[str, str]]
Response = str | list[dict[str, str]]


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: `chosen` is preferred to `rejected` (or neither, when `tie`)."""

    prompt: Prompt
    chosen: Response
    rejected: Response
    margin: float | None = None
    category: str | None = None
    tie: bool = False
    where: str = ""  # file:line of the record, for messages


@dataclass(frozen=True)
class ScoredExample:
    """One rated response: ratings[a] is attribute a's rating (None = not rated)."""

    prompt: Prompt
    response: Response
    ratings: tuple[float | None, ...]
    where: str = ""


# --------------------------------------------------------------------------- checking records


def _is_messages(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(m, dict) for m in x)


def _check_messages(x: list, where: str, key: str) -> list[dict[str, str]]:
    if not x:
        raise DataError(f"{where}: '{key}' is an empty list of messages")
    out = []
    for i, m in enumerate(x):
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: '{key}' message {i + 1} needs string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["content"].strip() for m in out):
        raise DataError(f"{where}: '{key}' has only empty messages")
    return out


def _text_or_messages(row: dict, key: str, where: str, required: bool = True) -> str | list[dict[str, str]] | None:
    if key not in row or row[key] is None:
        if required:
            raise DataError(f"{where}: missing '{key}'")
        return None
    v = row[key]
    if isinstance(v, str):
        if not v.strip():
            raise DataError(f"{where}: '{key}' is an empty string")
        return v
    if _is_messages(v):
        return _check_messages(v, where, key)
    raise DataError(f"{where}: '{key}' must be a string or a list of chat messages, got {type(v).__name__}")


def _number(v: Any, where: str, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, str):
            try:
                f = float(v)
            except ValueError:
                raise DataError(f"{where}: '{key}' must be a number, got {v!r}") from None
        else:
            raise DataError(f"{where}: '{key}' must be a number, got {v!r}")
    else:
        f = float(v)
    if not math.isfinite(f):
        raise DataError(f"{where}: '{key}' must be a finite number, got {v!r}")
    return f


def _split_conversation(prompt: Prompt | None, response: Response, where: str, key: str) -> tuple[Prompt | None, Response]:
    """A whole conversation (prompt turns + final assistant turn) → (prompt messages, the assistant turn)."""
    if isinstance(response, str):
        return prompt, response
    if isinstance(prompt, list) and response[: len(prompt)] == prompt and len(response) > len(prompt):
        return prompt, response[len(prompt):]
    if prompt is None:
        if len(response) < 2 or response[-1]["role"] != "assistant":
            raise DataError(f"{where}: '{key}' without a prompt must be a conversation ending with an assistant turn")
        return response[:-1], response[-1:]
    return prompt, response


def pair_from_record(row: Any, where: str, cfg: RMDataConfig) -> PreferencePair:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in (cfg.chosen_key, cfg.rejected_key):
        if key not in row or row[key] is None:
            raise DataError(f"{where}: missing '{key}' (a preference pair needs '{cfg.chosen_key}' and '{cfg.rejected_key}')")
    prompt = _text_or_messages(row, cfg.prompt_key, where, required=False)
    chosen = _text_or_messages(row, cfg.chosen_key, where)
    rejected = _text_or_messages(row, cfg.rejected_key, where)
    p_c, chosen = _split_conversation(prompt, chosen, where, cfg.chosen_key)
    p_r, rejected = _split_conversation(prompt, rejected, where, cfg.rejected_key)
    if p_c != p_r:
        n_c = len(p_c) if isinstance(p_c, list) else 1
        n_r = len(p_r) if isinstance(p_r, list) else 1
        raise DataError(f"{where}: '{cfg.chosen_key}' and '{cfg.rejected_key}' have mismatched prompts "
                        f"({n_c} vs {n_r} messages before the response)")
    if p_c is None:
        raise DataError(f"{where}: missing '{cfg.prompt_key}'")
    margin = None
    if row.get(cfg.margin_key) is not None:
        margin = _number(row[cfg.margin_key], where, cfg.margin_key)
    tie = row.get(cfg.tie_key, False)
    if tie is None:
        tie = False
    if isinstance(tie, (int, float)) and not isinstance(tie, bool) and tie in (0, 1):
        tie = bool(tie)
    if not isinstance(tie, bool):
        raise DataError(f"{where}: '{cfg.tie_key}' must be true or false, got {tie!r}")
    category = row.get(cfg.category_key)
    if category is not None and not isinstance(category, (str, int)):
        raise DataError(f"{where}: '{cfg.category_key}' must be a string, got {category!r}")
    return PreferencePair(prompt=p_c, chosen=chosen, rejected=rejected, margin=margin,
                          category=None if category is None else str(category), tie=tie, where=where)


def scored_from_record(row: Any, where: str, cfg: RMDataConfig) -> ScoredExample:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    prompt = _text_or_messages(row, cfg.prompt_key, where, required=False)
    response = _text_or_messages(row, cfg.response_key, where)
    prompt, response = _split_conversation(prompt, response, where, cfg.response_key)
    if prompt is None:
        raise DataError(f"{where}: missing '{cfg.prompt_key}'")
    keys = cfg.rating_keys
    if len(keys) == 1 and isinstance(row.get(keys[0]), list):  # one column holding every attribute
        values = row[keys[0]]
        ratings: list[float | None] = [None if v is None else _number(v, where, keys[0]) for v in values]
        if not ratings:
            raise DataError(f"{where}: '{keys[0]}' is an empty list")
    else:
        ratings = []
        for key in keys:
            v = row.get(key)
            ratings.append(None if v is None else _number(v, where, key))
    if all(r is None for r in ratings):
        raise DataError(f"{where}: no rating: none of {', '.join(repr(k) for k in keys)} is present")
    return ScoredExample(prompt=prompt, response=response, ratings=tuple(ratings), where=where)


def read_pairs(source: str, cfg: RMDataConfig) -> list[PreferencePair]:
    out = [pair_from_record(row, where, cfg) for where, row in read_records(source, cfg.split)]
    if not out:
        raise DataError(f"{source}: no preference pairs in the file")
    return out


def read_scored(source: str, cfg: RMDataConfig, num_attributes: int) -> list[ScoredExample]:
    out = []
    for where, row in read_records(source, cfg.split):
        ex = scored_from_record(row, where, cfg)
        if len(ex.ratings) != num_attributes:
            raise DataError(f"{where}: {len(ex.ratings)} ratings for {num_attributes} attributes (mismatched lengths)")
        out.append(ex)
    if not out:
        raise DataError(f"{source}: no scored examples in the file")
    return out


# --------------------------------------------------------------------------- the built-in tiny-world preference set

# category → (weight, margin). chosen is always a correct, well-formed "full" trace.
TINY_CATEGORIES: dict[str, tuple[float, float | None]] = {
    "concise": (0.3, 0.5),        # full ✓  over  overthink ✓ (same answer, re-checked steps: chosen shorter)
    "correct": (0.3, 1.0),        # full ✓  over  full ✗ (one wrong column sum, or a wrong final answer)
    "correct_short": (0.15, 1.0),  # full ✓  over  direct ✗ (a guessed answer: chosen longer)
    "format": (0.15, 1.0),        # full ✓  over  malformed ✓ (missing or unclosed tags)
    "tie": (0.1, None),           # full ✗  vs   full ✗ (two different mistakes: neither is better)
}


def wrong_full_trace(a: int, b: int, rng: random.Random) -> str:
    """A well-formed trace with one mistake: a wrong column sum carried through, or a wrong final answer."""
    steps = column_steps(a, b)
    if rng.random() < 0.5:
        col = rng.randrange(len(steps))
        da, db = str(a)[::-1], str(b)[::-1]
        out, carry, digits = [], 0, []
        for i in range(len(steps)):
            x = int(da[i]) if i < len(da) else 0
            y = int(db[i]) if i < len(db) else 0
            s = x + y + carry
            if i == col:
                delta = rng.choice([d for d in (-2, -1, 1, 2) if s + d >= 0])
                s += delta
            out.append(f"{x}+{y}+{carry}={s}")
            digits.append(s % 10)
            carry = s // 10
        total = int((str(carry) if carry else "") + "".join(str(d) for d in reversed(digits)))
        if total == a + b:  # cannot happen with |delta| < 10, but keep the trace wrong whatever happens
            total += 1
        return "<think>" + "".join(s + "\n" for s in out) + f"</think><answer>{total}</answer>"
    return "<think>" + "".join(s + "\n" for s in steps) + f"</think><answer>{wrong_answer(a, b, rng)}</answer>"


def wrong_answer(a: int, b: int, rng: random.Random) -> int:
    """a + b plus a small nonzero error in one digit place (never negative)."""
    place = 10 ** rng.randrange(max(1, len(str(a + b))))
    delta = rng.choice([-2, -1, 1, 2]) * place
    return a + b + delta if a + b + delta >= 0 else a + b + abs(delta)


def tiny_pair(a: int, b: int, category: str, rng: random.Random) -> PreferencePair:
    prompt = make_prompt(a, b)
    full = make_trace(a, b, "full")
    margin = TINY_CATEGORIES[category][1]
    if category == "concise":
        chosen, rejected = full, make_trace(a, b, "overthink")
    elif category == "correct":
        chosen, rejected = full, wrong_full_trace(a, b, rng)
    elif category == "correct_short":
        chosen, rejected = full, f"<think></think><answer>{wrong_answer(a, b, rng)}</answer>"
    elif category == "format":
        chosen, rejected = full, make_trace(a, b, "malformed", rng)
    elif category == "tie":
        chosen = wrong_full_trace(a, b, rng)
        rejected = wrong_full_trace(a, b, rng)
        for _ in range(10):
            if rejected != chosen:
                break
            rejected = wrong_full_trace(a, b, rng)
    else:
        raise ValueError(f"unknown category {category!r}; valid: {', '.join(TINY_CATEGORIES)}")
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, margin=margin, category=category,
                          tie=category == "tie", where=f"{BUILTIN_PREFERENCES}:{a}+{b}")


def tiny_preferences(n: int, split: str, difficulties: list[int] | tuple[int, ...] = (1, 2, 3, 4), seed: int = 0,
                     ties: bool = True, eval_fraction: float = 0.2) -> list[PreferencePair]:
    """`n` pairs over addition problems of the given split ("train" or "eval" — disjoint prompts, as in `rl`).

    Categories (weights, margins in TINY_CATEGORIES): concise, correct, correct_short, format, and tie.
    """
    rng = random.Random(f"tiny-preferences-{seed}-{split}")
    per = math.ceil(n / len(difficulties))
    problems = [pq for d in difficulties for pq in sample_pairs(d, per, split, seed, eval_fraction)]
    rng.shuffle(problems)
    cats = [c for c in TINY_CATEGORIES if ties or c != "tie"]
    weights = [TINY_CATEGORIES[c][0] for c in cats]
    out = []
    for i in range(n):
        a, b = problems[i % len(problems)]
        out.append(tiny_pair(a, b, rng.choices(cats, weights)[0], rng))
    return out


def tiny_reference(problem: Problem) -> list[str]:
    """PAR's reference response for a tiny-world problem: the warm-start (SFT) policy's `full` trace.

    Use as `reference_fn: rshape.rm.data:tiny_reference` in an `rm` reward.
    """
    head = problem.prompt if isinstance(problem.prompt, str) else problem.prompt[-1]["content"]
    a, _, b = head.split("=")[0].partition("+")
    return [make_trace(int(a), int(b), "full")]


# --------------------------------------------------------------------------- what train-rm reads


@dataclass
class RMData:
    train: list[PreferencePair] | list[ScoredExample]
    eval: list[PreferencePair] | list[ScoredExample]
    description: dict[str, Any]


def load_rm_data(cfg: RMDataConfig, num_attributes: int = 1, seed: int = 0) -> RMData:
    """Every record of train and eval, checked (DataError on the first bad one) before anything trains."""
    if cfg.train == BUILTIN_PREFERENCES:
        train = tiny_preferences(cfg.train_size, "train", cfg.difficulties, seed, cfg.ties)
        evals = tiny_preferences(cfg.eval_size, "eval", cfg.difficulties, seed, cfg.ties)
        return RMData(train, evals, {"source": BUILTIN_PREFERENCES, "train_size": len(train), "eval_size": len(evals),
                                     "difficulties": list(cfg.difficulties), "ties": cfg.ties, "seed": seed})

    def read(source: str) -> list:
        return read_pairs(source, cfg) if cfg.format == "pairs" else read_scored(source, cfg, num_attributes)

    train = read(cfg.train)
    if cfg.eval:
        evals = read(cfg.eval)
    else:
        order = list(range(len(train)))
        random.Random(f"rm-eval-split-{seed}").shuffle(order)
        n_eval = max(1, round(cfg.eval_fraction * len(train)))
        if len(train) - n_eval < 1:
            raise DataError(f"{cfg.train}: {len(train)} records are too few to hold out an eval split; give data.eval")
        held = set(order[:n_eval])
        evals = [train[i] for i in sorted(held)]
        train = [x for i, x in enumerate(train) if i not in held]
    return RMData(train, evals, {"source": cfg.train, "eval": cfg.eval, "train_size": len(train), "eval_size": len(evals),
                                 "eval_fraction": None if cfg.eval else cfg.eval_fraction, "seed": seed})
