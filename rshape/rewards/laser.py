"""LASER: length-based step rewards at a target length, plain and difficulty-aware (docs/methods.md).

Source: Liu et al., "Learn to Reason Efficiently with Adaptive Length-based Reward Shaping"
(arXiv 2505.15612), code hkust-nlp/Laser. Every value here was compared against
`verl/utils/reward_score/length_penalty.py` (compute_length_reward_larse / _larse_d / _larse_de,
_choose_target_length), `verl/utils/reward_score/compute_unique_tokens.py` (the repetition test),
`verl/utils/reward_score/hf_math_verifier.py` (the 1 / −0.5 / −1 base score) and the monitor code
in `verl/trainer/ppo/ray_trainer.py` (_monitor, _count_accuracy_bands_metrics), commit 78b09dd.

These components include the correctness score C, so a recipe uses them *instead of* a separate
`correctness` entry.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PrivateAttr

from rshape.batch import Batch
from rshape.rewards.base import REWARDS, RewardComponent
from rshape.tasks.verifiers import extract_answer

Variant = Literal["step", "penalty", "hybrid"]
BUCKETS = ("easy", "medium", "hard")  # the code's "high", "medium", "low" accuracy levels


# --------------------------------------------------------------------------- helpers


def repetition_start(tokens: Sequence[int], n: int = 4) -> int:
    """Where a repetitive stretch starts, or len(tokens) when none is found.

    Transcribed from Laser's `detect_token_ngram_repetition_optimized_reversed`
    (compute_unique_tokens.py): sequences of ≤ 2n tokens are never repetitive; the n-gram size is 2
    below 30 tokens, 3 below 100, else min(4, n); scanning from the end, an n-gram (not made of one
    repeated token, when n > 2) seen `k` times (k = 2 below 200 tokens, else 3) with two occurrences
    closer than len/3 marks repetition from its first occurrence; failing that, any 2n-gram seen twice
    (when len ≥ 4n) does.
    """
    tokens = list(tokens)
    size = len(tokens)
    if size <= n * 2:
        return size
    if size < 30:
        n = 2
    elif size < 100:
        n = 3
    else:
        n = min(4, n)
    threshold = 2 if size < 200 else 3
    positions: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i in range(size - n, -1, -1):
        gram = tuple(tokens[i:i + n])
        if len(set(gram)) == 1 and len(gram) > 2:
            continue
        positions[gram].append(i)
        if len(positions[gram]) >= threshold:
            pos = sorted(positions[gram])
            for j in range(len(pos) - 1):
                if pos[j + 1] - pos[j] < size // 3:
                    return min(pos)
    if size >= n * 4:
        seen: dict[tuple[int, ...], int] = {}
        for i in range(size - n * 2, -1, -1):
            pattern = tuple(tokens[i:i + n * 2])
            if pattern in seen:
                return min(i, seen[pattern])
            seen[pattern] = i
    return size


def is_repetitive(tokens: Sequence[int], n: int = 4) -> bool:
    """LASER-DE's test: repetition starts before the end of the completion."""
    return repetition_start(tokens, n) < len(tokens)


def length_grid(max_new_tokens: int, step: int | None, start: int | None) -> list[int]:
    """Candidate target lengths, as the code's `get_length_threshold(lower, upper, interval)` (upper = the generation
    limit): `range(start, upper + step, step)`, or, for a start below the step, [start] + `range(step, upper + step,
    step)` — the code writes that anchor as 1024, its interval; rshape anchors at the step so that the grid scales
    with the generation limit (the same list at Laser's interval of 1024). Like the code, the last value may pass
    `upper` by less than a step when upper is not a multiple of it. step None → max(1, max_new_tokens // 16)
    (Laser's 1024 of 16384); start None → step.
    """
    if max_new_tokens <= 0:
        raise ValueError("LASER-D needs batch.max_new_tokens > 0 to build its grid of target lengths")
    step = int(step) if step else max(1, max_new_tokens // 16)
    start = int(start) if start else step
    if start < step:
        return [start, *range(step, max_new_tokens + step, step)]
    return list(range(start, max_new_tokens + step, step))


def _bucket_of_group(n_correct: int, group_size: int) -> str:
    """Bucket used when scoring (length_penalty.py): easy a ≥ 2/3, medium 1/3 ≤ a < 2/3, hard a < 1/3."""
    acc = n_correct / group_size
    if acc >= 2 / 3:
        return "easy"
    if acc >= 1 / 3:
        return "medium"
    return "hard"


def _band_of_monitor_group(n_correct: int, group_size: int) -> str:
    """Band used by the monitor (ray_trainer.py): hard a ≤ 1/3, medium 1/3 < a ≤ 2/3, easy a > 2/3.

    The code draws the boundaries differently from the scoring buckets; they only differ when
    3 divides G (e.g. G = 6, a = 2/6 is "hard" for the monitor, "medium" for scoring).
    """
    acc = n_correct / group_size
    if acc <= 1 / 3:
        return "hard"
    if acc <= 2 / 3:
        return "medium"
    return "easy"


def choose_targets(lengths: Sequence[int], correct: Sequence[float], group_size: int, grid: Sequence[int],
                   expected_n_correct: int = 1, round_method: str = "floor") -> dict[str, int | None]:
    """LASER-D's target per bucket from monitor samples (Laser `_choose_target_length`).

    Each monitor prompt's group is put in a band by its accuracy (see `_band_of_monitor_group`); for
    a band, coverage(L) = fraction of *all* its responses (right or wrong) with length ≤ L, and the
    expected number of correct responses within L is ⌊coverage(L)·n_b⌋ (round_method "floor") or
    coverage(L)·n_b ("ceil"), with n_b = ⌊2G/3⌋ easy, ⌊G/3⌋ medium, 1 hard (⌈·⌉ with "ceil"). The
    target is the smallest grid length whose expectation reaches `expected_n_correct`; None when no
    grid length does (the code then falls back to the longest response of the training batch, which
    lets every response through; None means exactly that here).
    """
    by_band: dict[str, list[int]] = {b: [] for b in BUCKETS}
    n = len(lengths)
    for g in range(0, n, group_size):
        k = int(sum(float(c) for c in correct[g:g + group_size]))
        by_band[_band_of_monitor_group(k, group_size)].extend(int(x) for x in lengths[g:g + group_size])
    rnd = math.floor if round_method == "floor" else math.ceil
    lower = {"easy": rnd(group_size * 2 / 3), "medium": rnd(group_size * 1 / 3), "hard": 1}
    targets: dict[str, int | None] = {}
    for band in BUCKETS:
        lens = by_band[band]
        best: int | None = None
        for length in grid:
            ratio = (sum(1 for x in lens if x <= length) / len(lens)) if lens else 0.0
            expected = int(ratio * lower[band]) if round_method == "floor" else ratio * lower[band]
            if expected >= expected_n_correct and (best is None or length < best):
                best = int(length)
        targets[band] = best
    return targets


# --------------------------------------------------------------------------- components


class _LaserBase(RewardComponent):
    correct_score: float = 1.0
    """C of a correct completion (Laser code: 1)."""
    wrong_score: float = -0.5
    """C of a wrong completion (Laser code: −0.5)."""
    unparsed_score: float | None = None
    """C of a wrong completion with no extractable answer (no `<answer>` tag or `\\boxed{}`); None: wrong_score.
    The Laser code scores a missing `\\boxed{}` or missing think tags −1."""
    alpha: float = Field(0.5, ge=0)
    """Size α of the length term (Laser: length_reward_scalar = 0.5)."""

    def _base(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(C [N], correct [N] bool, parsed [N] bool)."""
        correct = batch.correct > 0
        parsed = torch.tensor([extract_answer(t) is not None for t in batch.completions], dtype=torch.bool)
        c = torch.where(correct, torch.tensor(float(self.correct_score), dtype=torch.float64),
                        torch.tensor(float(self.wrong_score), dtype=torch.float64))
        if self.unparsed_score is not None:
            c = torch.where(~correct & ~parsed, torch.tensor(float(self.unparsed_score), dtype=torch.float64), c)
        return c, correct, parsed


def _length_term(variant: str, alpha: float, correct: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """Laser's length term for correct answers: step +α within, penalty −α beyond, hybrid both."""
    zero = torch.zeros(correct.shape, dtype=torch.float64)
    if variant == "step":
        return torch.where(correct & within, alpha, zero)
    if variant == "penalty":
        return torch.where(correct & ~within, -alpha, zero)
    return torch.where(correct, torch.where(within, alpha, -alpha), zero)


@REWARDS.register("laser")
class Laser(_LaserBase):
    """LASER: r = C + α·c·1[L ≤ L_T] (variant `step`), C = 1 if correct else −0.5, α = 0.5.

    Variants as in the code's `length_reward_type`: `step` ("reward"): +α for a correct answer with
    L ≤ L_T; `penalty`: −α for a correct answer with L > L_T (0 otherwise); `hybrid`: +α within and
    −α beyond, for correct answers. Wrong answers get C only. L_T = `target_length`, or the recipe's
    `budget` schedule (batch.schedule["budget"]) when it is None.
    Source: arXiv 2505.15612, hkust-nlp/Laser `compute_length_reward_larse` (docs/methods.md).
    """

    summary: ClassVar[str] = (
        'r = C + α·c·1[L ≤ L_T], C = 1 / −0.5; `penalty`: −α if correct and L > L_T; `hybrid`: both'
    )
    source: ClassVar[str] = 'LASER, arXiv 2505.15612'

    target_length: int | None = Field(None, gt=0)
    """Target length L_T in tokens; None: batch.schedule["budget"]."""
    variant: Variant = "step"
    """`step` (+α within L_T), `penalty` (−α beyond L_T) or `hybrid` (both), for correct answers."""

    def target(self, batch: Batch) -> float:
        if self.target_length is not None:
            return float(self.target_length)
        if "budget" in batch.schedule:
            return float(batch.schedule["budget"])
        raise ValueError("laser: set target_length, or define a `budget` schedule in the recipe's schedules section")

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        c, correct, _parsed = self._base(batch)
        within = batch.lengths.double() <= self.target(batch)
        return c + _length_term(self.variant, float(self.alpha), correct, within)


class _DifficultyLaser(_LaserBase):
    initial_target: int | None = Field(None, gt=0)
    """Target of every bucket until the first refresh (the code's `target_length`); None: batch.schedule["budget"]
    when defined, else no limit."""
    update_every: int = Field(20, ge=1)
    """Steps between refreshes of the targets (Laser: trainer.monitor_freq = 20)."""
    monitor: Literal["context", "batch"] = "context"
    """Where the refresh samples come from: `context` = fresh groups on the loop's monitor split (Laser); `batch` =
    the current training batch (also what runs when there is no context, e.g. in unit tests)."""
    monitor_size: int = Field(500, ge=1)
    """Monitor prompts sampled at a refresh (Laser: a 500-problem monitor file)."""
    grid_step: int | None = Field(None, gt=0)
    """Spacing of candidate target lengths (Laser: 1024); None: max_new_tokens // 16."""
    grid_min: int | None = Field(None, gt=0)
    """Smallest candidate target (Laser: the run's lower bound, e.g. 4096); None: grid_step."""
    expected_n_correct: int = Field(1, ge=1)
    """Correct responses a bucket must still expect within its target (Laser: 1)."""
    round_method: Literal["floor", "ceil"] = "floor"
    """Rounding of the expected count (Laser: floor)."""

    _state: dict = PrivateAttr(default_factory=lambda: {"targets": None, "last_refresh": None})

    # ---- state
    def state_dict(self) -> dict[str, Any]:
        t = self._state["targets"]
        return {"targets": dict(t) if t is not None else None, "last_refresh": self._state["last_refresh"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        t = state.get("targets")
        self._state["targets"] = dict(t) if t is not None else None
        self._state["last_refresh"] = state.get("last_refresh")

    def current_targets(self) -> dict[str, int | None]:
        """Current L_T per bucket (easy, medium, hard); None = no limit. Initial targets before the first refresh."""
        t = self._state["targets"]
        return dict(t) if t is not None else {b: self.initial_target for b in BUCKETS}

    # ---- refresh
    def _maybe_refresh(self, batch: Batch) -> None:
        last = self._state["last_refresh"]
        if last is not None and batch.step - last < self.update_every:
            return
        if self.monitor == "batch":
            mb = batch
        elif batch.context is not None:
            problems = list(batch.context.monitor)[: self.monitor_size]
            if not problems:
                return
            mb = batch.context.generate(problems, batch.group_size)
        else:
            return  # no policy to sample from: keep the current (initial) targets
        grid = length_grid(batch.max_new_tokens or mb.max_new_tokens, self.grid_step, self.grid_min)
        self._state["targets"] = choose_targets(mb.lengths.tolist(), mb.correct.tolist(), mb.group_size, grid,
                                                self.expected_n_correct, self.round_method)
        self._state["last_refresh"] = batch.step

    def _per_sample_targets(self, batch: Batch, correct: torch.Tensor) -> torch.Tensor:
        """[N] target of each completion's bucket (inf = no limit)."""
        targets = self._state["targets"]
        if targets is None:
            init = self.initial_target if self.initial_target is not None else batch.schedule.get("budget")
            targets = {b: init for b in BUCKETS}
        counts = batch.grouped(correct.double()).sum(dim=1).round().long().tolist()  # [B]
        G = batch.group_size
        out = []
        for k in counts:
            t = targets[_bucket_of_group(int(k), G)]
            out.extend([math.inf if t is None else float(t)] * G)
        return torch.tensor(out, dtype=torch.float64)


@REWARDS.register("laser_d")
class LaserD(_DifficultyLaser):
    """LASER-D: r = C + α·c·1[L ≤ L_T(bucket)], with a target per difficulty bucket, re-chosen every 20 steps.

    A group's bucket is set by its accuracy a (fraction correct): easy a ≥ 2/3, medium 1/3 ≤ a < 2/3,
    hard a < 1/3. Every `update_every` steps (and at the first call) the targets are re-chosen from
    fresh samples of the monitor split (batch.context.generate(monitor[:monitor_size], G)): the
    smallest grid length at which the bucket still expects ⌊coverage·n_b⌋ ≥ 1 correct answers,
    n_b = ⌊2G/3⌋ easy, ⌊G/3⌋ medium, 1 hard (see `choose_targets`). Refreshing at the first call and
    then every 20 steps reproduces the code (monitor before training, then after steps 20, 40, …).
    Without a context (unit tests) the targets stay at `initial_target` unless `monitor: batch`.
    `variant` as in `laser`. Source: arXiv 2505.15612, hkust-nlp/Laser `compute_length_reward_larse_d`
    and `_choose_target_length` (docs/methods.md). Follows the code where it differs from the paper's
    prose: coverage counts all responses of a band, and the monitor's band edges differ slightly from
    the scoring buckets (≤ 1/3 vs < 1/3). State: targets and last refresh step (checkpointed).
    """

    summary: ClassVar[str] = (
        'LASER with one L_T per accuracy bucket (easy ≥ 2/3, medium ≥ 1/3, hard), re-chosen every 20 '
        'steps on monitor samples as the smallest grid length keeping ⌊2G/3⌋ / ⌊G/3⌋ / 1 correct'
    )
    source: ClassVar[str] = 'LASER-D, arXiv 2505.15612'

    variant: Variant = "step"
    """`step` (+α within L_T), `penalty` (−α beyond L_T) or `hybrid` (both), for correct answers."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        self._maybe_refresh(batch)
        c, correct, _parsed = self._base(batch)
        within = batch.lengths.double() <= self._per_sample_targets(batch, correct)
        return c + _length_term(self.variant, float(self.alpha), correct, within)


@REWARDS.register("laser_de")
class LaserDE(_DifficultyLaser):
    """LASER-DE: LASER-D plus exploration: +α for a wrong answer longer than its L_T that is not repetitive.

    r = C + α·c·1[L ≤ L_T] + α·(1 − c)·1[L > L_T]·1[parsed]·1[not truncated]·1[not repetitive]. As in
    the code (`compute_length_reward_larse_de`) the bonus goes only to wrong answers that were scored
    −0.5, i.e. with a parseable answer; the code's −1 format failures cover nearly every truncated
    completion, so truncated ones never get it here. Repetition is Laser's token n-gram test
    (`repetition_start`, n = `repetition_ngram`) on the completion's token ids. Buckets, targets and
    refreshes as in `laser_d` (the code's DE always uses the `step` variant).
    Source: arXiv 2505.15612, hkust-nlp/Laser length_penalty.py and compute_unique_tokens.py (docs/methods.md).
    """

    summary: ClassVar[str] = '`laser_d` + α for a wrong, parsed, non-repetitive answer longer than L_T (exploration)'
    source: ClassVar[str] = 'LASER-DE, arXiv 2505.15612'

    repetition_ngram: int = Field(4, ge=1)
    """n of the repetition test before its length-based adjustment (Laser: 4)."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        self._maybe_refresh(batch)
        c, correct, parsed = self._base(batch)
        lengths = batch.lengths.double()
        targets = self._per_sample_targets(batch, correct)
        alpha = float(self.alpha)
        bonus = torch.where(correct & (lengths <= targets), torch.tensor(alpha, dtype=torch.float64), 0.0)
        explore = ~correct & (lengths > targets) & parsed & ~batch.truncated.bool()
        for i in torch.nonzero(explore).flatten().tolist():
            ids = batch.completion_ids[i][: int(batch.lengths[i])]
            if not is_repetitive(ids, self.repetition_ngram):
                bonus[i] = alpha
        return c + bonus
