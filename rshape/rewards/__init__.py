"""Reward components by short name, and building a weighted set of them from a recipe."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

import importlib

from rshape.registry import Registry, UnknownName
from rshape.rewards.base import RewardBatch, RewardComponent
from rshape.rewards.combine import RewardSet, WeightedComponent

# Each family module defines COMPONENTS = {registry name: class}.
FAMILY_MODULES = ["correctness", "format", "length"]

REWARDS: Registry[type[RewardComponent]] = Registry("reward")
for _module in FAMILY_MODULES:
    for _name, _cls in importlib.import_module(f"rshape.rewards.{_module}").COMPONENTS.items():
        REWARDS.register(_name)(_cls)

# Entry names that imply a type when `type` is not given: `length:` means the Kimi reward.
DEFAULT_TYPE = {"length": "kimi_length"}

__all__ = ["REWARDS", "RewardBatch", "RewardComponent", "RewardSet", "RewardConfigError", "build_rewards"]


class RewardConfigError(Exception):
    """Problems with the `rewards` section: a list of (key path, message)."""

    def __init__(self, problems: list[tuple[tuple[str, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(k)}: {m}" for k, m in problems))


def build_rewards(specs: Mapping[str, Any], max_new_tokens: int | None = None) -> RewardSet:
    """Instantiate every component the recipe names; collect every problem before raising."""
    problems: list[tuple[tuple[str, ...], str]] = []
    parts: list[WeightedComponent] = []
    for name, spec in specs.items():
        spec = spec if isinstance(spec, Mapping) else spec.model_dump()
        params = {k: v for k, v in spec.items() if k not in ("type", "weight")}
        type_name = spec.get("type") or DEFAULT_TYPE.get(name, name)
        try:
            cls = REWARDS.get(type_name)
        except UnknownName as exc:
            problems.append((("rewards", name, "type"), str(exc)))
            continue
        try:
            component = cls.model_validate(params)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ("rewards", name, *(str(p) for p in err["loc"]))
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
                problems.append((loc, msg))
            continue
        parts.append(WeightedComponent(name=name, weight=float(spec.get("weight", 1.0)), component=component))
    if problems:
        raise RewardConfigError(problems)
    return RewardSet(parts)
