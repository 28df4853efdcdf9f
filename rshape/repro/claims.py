"""The published claims `make repro-*` tests on the graded tiny world, and how each verdict is computed.

Every claim names its sweep file (`recipes/repro/<name>.yaml`: the methods × seeds), the paper's statement
and number, which of the paper's settings carried over, and the tests (`rshape.repro.stats.Check`) that decide
the verdict from the finished runs. Effects are paired over seeds; accuracies are fractions, so a margin of
0.01 is one point. Hard problems are the 5-digit bucket (`difficulty_5`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rshape.repro.data import SweepData
from rshape.repro.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Check, combine, effect, paired

HARD = "difficulty_5"
ACC_MARGIN = 0.01      # one point of accuracy: smaller effects count as none
SIMILAR_TOKENS = 0.15  # "a similar length": mean tokens within ±15% of the step-0 policy's
SIMILAR_ACC = 0.03     # "tracks": accuracy within ±3 points


def _tokens0(d: SweepData, method: str) -> float:
    first = d.first(method, "eval/length")
    return sum(first.values()) / len(first) if first else float("nan")


@dataclass
class Claim:
    name: str
    title: str
    paper: str
    statement: str
    tests: Callable[[SweepData], list[Check]]
    transfer: str
    """Which of the paper's settings carried over to the tiny world, and which did not."""
    prepare: list[list[str]] = field(default_factory=list)
    """`rshape` commands run before the sweep (skipped when their output exists), e.g. train-rm."""
    decide: Callable[[list[Check]], str] = lambda tests: combine([t.verdict for t in tests])

    @property
    def sweep_file(self) -> str:
        return f"recipes/repro/{self.name}.yaml"


# ----------------------------------------------------------------------------- 1. GRPO-λ


def _collapse(d: SweepData) -> list[Check]:
    key = f"eval/accuracy/{HARD}"
    t0 = _tokens0(d, "length_penalty")
    return [
        Check("a plain length penalty lowers hard-problem (5-digit) accuracy from the step-0 policy's",
             effect(list(d.change("length_penalty", key).values())), "<", ACC_MARGIN, "accuracy"),
        Check("GRPO-λ keeps more hard-problem accuracy than the plain penalty",
             paired(d.final("grpo_lambda", key), d.final("length_penalty", key)), ">", ACC_MARGIN, "accuracy"),
        Check("at a similar length: GRPO-λ's mean tokens − the plain penalty's, within ±15% of the step-0 length",
             paired(d.final("grpo_lambda", "eval/length"), d.final("length_penalty", "eval/length")), "≈",
             SIMILAR_TOKENS * t0, "tokens"),
    ]


# ----------------------------------------------------------------------------- 2. LASER-D


def _front_tests(d: SweepData, better: str, other: str) -> list[Check]:
    t0 = _tokens0(d, other)
    return [
        Check(f"{better} is more accurate than {other}",
             paired(d.final(better, "eval/accuracy"), d.final(other, "eval/accuracy")), ">", ACC_MARGIN, "accuracy"),
        Check(f"{better} uses fewer tokens than {other}",
             paired(d.final(better, "eval/length"), d.final(other, "eval/length")), "<", 0.02 * t0, "tokens"),
    ]


def _significantly_worse(t: Check) -> bool:
    e = t.effect
    return e.n >= 2 and (e.high < 0 if t.direction == ">" else e.low > 0)


def decide_front(tests: list[Check]) -> str:
    """A better front: better on one axis (REPRODUCED) and not significantly worse on the other. NOT REPRODUCED:
    significantly worse on an axis, or no effect on either. Otherwise INCONCLUSIVE."""
    acc, tok = tests
    if any(_significantly_worse(t) for t in tests):
        better = [t for t in tests if t.verdict == REPRODUCED]
        return NOT_REPRODUCED if not better else INCONCLUSIVE  # a trade-off, not a better front
    if REPRODUCED in (acc.verdict, tok.verdict):
        return REPRODUCED
    if acc.verdict == NOT_REPRODUCED and tok.verdict == NOT_REPRODUCED:
        return NOT_REPRODUCED
    return INCONCLUSIVE


# ----------------------------------------------------------------------------- 3. DRPO


def _drpo(d: SweepData) -> list[Check]:
    t0 = _tokens0(d, "length_penalty")
    return [
        Check("DRPO ends more accurate than length-penalised GRPO (both start from the same policy: it loses less)",
             paired(d.final("drpo", "eval/accuracy"), d.final("length_penalty", "eval/accuracy")), ">", ACC_MARGIN,
             "accuracy"),
        Check("at a similar compression: DRPO's mean tokens − the penalised GRPO's, within ±15% of the step-0 length",
             paired(d.final("drpo", "eval/length"), d.final("length_penalty", "eval/length")), "≈",
             SIMILAR_TOKENS * t0, "tokens"),
    ]


# ----------------------------------------------------------------------------- 4. Train Long, Think Short


def _tlts(d: SweepData) -> list[Check]:
    return [Check("a decaying budget ends more accurate than a fixed budget equal to its final value",
                 paired(d.final("decaying", "eval/accuracy"), d.final("fixed", "eval/accuracy")), ">", ACC_MARGIN,
                 "accuracy")]


# ----------------------------------------------------------------------------- 5. PAR


def _par(d: SweepData) -> list[Check]:
    rm_up = {s: v - d.window("raw", "reward/rm/raw", 0.0, 0.1).get(s, float("nan"))
             for s, v in d.window("raw", "reward/rm/raw", 0.9, 1.0).items()}
    return [
        Check("optimising the raw RM score raises it (training mean, last 10% of steps − first 10%)",
             effect(list(rm_up.values())), ">", 0.0, "RM score"),
        Check("... while true accuracy falls (final − step-0 held-out accuracy)",
             effect(list(d.change("raw", "eval/accuracy").values())), "<", ACC_MARGIN, "accuracy"),
        Check("PAR ends more accurate than the raw RM score",
             paired(d.final("par", "eval/accuracy"), d.final("raw", "eval/accuracy")), ">", ACC_MARGIN, "accuracy"),
    ]


# ----------------------------------------------------------------------------- 6. label-free surrogate signals

EARLY_STEP = 20


def _label_free(d: SweepData) -> list[Check]:
    return [
        Check(f"early in training (eval at step {EARLY_STEP}) the format-only reward's accuracy is within ±3 points "
             "of the correctness reward's",
             paired(d.at_step("format", "eval/accuracy", EARLY_STEP), d.at_step("correctness", "eval/accuracy",
                                                                                 EARLY_STEP)), "≈", SIMILAR_ACC,
             "accuracy"),
        Check("at the end, format + length (Surrogate Signals) is within ±3 points of the correctness reward",
             paired(d.final("format_length", "eval/accuracy"), d.final("correctness", "eval/accuracy")), "≈",
             SIMILAR_ACC, "accuracy"),
    ]


CLAIMS: list[Claim] = [
    Claim("length-collapse", "A plain length penalty collapses hard-problem accuracy; GRPO-λ prevents it",
          "GRPO-λ: Stable Reinforcement Learning for Efficient Reasoning, arXiv 2505.18086",
          "Length penalties applied to every group cause an abrupt accuracy collapse; ranking groups by correctness "
          "ratio and penalising length only in the top λ fraction avoids it (+1.48% accuracy with 47.3% shorter "
          "chains of thought).",
          _collapse,
          "λ = 0.2 (top fraction) and α = 0.6 of the third-party reimplementation for both methods; the plain "
          "penalty is the same self-normalised length penalty applied to every group. Model, data, group size "
          "(8 here) and step count (120 here) do not transfer."),
    Claim("laser-d", "LASER-D gives a better accuracy-vs-tokens front than LASER with one fixed target",
          "Learn to Reason Efficiently with Adaptive Length-based Reward Shaping (LASER), arXiv 2505.15612",
          "Difficulty-aware targets (LASER-D) dominate fixed-target LASER: +6.1 on AIME2024 with 63% fewer tokens.",
          lambda d: _front_tests(d, "laser_d", "laser"),
          "α = 0.5, scores 1 / −0.5, LASER-D's three buckets (⌊2G/3⌋, ⌊G/3⌋, 1 expected correct) and its "
          "re-choice every 20 steps on monitor samples, as in the Laser code. The fixed target is half the "
          "generation limit (64 of 128 tokens), as the paper's 4096 of 8192; the grid is rshape's (step 8).",
          decide=decide_front),
    Claim("drpo", "DRPO loses less accuracy than length-penalised GRPO at a similar compression",
          "DRPO: Decoupled Reward Policy Optimization, Optimization-AI/DRPO",
          "77% shorter with 1.1% accuracy loss on GSM8K (1.5B), where a plain length penalty lost 4.3% for 68%.",
          _drpo,
          "DRPO with λ = 0.1 and τ = 10 (the repository's defaults) on the correctness reward; the length-penalised "
          "GRPO is GRPO with correctness + 0.4·Kimi length (rshape's quickstart penalty: the paper's exact "
          "penalty baseline is not in the public code)."),
    Claim("tlts", "A decaying token budget ends better than a fixed budget equal to its final value",
          "Train Long, Think Short: Curriculum Learning for Efficient Reasoning, arXiv 2508.08940",
          "An exponentially decaying budget beats fixed-budget baselines at the same final budget.",
          _tlts,
          "The paper's reward (0.6·correct + 0.3·triangular length reward around B(t) + 0.1·format), G = 8, "
          "three decays by γ = 0.7 over the run (B0 = the generation limit 128 → 90 → 63 → 44) and the budget "
          "as the generation limit; the paper's B0 = 256 and 600 steps do not transfer (120 steps here)."),
    Claim("par", "PAR resists reward hacking where optimising the raw RM score is hacked",
          "Reward Shaping to Mitigate Reward Hacking in RLHF (PAR), PorUna-byte/PAR",
          "PAR keeps a ≥ 5-point higher AlpacaEval 2 win rate than raw-reward training and stays robust after "
          "two epochs, where the raw reward is hacked.",
          _par,
          "A MiniLM Bradley-Terry RM trained on the tiny world's preference pairs (it reads structure and length, "
          "not arithmetic: the hackable signal), used alone as the reward; PAR with one reference (the warm "
          "start's full trace) and k = 1, as the paper's M = 1 setting. Win rates against GPT-4 do not transfer: "
          "the verifier's accuracy is the true score.",
          prepare=[["train-rm", "recipes/repro/par_rm.yaml"]]),
    Claim("label-free", "A format-only reward tracks the correctness reward early; format + length keeps up later",
          "Surrogate Signals from Format and Length (rl-without-gt), arXiv 2505.19439",
          "Format-only rewards track ground-truth GRPO early in training; adding the length term keeps up later "
          "(40.0% on AIME2024 with a 7B base, no ground-truth answers).",
          _label_free,
          "The code's format_length reward (0.5·format + the quadratic length term, peak at half the limit, "
          "−1 at the limit) and a format-only reward (1 for the answer format) against correctness, all from the "
          "same warm start."),
]


def get_claim(name: str) -> Claim:
    for c in CLAIMS:
        if c.name == name:
            return c
    raise KeyError(f"unknown claim {name!r}; valid: {', '.join(c.name for c in CLAIMS)}, all")


__all__ = ["CLAIMS", "Claim", "INCONCLUSIVE", "NOT_REPRODUCED", "REPRODUCED", "decide_front", "get_claim"]
