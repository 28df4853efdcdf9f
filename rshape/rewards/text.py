"""Text rewards with programmatic checkers: reference overlap (BLEU / n-gram F1) and rule fraction (docs/methods.md)."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from rshape.batch import Batch
from rshape.rewards.base import REWARDS, RewardComponent
from rshape.tasks.base import extract_tagged_answer

# mteval-v13a tokenisation (the default of sacrebleu and of Hugging Face `evaluate`'s bleu).
_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # ... unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]


def tokenize_13a(text: str) -> list[str]:
    """Split text into words and punctuation as mteval-v13a does (WMT's standard BLEU tokeniser)."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in text:
        text = text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = f" {text} "
    for rx, repl in _13A_RULES:
        text = rx.sub(repl, text)
    return text.split()


def ngram_counts(tokens: list[str], n: int) -> Counter:
    """Counts of the n-grams (of this one order) of a token list."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(candidate: list[str], references: list[list[str]], max_order: int = 4, smooth: bool = True) -> float:
    """BLEU of one tokenised candidate against one or more tokenised references, in [0, 1].

    Clipped n-gram precisions p_n (counts clipped by the max count over references), geometric mean over
    n = 1..max_order, brevity penalty exp(1 − r/c) when c ≤ r with r the SHORTEST reference length;
    `smooth` is Lin & Och (2004): p_n = (m_n + 1)/(c_n + 1) for every order. Same values as
    Hugging Face `evaluate`'s "bleu" (tensorflow/nmt compute_bleu) on one segment.
    """
    refs = list(references)
    if not refs or not candidate:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_order + 1):
        cand = ngram_counts(candidate, n)
        merged: Counter = Counter()
        for r in refs:
            merged |= ngram_counts(r, n)
        matches = sum((cand & merged).values())
        possible = max(0, len(candidate) - n + 1)
        p = (matches + 1.0) / (possible + 1.0) if smooth else (matches / possible if possible else 0.0)
        if p <= 0.0:
            return 0.0
        log_sum += math.log(p) / max_order
    ref_len = min(len(r) for r in refs)
    if ref_len == 0:
        return 0.0
    ratio = len(candidate) / ref_len
    bp = 1.0 if ratio > 1.0 else math.exp(1.0 - 1.0 / ratio)
    return math.exp(log_sum) * bp


def ngram_f1(candidate: list[str], reference: list[str], max_order: int = 4) -> float:
    """Mean over n = 1..max_order of the F1 of clipped n-gram overlap; orders absent from both texts are skipped."""
    scores = []
    for n in range(1, max_order + 1):
        cand, ref = ngram_counts(candidate, n), ngram_counts(reference, n)
        c_total, r_total = sum(cand.values()), sum(ref.values())
        if c_total == 0 and r_total == 0:
            continue
        overlap = sum((cand & ref).values())
        scores.append(0.0 if overlap == 0 else 2.0 * overlap / (c_total + r_total))  # = 2PR/(P+R)
    return sum(scores) / len(scores) if scores else 0.0


def scored_text(completion: str, extract: str) -> str | None:
    """The part of a completion a text reward reads: all of it, or the last <answer>…</answer> (None if absent)."""
    if extract == "full":
        return completion.strip()
    return extract_tagged_answer(completion)


@REWARDS.register("reference_overlap")
class ReferenceOverlap(RewardComponent):
    """BLEU (or n-gram F1) between the completion and reference answers, as the reward (BLEUBERI).

    r = BLEU(ŷ, refs) ∈ [0, 1] with mteval-13a tokens, n ≤ 4 and Lin-Och +1 smoothing (the values of
    `evaluate.load("bleu").compute(..., smooth=True)["bleu"]`, which BLEUBERI's training/utils.py `bleu_reward`
    calls); `metric: f1` gives the mean n-gram F1 (n = 1..max_order), best over references. ŷ is the whole
    stripped completion or its `<answer>` part; an empty ŷ, or `extract: answer` with no answer tag, scores 0
    (BLEUBERI scores empty predictions 0). References: problem.meta[references_key] (a list of strings or one
    string), else [problem.answer]; an empty list means not applicable (NaN).
    Source: Chang et al., "BLEUBERI: BLEU is a surprisingly effective reward for instruction following",
    arXiv 2505.11080 (docs/methods.md); compared against lilakk/BLEUBERI training/utils.py and
    huggingface/evaluate metrics/bleu/nmt_bleu.py + tokenizer_13a.py.
    """

    summary: ClassVar[str] = (
        "smoothed sentence BLEU (or n-gram F1) against the data's `references`, else the gold answer"
    )
    source: ClassVar[str] = 'BLEUBERI, arXiv 2505.11080'

    metric: Literal["bleu", "f1"] = "bleu"
    """`bleu`: smoothed sentence BLEU; `f1`: mean n-gram F1."""
    max_order: int = Field(default=4, ge=1, le=4)
    """Largest n-gram order (1-4)."""
    smooth: bool = True
    """Lin & Och (2004) +1 smoothing of every BLEU precision (BLEUBERI uses it)."""
    extract: Literal["full", "answer"] = "full"
    """Score the whole completion, or only its last `<answer>…</answer>`."""
    references_key: str = Field(default="references", min_length=1)
    """problem.meta column holding the reference answers; problem.answer is used when absent."""

    def references(self, problem: Any) -> list[str]:
        refs = problem.meta.get(self.references_key)
        if refs is None:
            return [problem.answer]
        if isinstance(refs, str):
            return [refs]
        return [str(r) for r in refs]

    def score(self, text: str | None, refs: list[str]) -> float:
        if not refs:
            return float("nan")
        if text is None or not text.strip():
            return 0.0
        cand = tokenize_13a(text)
        toks = [tokenize_13a(r) for r in refs]
        if self.metric == "bleu":
            return sentence_bleu(cand, toks, self.max_order, self.smooth)
        return max(ngram_f1(cand, r, self.max_order) for r in toks)

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        return torch.tensor([self.score(scored_text(c, self.extract), self.references(p))
                             for c, p in zip(batch.completions, batch.problems)], dtype=torch.float64)


def _count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def _fold(text: str, value: str, c: dict) -> tuple[str, str]:
    return (text.lower(), value.lower()) if c.get("ignore_case") else (text, value)


def _check_contains(text: str, v: Any, c: dict) -> bool:
    t, v = _fold(text, str(v), c)
    return v in t


def _check_regex(text: str, v: Any, c: dict) -> bool:
    return re.search(str(v), text, re.DOTALL | (re.IGNORECASE if c.get("ignore_case") else 0)) is not None


# type → (checker(text, value, constraint) → bool, kind of value it needs)
CHECKERS: dict[str, tuple[Any, str]] = {
    "max_words": (lambda t, v, c: _count_words(t) <= v, "count"),
    "min_words": (lambda t, v, c: _count_words(t) >= v, "count"),
    "max_chars": (lambda t, v, c: len(t) <= v, "count"),
    "min_chars": (lambda t, v, c: len(t) >= v, "count"),
    "contains": (_check_contains, "text"),
    "not_contains": (lambda t, v, c: not _check_contains(t, v, c), "text"),
    "starts_with": (lambda t, v, c: str.startswith(*_fold(t.strip(), str(v), c)), "text"),
    "ends_with": (lambda t, v, c: str.endswith(*_fold(t.strip(), str(v), c)), "text"),
    "regex": (_check_regex, "regex"),
    "not_regex": (lambda t, v, c: not _check_regex(t, v, c), "regex"),
}


@REWARDS.register("rule_fraction")
class RuleFraction(RewardComponent):
    """Fraction of a problem's listed constraints the completion satisfies: r = #satisfied / #constraints ∈ [0, 1].

    Constraints come from problem.meta[constraints_key], a list of dicts {"type": ..., "value": ...}:
    max_words / min_words (words = `\\w+` runs, as IFEval counts them; bounds inclusive), max_chars / min_chars,
    contains / not_contains (substring), starts_with / ends_with (on the stripped text), regex / not_regex
    (re.search, DOTALL); text types and regexes accept "ignore_case": true. A problem without constraints gets
    NaN (not applicable); an unknown type or a malformed constraint raises ValueError naming the sample.
    With `extract: answer`, a completion without an `<answer>` tag scores 0.
    Source: AutoRule (arXiv 2506.15651) and ACE-RL (arXiv 2509.04903), docs/methods.md [abs]: both reward the fraction
    of satisfied rules, judged there by an LLM verifier; here every rule is a programmatic check (no judge model),
    with word counting as in IFEval (arXiv 2311.07911).
    """

    summary: ClassVar[str] = (
        "fraction of the data's `constraints` satisfied (max/min words or chars, contains, starts/ends "
        'with, regex); none → not applicable'
    )
    source: ClassVar[str] = 'AutoRule, ACE-RL'

    constraints_key: str = Field(default="constraints", min_length=1)
    """problem.meta column holding the list of constraints."""
    extract: Literal["full", "answer"] = "full"
    """Check the whole completion, or only its last `<answer>…</answer>`."""

    def checker(self, i: int, c: Any) -> Any:
        """The check `text → bool` of one constraint of sample i, after validating the constraint."""
        if not isinstance(c, dict) or "type" not in c:
            raise ValueError(f"rule_fraction: sample {i}: a constraint must be a dict with a 'type', got {c!r}")
        kind = c["type"]
        if kind not in CHECKERS:
            raise ValueError(f"rule_fraction: sample {i}: unknown constraint type {kind!r}; "
                             f"valid: {', '.join(sorted(CHECKERS))}")
        fn, needs = CHECKERS[kind]
        if "value" not in c:
            raise ValueError(f"rule_fraction: sample {i}: constraint {kind!r} has no 'value'")
        value = c["value"]
        if needs == "count" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"rule_fraction: sample {i}: constraint {kind!r} needs a non-negative integer value, got {value!r}")
        if needs == "regex":
            try:
                re.compile(str(value))
            except re.error as exc:
                raise ValueError(f"rule_fraction: sample {i}: constraint {kind!r} has a bad regex {value!r}: {exc}") from None
        return lambda text: bool(fn(text, value, c))

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        out = []
        for i, (completion, problem) in enumerate(zip(batch.completions, batch.problems)):
            constraints = problem.meta.get(self.constraints_key) or []
            if not isinstance(constraints, (list, tuple)):
                raise ValueError(f"rule_fraction: sample {i}: meta[{self.constraints_key!r}] must be a list of constraints, "
                                 f"got {type(constraints).__name__}")
            if not constraints:
                out.append(float("nan"))
                continue
            checks = [self.checker(i, c) for c in constraints]  # validate even when there is no text to check
            text = completion if self.extract == "full" else extract_tagged_answer(completion)
            out.append(0.0 if text is None else sum(check(text) for check in checks) / len(checks))
        return torch.tensor(out, dtype=torch.float64)
