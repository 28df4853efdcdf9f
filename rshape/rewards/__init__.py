"""Reward components by short name, and building a combined set of them from a recipe."""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from rshape.recipe import validation_problems
from rshape.registry import UnknownName, load_dotted
from rshape.rewards.base import REWARDS, RewardComponent
from rshape.rewards.combine import Constraint, RewardRuntimeError, RewardScores, RewardSet, WeightedComponent
from rshape.rewards.user import UserFunction, UserRewardError
from rshape.schedules import SCHEDULE_KINDS, Schedule, is_schedule, parse_schedule

# every module of this package is imported: a family's classes register themselves (@REWARDS.register)
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# Entry names that imply a type when `type` is not given: `length:` means the Kimi reward.
DEFAULT_TYPE = {"length": "kimi_length"}
RESERVED_KEYS = ("type", "weight", "combine", "gate", "constraint")

__all__ = ["REWARDS", "RewardComponent", "RewardConfigError", "RewardRuntimeError", "RewardScores",
           "RewardSet", "UserRewardError", "build_rewards"]


class RewardConfigError(Exception):
    """Problems with the `rewards` section: a list of (key path, message)."""

    def __init__(self, problems: list[tuple[tuple[str, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(k)}: {m}" for k, m in problems))


def _schedule_extremes(s: Schedule) -> list[float]:
    """Values of a schedule at the steps that define it (enough to check its sign)."""
    steps = {0, 10**9}
    for attr in ("begin", "until"):
        if hasattr(s, attr):
            steps.add(getattr(s, attr))
    steps.update(getattr(s, "milestones", []))
    steps.update(p for p, _ in getattr(s, "points", []))
    return [s(t) for t in sorted(steps)]


def _pydantic_problems(exc: ValidationError, prefix: tuple[str, ...], schedule: bool = False
                       ) -> list[tuple[tuple[str, ...], str]]:
    """rshape.recipe.validation_problems, naming the valid kinds when a schedule's kind is unknown."""
    out = validation_problems(exc, prefix, skip=1 if schedule else 0)  # a schedule's first location is its tag
    kinds = f"valid: {', '.join(SCHEDULE_KINDS)}"
    return [(loc, f"unknown schedule {err['input'].get('schedule')!r}; {kinds}" if err["type"] == "union_tag_invalid"
             else msg) for (loc, msg), err in zip(out, exc.errors(), strict=True)]


def _resolve_class(type_name: str) -> type[RewardComponent] | Any:
    if type_name in REWARDS:
        return REWARDS.get(type_name)
    if "." in type_name or ":" in type_name:
        return load_dotted(type_name)
    return REWARDS.get(type_name)  # raises UnknownName listing the valid names


def build_rewards(specs: Mapping[str, Any], mode: str = "sum_then_normalize") -> RewardSet:
    """Instantiate every component the recipe names; collect every problem before raising.

    An entry is `{type, weight, combine, gate, ...parameters}`; `type` is a registry name or a dotted
    path to a RewardComponent subclass or to a TRL-style function. Any parameter or the weight may be a
    schedule mapping.
    """
    problems: list[tuple[tuple[str, ...], str]] = []
    parts: list[WeightedComponent] = []
    for name, spec in specs.items():
        spec = dict(spec) if isinstance(spec, Mapping) else spec.model_dump()
        where = ("rewards", name)
        type_name = spec.get("type") or DEFAULT_TYPE.get(name, name)
        try:
            cls = _resolve_class(type_name)
        except UnknownName as exc:
            problems.append(((*where, "type"), str(exc)))
            continue
        scheduled: dict[str, Schedule] = {}
        params: dict[str, Any] = {}
        for k, v in spec.items():
            if k in RESERVED_KEYS:
                continue
            if is_schedule(v):
                try:
                    scheduled[k] = parse_schedule(v)
                except ValidationError as exc:
                    problems += _pydantic_problems(exc, (*where, k), schedule=True)
                    continue
                params[k] = scheduled[k](0)
            else:
                params[k] = v
        weight: float | Schedule = 1.0
        raw_weight = spec.get("weight", 1.0)
        if is_schedule(raw_weight):
            try:
                weight = parse_schedule(raw_weight)
            except ValidationError as exc:
                problems += _pydantic_problems(exc, (*where, "weight"), schedule=True)
        elif isinstance(raw_weight, (int, float)) and not isinstance(raw_weight, bool) and math.isfinite(raw_weight):
            weight = float(raw_weight)
        else:
            problems.append(((*where, "weight"), f"a finite number or a schedule, got {raw_weight!r}"))
        is_user = not (isinstance(cls, type) and issubclass(cls, RewardComponent))
        clash = [] if is_user else sorted(set(cls.model_fields) & set(RESERVED_KEYS))
        if clash:  # the entry consumes these keys, so the component could never receive them
            problems.append(((*where, "type"), f"{type_name} has a parameter named like an entry key "
                             f"({', '.join(clash)}); rename the parameter"))
            continue
        if is_user:
            if not callable(cls) or isinstance(cls, type):
                problems.append(((*where, "type"), f"{type_name} is neither a RewardComponent nor a function"))
                continue
            if scheduled:
                problems.append(((*where, next(iter(scheduled))), "parameters of a user function cannot follow a schedule"))
                continue
            component: RewardComponent = UserFunction(path=type_name, params=params)
        else:
            try:
                component = cls.model_validate(params)
            except ValidationError as exc:
                problems += _pydantic_problems(exc, where)
                continue
        multiplicative = type(component).multiplicative
        combine = spec.get("combine", "multiply" if multiplicative else "add")
        if combine not in ("add", "multiply", "per_step"):
            problems.append(((*where, "combine"), f"add, multiply or per_step, got {combine!r}"))
            continue
        if combine == "per_step" and not component.has_step_rewards:
            problems.append(((*where, "combine"), f"per_step needs a component with step rewards (process), "
                             f"not {type_name}"))
            continue
        if multiplicative and combine != "multiply":
            problems.append(((*where, "combine"), f"{type_name} is a multiplier of the reward; use combine: multiply"))
            continue
        weights = _schedule_extremes(weight) if isinstance(weight, Schedule) else [weight]
        if not is_user and min(weights) < 0:
            problems.append(((*where, "weight"), "must be ≥ 0: a negative weight turns this reward into its opposite "
                             "(use a penalty component, or wrap it in a user function if you mean it)"))
        if combine == "multiply" and weights != [1.0]:
            problems.append(((*where, "weight"), "a multiplicative component multiplies by its raw value; leave weight at 1"))
        gate_on, gate_threshold = None, 0.0
        gate = spec.get("gate")
        if gate is not None:
            if not isinstance(gate, Mapping) or set(gate) - {"on", "threshold"} or "on" not in gate:
                problems.append(((*where, "gate"), "expected {on: <reward entry>, threshold: <number>}"))
            elif gate["on"] not in specs or gate["on"] == name:
                problems.append(((*where, "gate", "on"), f"must name another entry of rewards, got {gate['on']!r}"))
            else:
                gate_on, gate_threshold = str(gate["on"]), float(gate.get("threshold", 0.0))
        constraint = None
        spec_c = spec.get("constraint")
        if spec_c is not None:
            bounds = [b for b in ("at_least", "at_most") if isinstance(spec_c, Mapping) and b in spec_c]
            extra = set(spec_c) - {"at_least", "at_most", "lr", "initial"} if isinstance(spec_c, Mapping) else {"?"}
            if len(bounds) != 1 or extra or combine != "add":  # (per_step and multiply take no constraint)
                problems.append(((*where, "constraint"), "expected {at_least: θ} or {at_most: θ}, optional lr and initial, "
                                 "on an added component"))
            else:
                init = float(spec_c.get("initial", 0.0))
                constraint = Constraint(bound=bounds[0], threshold=float(spec_c[bounds[0]]), lr=float(spec_c.get("lr", 0.1)),
                                        initial=init, value=init)
                if constraint.lr <= 0 or init < 0 or not all(map(math.isfinite, (constraint.threshold, constraint.lr, init))):
                    problems.append(((*where, "constraint"), "lr must be > 0 and initial ≥ 0, all finite"))
        parts.append(WeightedComponent(name=name, weight=weight, component=component, combine=combine, gate_on=gate_on,
                                       gate_threshold=gate_threshold, scheduled_params=scheduled, type_name=type_name,
                                       constraint=constraint))
    for p in parts:
        if p.combine == "per_step" and p.gate_on is not None:
            problems.append((("rewards", p.name, "gate"), "a per_step component cannot be gated"))
    if mode == "normalize_then_sum" and any(p.combine == "multiply" for p in parts):
        problems.append((("reward_combine",), "normalize_then_sum cannot be used with multiplicative components"))
    if problems:
        raise RewardConfigError(problems)
    return RewardSet(parts, mode=mode)  # type: ignore[arg-type]
