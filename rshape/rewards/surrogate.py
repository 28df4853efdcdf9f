"""Label-free surrogate rewards: format and length only, no gold answer (docs/methods.md).

Source: Xin et al., "Surrogate Signals from Format and Length: Reinforcement Learning for Solving
Mathematical Problems without Ground Truth Answers" (arXiv 2505.19439), code insightLLM/rl-without-gt,
compared against `rl/verl/lib/src/rewards/math_reward.py` (RewardMathFn_xrh, length_reward_func_v3,
answer_format_reward_func, soft_format_reward_func_v2) and `rl/verl/lib/src/eval/evaluator.py`
(parse_answer, val_by_sympy), commit 04681f2.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator

from rshape.batch import Batch
from rshape.rewards.base import REWARDS, RewardComponent, compiled_regex

_ANSWER_GREEDY = re.compile(r"<answer>(.*)</answer>", re.DOTALL)
_PARENS = re.compile(r"\\\((.*?)\\\)", re.DOTALL)


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` with balanced braces (evaluator.extract_boxed_answer)."""
    start = text.rfind("\\boxed")
    if start == -1:
        return None
    first = start + len("\\boxed")
    stack: list[int] = []
    for i in range(first, len(text)):
        if text[i] == "{":
            stack.append(i)
        elif text[i] == "}" and stack:
            if stack.pop() == first:
                return text[first + 1:i]
    return None


def parse_answer(response: str) -> str:
    """The answer the reference code reads (evaluator.parse_answer), '' when there is none.

    With an `<answer>…</answer>` span (first opening to last closing tag): its `\\boxed{}` content,
    else its last `\\( … \\)` content, else the span itself stripped (the code's normalize_final_answer,
    whose unit/LaTeX clean-up is left out here). Without one: the `\\boxed{}` content after the last
    `</think>`, else ''.
    """
    m = _ANSWER_GREEDY.search(response)
    if m is not None:
        span = m.group(1)
        boxed = _last_boxed(span)
        if boxed is not None:
            return boxed
        parens = _PARENS.findall(span)
        if parens:
            return parens[-1]
        return span.replace("$", "").strip()
    return _last_boxed(response.split("</think>")[-1]) or ""


def is_valid_math(answer: str) -> bool:
    """Whether a non-empty answer parses as a mathematical expression.

    The code runs sympy's parse_expr (with implicit multiplication) on a normalised string; here
    math-verify's parser is used instead (it handles LaTeX and plain expressions and does not eval
    Python). Both accept almost any non-empty expression, including bare words as symbols.
    """
    if not answer.strip():
        return False
    from math_verify import parse

    try:
        parsed = parse(f"${answer}$")
    except Exception:  # noqa: BLE001 - an unparseable answer is simply invalid
        return False
    return any(not isinstance(x, str) for x in parsed)  # math-verify falls back to the bare string on failure


def surrogate_length(length: float, max_length: float, peak: float = 0.5) -> float:
    """R_l(x), x = L/L_max: 1 − (1 − x/p)² for x ≤ p, 1 − 2((x − p)/(1 − p))² for x > p (length_reward_func_v3)."""
    x = length / max_length
    if x <= peak:
        return 1.0 - (1.0 - x / peak) ** 2
    return 1.0 - 2.0 * ((x - peak) / (1.0 - peak)) ** 2


@REWARDS.register("format_length")
class FormatLength(RewardComponent):
    """Format-Length surrogate reward, label-free (never reads batch.correct or a gold answer).

    x = L/L_max, R_l = 1 − (1 − x/p)² for x ≤ p, 1 − 2((x − p)/(1 − p))² for x > p (R_l(0) = 0,
    R_l(p) = 1, R_l(1) = −1), p = 0.5. R_a = 1 if an answer can be parsed and validated, R_t = 1 if a
    `<think>…</think>` block is present. r = 0.5·(R_t + R_a) + R_l when R_a = 1, else min(0, R_l) — the
    code's "Format-Length" score (RewardMathFn_xrh). docs/methods.md writes the fallback as
    min(0, R_f + R_l); in the code R_f = 0 there, so both agree. L is in tokens; L_max = 3072 in the code
    (its generation limit), here None → batch.max_new_tokens. Lengths beyond L_max continue the parabola
    below −1, as in the code. Source: arXiv 2505.19439, insightLLM/rl-without-gt (docs/methods.md).
    """

    summary: ClassVar[str] = (
        'label-free: 0.5·(think + answer format) + R_l if an answer parses, else min(0, R_l); R_l = 1 − '
        '(1 − x/p)² for x ≤ p, 1 − 2((x − p)/(1 − p))² above, x = L/L_max'
    )
    source: ClassVar[str] = 'Surrogate Signals, arXiv 2505.19439'

    max_length: int | None = Field(None, gt=0)
    """L_max in tokens (code: 3072 = its generation limit); None: batch.max_new_tokens."""
    peak: float = Field(0.5, gt=0.0, lt=1.0)
    """p: the fraction of L_max where R_l peaks at 1 (code: decay_threshold 0.5)."""
    format_weight: float = Field(0.5, ge=0.0)
    """Weight of the format part (R_t + R_a) (code: 0.5)."""
    think_pattern: str = r"<think>.*?</think>"
    """Regex (re.DOTALL, searched anywhere) for R_t (code: soft_format_reward_func_v2)."""
    validate_answer: bool = True
    """Require the parsed answer to read as a math expression (code: val_by_sympy); False: any non-empty answer."""

    _compiles = field_validator("think_pattern")(classmethod(lambda cls, v: compiled_regex(v)))

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        lmax = self.max_length or batch.max_new_tokens
        if not lmax or lmax <= 0:
            raise ValueError("format_length: set max_length, or run with batch.max_new_tokens > 0")
        think = re.compile(self.think_pattern, re.DOTALL)
        out = []
        for text, length in zip(batch.completions, batch.lengths.tolist()):
            r_l = surrogate_length(float(length), float(lmax), float(self.peak))
            ans = parse_answer(text)
            r_a = 1.0 if (ans.strip() and (not self.validate_answer or is_valid_math(ans))) else 0.0
            if r_a > 0:
                r_t = 1.0 if think.search(text) else 0.0
                out.append(self.format_weight * (r_t + r_a) + r_l)
            else:
                out.append(min(0.0, r_l))
        return torch.tensor(out, dtype=torch.float64)
