"""Schedules of the training step: for reward weights, reward parameters and token budgets (docs/methods.md).

A schedule is written in YAML as a mapping with a `schedule` key, anywhere a number is allowed in a
reward entry, or under the recipe's `schedules:` section (named values such as `budget`, which
rewards read from `batch.schedule`):

    weight: {schedule: linear, start: 0.0, end: 0.4, begin: 0, until: 100}
    budget: {schedule: exponential, start: 256, gamma: 0.7, period: 150, floor: 1}    # Train Long, Think Short
    budget: {schedule: step, values: [4000, 2000], milestones: [300]}
    alpha: {schedule: piecewise, points: [[0, 0.0], [50, 0.5], [100, 0.5]]}

`t` is the RL step (1-based in training; step 0 is the state before the first update).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class Schedule(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", frozen=True, use_attribute_docstrings=True)

    def __call__(self, t: int) -> float:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must define __call__")


class Constant(Schedule):
    """v(t) = value."""

    schedule: Literal["constant"]
    value: float

    def __call__(self, t: int) -> float:
        return self.value


class _Ramp(Schedule):
    start: float
    """Value at and before step `begin`."""
    end: float
    """Value at and after step `until`."""
    begin: int = Field(0, ge=0)
    """Step where the change starts."""
    until: int
    """Step where the change ends (must be after `begin`)."""

    @model_validator(mode="after")
    def _ordered(self) -> _Ramp:
        if self.until <= self.begin:
            raise ValueError(f"until ({self.until}) must be after begin ({self.begin})")
        return self

    def progress(self, t: int) -> float:
        return min(1.0, max(0.0, (t - self.begin) / (self.until - self.begin)))


class Linear(_Ramp):
    """v(t) = start + (end − start)·p, p = clip((t − begin)/(until − begin), 0, 1)."""

    schedule: Literal["linear"]

    def __call__(self, t: int) -> float:
        return self.start + (self.end - self.start) * self.progress(t)


class Cosine(_Ramp):
    """v(t) = end + (start − end)·½(1 + cos(π·p)), p as in `linear`."""

    schedule: Literal["cosine"]

    def __call__(self, t: int) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * self.progress(t)))


class Exponential(Schedule):
    """v(t) = max(floor, start·γ^⌊(t − begin)/period⌋) for t ≥ begin, start before.

    With start 256, γ 0.7, period 150 this is the budget of "Train Long, Think Short" (docs/methods.md).
    """

    schedule: Literal["exponential"]
    start: float
    gamma: float = Field(gt=0)
    """Factor applied once per period."""
    period: int = Field(1, gt=0)
    """Steps between decays."""
    begin: int = Field(0, ge=0)
    """Step of the first period's start."""
    floor: float | None = None
    """Lower bound (an upper bound when γ > 1 is not applied)."""

    def __call__(self, t: int) -> float:
        v = self.start * self.gamma ** max(0, (t - self.begin) // self.period)
        return max(self.floor, v) if self.floor is not None else v


class Step(Schedule):
    """v(t) = values[i], i = number of milestones ≤ t."""

    schedule: Literal["step"]
    values: list[float]
    milestones: list[int]

    @model_validator(mode="after")
    def _shape(self) -> Step:
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError("step needs one more value than milestones")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError("milestones must increase")
        return self

    def __call__(self, t: int) -> float:
        return self.values[sum(1 for m in self.milestones if t >= m)]


class Piecewise(Schedule):
    """Linear interpolation between (step, value) points; constant before the first and after the last."""

    schedule: Literal["piecewise"]
    points: list[tuple[int, float]] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> Piecewise:
        steps = [s for s, _ in self.points]
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError("piecewise points must have increasing steps")
        return self

    def __call__(self, t: int) -> float:
        pts = self.points
        if t <= pts[0][0]:
            return pts[0][1]
        for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
            if t <= s1:
                return v0 + (v1 - v0) * (t - s0) / (s1 - s0)
        return pts[-1][1]


ScheduleSpec = Annotated[Constant | Linear | Cosine | Exponential | Step | Piecewise, Field(discriminator="schedule")]
SCHEDULE_ADAPTER: TypeAdapter = TypeAdapter(ScheduleSpec)
SCHEDULE_KINDS = ("constant", "linear", "cosine", "exponential", "step", "piecewise")


def is_schedule(value: Any) -> bool:
    return isinstance(value, dict) and "schedule" in value


def parse_schedule(value: dict[str, Any]) -> Schedule:
    """Validate a schedule mapping (raises pydantic.ValidationError)."""
    return SCHEDULE_ADAPTER.validate_python(value)


def lr_factor(schedule: str, warmup: int, total: int):
    """Multiplier of the base LR at optimizer step s: linear warm-up, then constant/linear/cosine to 0."""

    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return f
