"""Answer checkers for data files: exact, numeric with tolerance, and math equivalence (math-verify)."""

from __future__ import annotations

import re
from collections.abc import Callable

from rshape.tasks.base import Problem, extract_tagged_answer

_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def extract_answer(completion: str) -> str | None:
    """The last `<answer>` tag, else the last `\\boxed{}`, else None."""
    tagged = extract_tagged_answer(completion)
    if tagged is not None:
        return tagged
    boxed = _BOXED.findall(completion)
    return boxed[-1].strip() if boxed else None


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding `$`, no trailing period."""
    t = " ".join(text.strip().lower().split())
    return t.strip("$").rstrip(".").strip()


def exact_match(completion: str, problem: Problem) -> bool:
    got = extract_answer(completion)
    return got is not None and normalize(got) == normalize(problem.answer)


def _to_float(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(completion: str, problem: Problem, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """|got − gold| ≤ max(rel_tol·|gold|, abs_tol), numbers read from the extracted answer."""
    got = extract_answer(completion)
    a, b = (_to_float(got) if got is not None else None), _to_float(problem.answer)
    return a is not None and b is not None and abs(a - b) <= max(rel_tol * abs(b), abs_tol)


def math_match(completion: str, problem: Problem) -> bool:
    """Symbolic equivalence through math-verify (e.g. `\\frac{1}{2}` = 0.5)."""
    from math_verify import parse, verify

    got = extract_answer(completion)
    if got is None:
        return False
    gold = problem.answer if problem.answer.strip().startswith("$") else f"${problem.answer}$"
    return bool(verify(parse(gold), parse(f"${got}$")))


VERIFIERS: dict[str, Callable[[str, Problem], bool]] = {
    "exact": exact_match, "numeric": numeric_match, "math": math_match,
}
