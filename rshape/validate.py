"""The checks of an `rl` recipe that need the registries: reward types and parameters, the advantage estimator's
parameters, schedules, phases and data files. `rshape.recipe` holds the schema; this module sits above the
registries, and `rl`, `sweep` and `phases` load recipes through `load_recipe`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from rshape.phases import phase_recipe
from rshape.recipe import KeySource, Recipe, RecipeError, read_with_overrides, validation_problems
from rshape.registry import UnknownName
from rshape.rewards import RewardConfigError, build_rewards
from rshape.rl.advantages import ADVANTAGES, check_advantage_params
from rshape.schedules import parse_schedule


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe completely; raise RecipeError listing every problem at once: a schema
    error elsewhere does not hide the checks of the rewards or of the estimator's parameters."""
    data, source = read_with_overrides(path, overrides)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        errors = source.validation_lines(exc)
        located = {line.split(": ", 2)[1] for line in errors}
        errors += [e for e in _section_errors(data, source) if e.split(": ", 2)[1] not in located]
        raise RecipeError(errors) from None
    errors = check_recipe(recipe, source)
    if errors:
        raise RecipeError(errors)
    return recipe


def _section_errors(data: dict, source: KeySource) -> list[str]:
    """The registry checks of the sections that can be read on their own (rewards, the estimator's parameters),
    for a recipe whose schema failed elsewhere."""
    errors: list[str] = []
    rewards = data.get("rewards")
    if isinstance(rewards, dict) and rewards:
        mode = data.get("reward_combine", "sum_then_normalize")
        try:
            build_rewards(rewards, mode=mode if mode in ("sum_then_normalize", "normalize_then_sum") else "sum_then_normalize")
        except RewardConfigError as exc:
            errors += [source.line(loc, msg) for loc, msg in exc.problems]
        except Exception:  # noqa: BLE001 - a malformed section is the schema's to report
            pass
    algorithm = data.get("algorithm")
    if isinstance(algorithm, dict) and isinstance(algorithm.get("advantage_params", {}), dict):
        try:
            fn = ADVANTAGES.get(str(algorithm.get("advantage", "grpo")))
            errors += [source.line(("algorithm", "advantage_params", *key), msg)
                       for key, msg in check_advantage_params(fn, algorithm.get("advantage_params", {}))]
        except UnknownName as exc:
            errors.append(source.line(("algorithm", "advantage"), str(exc)))
    return errors


def check_recipe(recipe: Recipe, source: KeySource) -> list[str]:
    """Validate what the schema cannot: reward names and parameters, estimator parameters, schedules, phases,
    the token-budget schedule and data files. One error line each."""
    errors: list[str] = []
    try:
        build_rewards(recipe.rewards, mode=recipe.reward_combine)
    except RewardConfigError as exc:
        errors += [source.line(loc, msg) for loc, msg in exc.problems]
    try:
        fn = ADVANTAGES.get(recipe.algorithm.advantage)
        errors += [source.line(("algorithm", "advantage_params", *key), msg)
                   for key, msg in check_advantage_params(fn, recipe.algorithm.advantage_params)]
    except UnknownName as exc:
        errors.append(source.line(("algorithm", "advantage"), str(exc)))
    for name, spec in recipe.schedules.items():
        try:
            parse_schedule(spec)
        except ValidationError as exc:  # a schedule's first location is its tag
            errors += [source.line(loc, msg) for loc, msg in validation_problems(exc, ("schedules", name), skip=1)]
    errors += _phase_errors(recipe, source)
    budget_source = recipe.rollout.max_new_tokens_from
    if budget_source is not None and budget_source not in recipe.schedules:
        errors.append(source.line(("rollout", "max_new_tokens_from"), f"no schedule named {budget_source!r} in `schedules`"))
    task = recipe.task
    if task.name == "jsonl":
        if not task.train_file:
            errors.append(source.line(("task", "train_file"), "needed when task.name is jsonl", at=("task", "name")))
        for key in ("train_file", "eval_file"):
            f = getattr(task, key)
            if f and not Path(f).is_file():
                errors.append(source.line(("task", key), f"file not found: {f}"))
    return errors


def _phase_errors(recipe: Recipe, source: KeySource) -> list[str]:
    """Each phase's recipe (base + its overrides) validated like a recipe of its own."""
    errors: list[str] = []
    base = recipe.model_dump(mode="json")
    for i, phase in enumerate(recipe.phases, 1):
        here = f"{source.where(('phases', str(i - 1)))}: phases.{i - 1} ({phase.name}): "
        try:
            sub = Recipe.model_validate(phase_recipe(base, phase, i, None, recipe.model.lora.enabled))
        except ValidationError as exc:
            errors += [here + f"{'.'.join(loc)}: {msg}" for loc, msg in validation_problems(exc)]
            continue
        errors += [line.replace(f"{source.path}: ", here, 1) for line in check_recipe(sub, KeySource(source.path))]
    return errors
