"""Answer checkers for data files: exact, numeric with tolerance, and math equivalence (math-verify)."""

from __future__ import annotations

import re
from collections.abc import Callable

from rshape.tasks.base import Problem, extract_tagged_answer

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{…}` (or `\\fbox{…}`), braces balanced at any depth; None if none."""
    found = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[m.end(): i - 1]
    return found.strip() if found is not None else None


def extract_answer(completion: str) -> str | None:
    """The last `<answer>` tag, else the last `\\boxed{}`, else None."""
    tagged = extract_tagged_answer(completion)
    if tagged is not None:
        return tagged
    return last_boxed(completion)


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
