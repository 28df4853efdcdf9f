"""Effects over seeds and the verdict rule of a reproduction.

An effect is a difference between two settings of one sweep, one value per seed (paired: the same seed draws
the same training prompts and sampling noise in both settings, and every run is scored on the same eval split),
or a change of one setting from its step-0 evaluation. Its 95% interval is Student's t over seeds:
mean ± t_{0.975, n−1}·s/√n (n = 1: no interval).

Verdict of one test, for a claim "the effect is > 0" (or < 0): REPRODUCED when the whole interval is on the
claimed side; NOT REPRODUCED when the whole interval is on the other side, or inside ±`margin` (no effect of
a size that matters); INCONCLUSIVE otherwise. For a claim "the effect is ≈ 0" (two methods are similar):
REPRODUCED when the whole interval is inside ±margin, NOT REPRODUCED when it is wholly outside, else
INCONCLUSIVE. A claim made of several tests is REPRODUCED when every test is, NOT REPRODUCED when any test
is, INCONCLUSIVE otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from rshape.stats import t975

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE"


@dataclass
class Effect:
    """Mean over seeds with its 95% t interval (low = high = mean when n = 1)."""

    mean: float
    low: float
    high: float
    n: int
    values: list[float]

    def as_dict(self) -> dict:
        return asdict(self)


def effect(values: list[float]) -> Effect:
    """Mean and t-based 95% interval of per-seed values."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Effect(math.nan, math.nan, math.nan, 0, [])
    mean = sum(xs) / n
    if n == 1:
        return Effect(mean, mean, mean, 1, xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return Effect(mean, mean - half, mean + half, n, xs)


def paired(a: dict[int, float], b: dict[int, float]) -> Effect:
    """Effect of a − b over the seeds both have."""
    return effect([a[s] - b[s] for s in sorted(set(a) & set(b))])


@dataclass
class Check:
    """One tested statement: `effect` should be `direction` (> 0, < 0, or ≈ 0 within ±margin); for > and <,
    |effect| ≤ margin counts as no effect."""

    statement: str
    effect: Effect
    direction: Literal[">", "<", "≈"]
    margin: float
    unit: str = ""

    @property
    def verdict(self) -> str:
        e = self.effect
        if e.n < 2 or math.isnan(e.mean):
            return INCONCLUSIVE
        if self.direction == "≈":
            if -self.margin <= e.low and e.high <= self.margin:
                return REPRODUCED
            if e.low > self.margin or e.high < -self.margin:
                return NOT_REPRODUCED
            return INCONCLUSIVE
        sign = 1 if self.direction == ">" else -1
        low, high = sorted((sign * e.low, sign * e.high))
        if low > 0:
            return REPRODUCED
        if high < 0 or (-self.margin <= low and high <= self.margin):
            return NOT_REPRODUCED
        return INCONCLUSIVE

    def as_dict(self) -> dict:
        return {"statement": self.statement, "direction": self.direction, "margin": self.margin, "unit": self.unit,
                "effect": self.effect.as_dict(), "verdict": self.verdict}


def combine(verdicts: list[str]) -> str:
    """All REPRODUCED → REPRODUCED; any NOT REPRODUCED → NOT REPRODUCED; else INCONCLUSIVE."""
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE
