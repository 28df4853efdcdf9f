"""The `curriculum:` recipe section: trackers, stages, retirement, budgets (see rshape.curriculum)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rshape.schedules import is_schedule, parse_schedule

BUCKETS = ("easy", "medium", "hard")
Bucket = Literal["easy", "medium", "hard"]


class _Section(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


# ----------------------------------------------------------------------------------------------------- trackers


class _Thresholds(_Section):
    kind: str
    """Tracker kind: `group_pass_rate`, `ema`, `static` or `probe`."""
    easy_above: float = Field(2 / 3, ge=0, le=1)
    """group_pass_rate, ema, probe: a prompt is `easy` when its pass rate is ≥ this."""
    hard_below: float = Field(1 / 3, ge=0, le=1)
    """group_pass_rate, ema, probe: a prompt is `hard` when its pass rate is < this (`medium` in between)."""

    @model_validator(mode="after")
    def _ordered(self) -> _Thresholds:
        if self.hard_below > self.easy_above:
            raise ValueError(f"hard_below ({self.hard_below}) must not exceed easy_above ({self.easy_above})")
        return self


class GroupPassRateTracker(_Thresholds):
    """Pass rate of the prompt's group (mean correctness of its G samples) the last time it was drawn."""

    kind: Literal["group_pass_rate"] = "group_pass_rate"
    """Tracker kind: `group_pass_rate`, `ema`, `static` or `probe`."""


class EmaTracker(_Thresholds):
    """Per-prompt exponential moving average p ← (1 − α)·p + α·x of the group pass rates x, from a prior."""

    kind: Literal["ema"]
    """Tracker kind: `group_pass_rate`, `ema`, `static` or `probe`."""
    alpha: float = Field(0.3, gt=0, le=1)
    """ema: weight α of the newest group pass rate."""
    prior: float = Field(0.5, ge=0, le=1)
    """ema: value of p before the first observation."""
    min_visits: int = Field(1, ge=1)
    """ema: observations needed before the prompt gets a bucket (unknown before)."""


class StaticTracker(_Section):
    """Buckets from a label in the data (problem.difficulty, or the meta column `curriculum.label`)."""

    kind: Literal["static"]
    """Tracker kind: `group_pass_rate`, `ema`, `static` or `probe`."""
    mapping: dict[int | str, Bucket] | None = None
    """static: label → bucket, e.g. {1: easy, 2: easy, 3: medium, 4: hard}; unlisted labels are unknown.
    None = terciles of the (numeric) label over the train pool, smaller labels easier."""


class ProbeTracker(_Thresholds):
    """Pass rate of the initial policy, estimated once before training by the loop and cached to JSON."""

    kind: Literal["probe"]
    """Tracker kind: `group_pass_rate`, `ema`, `static` or `probe`."""
    samples: int = Field(8, gt=0)
    """probe: samples per prompt the loop draws for the estimate (at the rollout temperature)."""
    limit: int | None = Field(None, gt=0)
    """probe: estimate only this many prompts (a seeded choice); the others stay unknown. None = the whole pool."""
    cache: str | None = None
    """probe: JSON cache of the estimates (loaded, not recomputed, when it exists); None = <output_dir>/curriculum_probe.json."""


TrackerConfig = Annotated[GroupPassRateTracker | EmaTracker | StaticTracker | ProbeTracker, Field(discriminator="kind")]


# ----------------------------------------------------------------------------------------------------- sampler


class Until(_Section):
    """Promotion rule: leave the stage when the mean of the last `window` values of `metric` crosses the threshold."""

    metric: str
    """Key of the loop's step metrics, e.g. `accuracy`, `accuracy/difficulty_2`, `length/mean`."""
    above: float | None = None
    """Leave when the window mean is ≥ this."""
    below: float | None = None
    """Leave when the window mean is ≤ this."""
    window: int = Field(1, ge=1)
    """Number of most recent values (of this stage; steps without the metric or with NaN are skipped) averaged."""

    @model_validator(mode="after")
    def _one_threshold(self) -> Until:
        if (self.above is None) == (self.below is None):
            raise ValueError("until needs exactly one of `above` or `below`")
        return self


class Stage(_Section):
    """One phase of the curriculum: a data mixture, and when to move on."""

    name: str | None = None
    """Shown in logs; default `stage<i>`."""
    mixture: dict[int | str, float] | None = None
    """Share of each group in the drawn prompts, spread evenly over the group's prompts (unlisted groups are not drawn);
    None = every prompt alike. Groups are buckets (easy/medium/hard/unknown) or labels, see mixture_by."""
    mixture_by: Literal["bucket", "label"] = "bucket"
    """`bucket`: mixture keys are the tracker's buckets (+ `unknown`); `label`: values of the static label (+ `unknown`)."""
    steps: int | None = Field(None, gt=0)
    """Leave after this many steps in the stage."""
    until: Until | None = None
    """Leave when a metric crosses a threshold (see Until)."""
    max_steps: int | None = Field(None, gt=0)
    """With `until`: leave after this many steps even if the metric never crossed."""

    @model_validator(mode="after")
    def _exits(self) -> Stage:
        if self.steps is not None and self.until is not None:
            raise ValueError("a stage has either `steps` or `until` (with an optional `max_steps` cap), not both")
        if self.max_steps is not None and self.until is None:
            raise ValueError("max_steps caps an `until` rule; use `steps` for a fixed length")
        if self.mixture is not None:
            if any(w < 0 for w in self.mixture.values()) or not sum(self.mixture.values()) > 0:
                raise ValueError("mixture weights must be ≥ 0 with a positive sum")
            if self.mixture_by == "bucket":
                bad = [k for k in self.mixture if k not in (*BUCKETS, "unknown")]
                if bad:
                    raise ValueError(f"bucket mixture keys are easy, medium, hard, unknown; got {bad}")
        return self


class Retire(_Section):
    """Stop drawing prompts the policy always solves (open-instruct)."""

    enabled: bool = False
    """Turn retirement on."""
    threshold: float = Field(1.0, ge=0, le=1)
    """Retire a prompt whose pass rate is ≥ this ..."""
    min_visits: int = Field(1, ge=1)
    """... once it has been observed at least this many times."""
    signal: Literal["last", "tracker"] = "last"
    """`last`: the group pass rate of its latest step (open-instruct); `tracker`: the tracker's pass rate (e.g. the EMA)."""


class Budgets(_Section):
    """Difficulty-aware length targets, written into problem.meta[key] of each drawn prompt."""

    easy: float | dict[str, Any] | None = None
    """Target length (tokens) of easy prompts: a number or a schedule of the step ({schedule: linear, ...})."""
    medium: float | dict[str, Any] | None = None
    """Target length of medium prompts (number or schedule)."""
    hard: float | dict[str, Any] | None = None
    """Target length of hard prompts (number or schedule)."""
    unknown: float | dict[str, Any] | None = None
    """Target length of prompts without a bucket yet (number or schedule); None = no target."""
    key: str = "target_length"
    """Meta column written; the lcpo_exact / lcpo_max rewards read `target_length` per sample."""
    keep_existing: bool = True
    """Keep a target the data already gives (problem.meta[key]) instead of overwriting it."""

    @model_validator(mode="after")
    def _valid(self) -> Budgets:
        for name in (*BUCKETS, "unknown"):
            v = getattr(self, name)
            if isinstance(v, dict):
                if not is_schedule(v):
                    raise ValueError(f"budgets.{name}: a number or a schedule mapping with a `schedule` key")
                parse_schedule(v)
            elif v is not None and not v > 0:
                raise ValueError(f"budgets.{name} must be positive, got {v}")
        return self

    def active(self) -> bool:
        return any(getattr(self, name) is not None for name in (*BUCKETS, "unknown"))


class CurriculumConfig(_Section):
    """The `curriculum:` recipe section. The defaults reproduce PromptSampler exactly."""

    label: str | None = None
    """Meta column holding the static difficulty label; None = problem.difficulty."""
    tracker: TrackerConfig = GroupPassRateTracker()
    """Difficulty signal: `{kind, ...}` with kind `group_pass_rate` (default), `ema`, `static` or `probe`."""
    order: Literal["random", "easy_to_hard"] = "random"
    """`random`: seeded shuffled epochs; `easy_to_hard`: each epoch sorted easiest first (ties in seeded order).
    Applies in stages without a mixture while medium_weight is 1."""
    order_by: Literal["auto", "label", "pass_rate"] = "auto"
    """easy_to_hard key: `label` (ascending), `pass_rate` (descending, unknown last); `auto` = label for a
    static tracker, else pass rate."""
    stages: list[Stage] = Field(default_factory=lambda: [Stage()], min_length=1)
    """Phases in order; the last one lasts until the end of training."""
    retire: Retire = Retire()
    """Retirement of always-solved prompts."""
    medium_weight: float = Field(1.0, gt=0)
    """Sampling weight of prompts in the medium bucket (others 1; Observe-R1 uses >1)."""
    budgets: Budgets = Budgets()
    """Length targets per bucket."""

    @model_validator(mode="after")
    def _consistent(self) -> CurriculumConfig:
        for i, stage in enumerate(self.stages[:-1]):
            if stage.steps is None and stage.until is None:
                raise ValueError(f"stages.{i} is not the last stage: it needs `steps` or `until` to end")
        if self.order == "easy_to_hard" and self.medium_weight != 1.0:
            raise ValueError("order easy_to_hard walks the pool in order; medium_weight needs weighted draws (order random)")
        names = [s.name for s in self.stages if s.name is not None]
        if len(names) != len(set(names)):
            raise ValueError("stage names must be unique")
        if self.tracker.kind == "static" and self.order_by == "pass_rate":
            raise ValueError("a static tracker has no pass rate: use order_by label")
        return self

    def stage_name(self, i: int) -> str:
        return self.stages[i].name or f"stage{i}"
