"""The tiny reasoning world: multi-digit addition with step-by-step traces.

A problem is `a+b` with both operands of `d` digits (d is the difficulty). The prompt is
`"{a}+{b}=?\\n"`; a well-formed completion is

    <think>{steps}</think><answer>{a+b}</answer>

where each step adds one column from the least significant digit, carrying explicitly:
`"5+8+0=13\\n"` (digit of a, digit of b, carry in, column sum). The answer's digits are the last
digits of the column sums read backwards, led by the final carry.

The warm-start SFT data mixes four kinds of trace (see `make_trace`), so that a policy trained on
them has something for each reward to shape:
- `full`: the steps, then the answer;
- `overthink`: the steps, `check:\\n`, the same steps again (redundant tokens a length reward can
  remove without losing accuracy);
- `direct`: `<think></think>` and the answer with no steps (short, but unreliable for many digits,
  so dropping necessary steps costs accuracy on hard problems);
- `malformed`: a broken structure (missing tags), so a format reward has work to do.

The graded world (`builtin:tiny-graded`) adds abbreviated steps: a `short` step writes only the column sum
(`13` instead of `5+8+0=13`), so the two digits are looked up and added "in the head" in one token. `short`
traces abbreviate every column, `partial` ones all but the first two (so longer numbers have more
abbreviated columns), `mixed` ones each column at random; `overthink_*` repeat them after `check:`. Each
abbreviated column saves 6-7 tokens and risks an error, so a policy can trade accuracy for tokens column by
column, and longer numbers have more columns to lose.
"""

from __future__ import annotations

import hashlib
import random

from rshape.tasks.base import Problem, Task, extract_tagged_answer

TRACE_MODES = ("full", "overthink", "direct", "malformed")
# the graded world's trace kinds (full / overthink / direct / malformed as in TRACE_MODES)
GRADED_TRACE_MODES = ("full", "overthink", "partial", "overthink_partial", "mixed", "overthink_mixed", "short",
                      "overthink_short", "direct", "malformed")
PARTIAL_FULL_COLUMNS = 2  # a `partial` trace writes this many columns out, then abbreviates the rest


def column_steps(a: int, b: int) -> list[str]:
    """The column additions of a+b, least significant first: e.g. 58+67 → ['8+7+0=15', '5+6+1=12']."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    return steps


def short_step(step: str) -> str:
    """The abbreviated form of a column step: only its sum (`5+8+0=13` → `13`)."""
    return step.split("=", 1)[1]


def make_prompt(a: int, b: int) -> str:
    return f"{a}+{b}=?\n"


def make_trace(a: int, b: int, mode: str, rng: random.Random | None = None) -> str:
    """The completion text (without EOS) of one trace kind; see the module docstring. `rng` picks the malformed
    kind and the abbreviated columns of `mixed` traces (default: seeded by the problem)."""
    rng = rng or random.Random(a * 100003 + b)
    lines = column_steps(a, b)
    if mode.endswith("short"):
        lines = [short_step(x) for x in lines]
    elif mode.endswith("mixed"):
        lines = [short_step(x) if rng.random() < 0.5 else x for x in lines]
    elif mode.endswith("partial"):
        lines = [x if i < PARTIAL_FULL_COLUMNS else short_step(x) for i, x in enumerate(lines)]
    steps = "".join(s + "\n" for s in lines)
    answer = f"<answer>{a + b}</answer>"
    if mode in ("full", "partial", "mixed", "short"):
        return f"<think>{steps}</think>{answer}"
    if mode in ("overthink", "overthink_partial", "overthink_mixed", "overthink_short"):
        return f"<think>{steps}check:\n{steps}</think>{answer}"
    if mode == "direct":
        return f"<think></think>{answer}"
    if mode == "malformed":
        kind = rng.randrange(3)
        if kind == 0:  # answer without tags
            return f"<think>{steps}</think>{a + b}"
        if kind == 1:  # no think block
            return answer
        return f"<think>{steps}{answer}"  # think never closed
    raise ValueError(f"unknown trace mode {mode!r}; valid: {', '.join(GRADED_TRACE_MODES)}")


def _in_eval_split(a: int, b: int, eval_fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(f"{a}+{b}".encode(), digest_size=8).digest(), "big")
    return (h % 10_000) < eval_fraction * 10_000


def _operand_range(d: int) -> tuple[int, int]:
    return (0, 9) if d == 1 else (10 ** (d - 1), 10**d - 1)


def sample_pairs(d: int, n: int, split: str, seed: int, eval_fraction: float) -> list[tuple[int, int]]:
    """`n` distinct (a, b) pairs of `d` digits from the given split (fewer if the split is smaller).

    The split of a pair is a hash of the pair, so train and eval never share a problem.
    """
    lo, hi = _operand_range(d)
    total = (hi - lo + 1) ** 2
    want_eval = split == "eval"
    rng = random.Random(f"{seed}-{d}-{split}")
    if total <= 50_000:  # enumerate small spaces, so the split is exact
        pool = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)
                if _in_eval_split(a, b, eval_fraction) == want_eval]
        rng.shuffle(pool)
        return pool[:n]
    out: set[tuple[int, int]] = set()
    ordered: list[tuple[int, int]] = []
    while len(ordered) < n:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if (a, b) not in out and _in_eval_split(a, b, eval_fraction) == want_eval:
            out.add((a, b))
            ordered.append((a, b))
    return ordered


def make_problem(a: int, b: int) -> Problem:
    d = max(len(str(a)), len(str(b)))
    return Problem(id=f"add-{a}+{b}", prompt=make_prompt(a, b), answer=str(a + b), difficulty=d, meta={"a": a, "b": b})


def verify_integer_answer(completion: str, problem: Problem) -> bool:
    """Correct iff the last `<answer>` tag holds exactly the gold integer (spaces ignored)."""
    got = extract_tagged_answer(completion)
    return got is not None and got.replace(" ", "") == problem.answer


def addition_task(
    difficulties: list[int] | tuple[int, ...] = (1, 2, 3, 4),
    train_per_difficulty: int = 2000,
    eval_per_difficulty: int = 50,
    seed: int = 0,
    eval_fraction: float = 0.2,
    eval_seed: int = 0,
) -> Task:
    """The built-in addition world: a train pool and a disjoint held-out eval split per digit count.

    The train pool is drawn with `seed` (the run's), the eval split with `eval_seed` (its own key), so runs with
    different training seeds are scored on the same problems."""
    train, evals = [], []
    for d in difficulties:
        train += [make_problem(a, b) for a, b in sample_pairs(d, train_per_difficulty, "train", seed, eval_fraction)]
        evals += [make_problem(a, b) for a, b in sample_pairs(d, eval_per_difficulty, "eval", eval_seed, eval_fraction)]
    return Task(name="addition", train=train, eval=evals, verify=verify_integer_answer)
