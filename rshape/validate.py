"""The checks of an `rl` recipe that need the registries: reward types and parameters, the advantage estimator's
parameters, schedules, phases and data files. `rshape.recipe` holds the schema; this module sits above the
registries, and `rl`, `sweep` and `phases` load recipes through `load_recipe`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache
from pydantic import ValidationError

from rshape.recipe import (
    KeySource,
    Recipe,
    RecipeError,
    phase_recipe,
    read_with_overrides,
    validation_problems,
)
from rshape.registry import UnknownName
from rshape.rewards import RewardConfigError, build_rewards
from rshape.rl.advantages import ADVANTAGES, check_advantage_params
from rshape.rows import parse_rows
from rshape.schedules import parse_schedule
from rshape.tasks.worlds import BUILTIN_MODELS


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), need_hub_cache: bool = True) -> Recipe:
    """Read, override and validate a recipe completely; raise RecipeError listing every problem at once: a schema
    error elsewhere does not hide the checks of the rewards or of the estimator's parameters. `need_hub_cache=False`
    (a dry run) accepts a Hub model id that is not cached under HF_HUB_OFFLINE=1."""
    data, source = read_with_overrides(path, overrides)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        errors = source.validation_lines(exc)
        located = {line.split(": ", 2)[1] for line in errors}
        errors += [e for e in _section_errors(data, source) if e.split(": ", 2)[1] not in located]
        raise RecipeError(errors) from None
    errors = check_recipe(recipe, source, need_hub_cache)
    if errors:
        raise RecipeError(errors)
    return recipe


def _reward_errors(rewards: Any, mode: str, source: KeySource) -> list[str]:
    """Reward types, parameters, weights, gates and constraints (rshape.rewards.build_rewards's problems)."""
    try:
        build_rewards(rewards, mode=mode)
    except RewardConfigError as exc:
        return [source.line(loc, msg) for loc, msg in exc.problems]
    return []


def _estimator_errors(name: str, params: dict[str, Any], source: KeySource) -> list[str]:
    """The advantage estimator's name and parameters."""
    try:
        fn = ADVANTAGES.get(name)
    except UnknownName as exc:
        return [source.line(("algorithm", "advantage"), str(exc))]
    return [source.line(("algorithm", "advantage_params", *key), msg) for key, msg in check_advantage_params(fn, params)]


def _section_errors(data: dict, source: KeySource) -> list[str]:
    """The registry checks of the sections that can be read on their own (rewards, the estimator's parameters),
    for a recipe whose schema failed elsewhere."""
    errors: list[str] = []
    rewards = data.get("rewards")
    if isinstance(rewards, dict) and rewards and all(isinstance(v, dict) for v in rewards.values()):
        mode = data.get("reward_combine")
        errors += _reward_errors(rewards, mode if mode == "normalize_then_sum" else "sum_then_normalize", source)
    algorithm = data.get("algorithm")
    if isinstance(algorithm, dict) and isinstance(algorithm.get("advantage_params", {}), dict):
        errors += _estimator_errors(str(algorithm.get("advantage", "grpo")), algorithm.get("advantage_params", {}), source)
    return errors


def check_recipe(recipe: Recipe, source: KeySource, need_hub_cache: bool = True) -> list[str]:
    """Validate what the schema cannot: reward names and parameters, estimator parameters, schedules, phases,
    the token-budget schedule and data files. One error line each."""
    errors = _reward_errors(recipe.rewards, recipe.reward_combine, source)
    errors += _estimator_errors(recipe.algorithm.advantage, recipe.algorithm.advantage_params, source)
    for name, spec in recipe.schedules.items():
        try:
            parse_schedule(spec)
        except ValidationError as exc:  # a schedule's first location is its tag
            errors += [source.line(loc, msg) for loc, msg in validation_problems(exc, ("schedules", name), skip=1)]
    errors += _phase_errors(recipe, source)
    errors += _model_errors(recipe, source, need_hub_cache)
    errors += _tracker_errors(recipe, source)
    budget_source = recipe.rollout.max_new_tokens_from
    if budget_source is not None and budget_source not in recipe.schedules:
        errors.append(source.line(("rollout", "max_new_tokens_from"), f"no schedule named {budget_source!r} in `schedules`"))
    errors += _task_errors(recipe.task, source)
    return errors


def _task_errors(task: Any, source: KeySource) -> list[str]:
    """A dataset task's sources (a local path must exist; `hf:` names are checked when read), and evaluation rows
    that would overlap the training rows of the same split."""
    if not task.dataset():
        return []
    errors = []
    if not task.train_file:
        errors.append(source.line(("task", "train_file"), f"needed when task.name is {task.name}", at=("task", "name")))
    for key in ("train_file", "eval_file"):
        f = getattr(task, key)
        if f and not f.startswith("hf:") and not Path(f).exists():
            errors.append(source.line(("task", key), f"file not found: {f}"))
    if task.train_file and task.eval_from_training_split() and task.eval_rows is not None:
        train, held = parse_rows(task.train_rows), parse_rows(task.eval_rows)
        t0, t1 = train.start or 0, train.stop if train.stop is not None else math.inf
        e0, e1 = held.start or 0, held.stop if held.stop is not None else math.inf
        if max(t0, e0) < min(t1, e1):
            errors.append(source.line(("task", "eval_rows"), f"overlaps task.train_rows ({task.train_rows or 'every row'}) "
                                      "of the same split: evaluation must be held out"))
    return errors


def _tracker_errors(recipe: Recipe, source: KeySource) -> list[str]:
    """An enabled tracker needs its package: looked up with find_spec, not imported (validation stays light)."""
    import importlib.util

    return [source.line(("trackers", name, "enabled"), f"needs the {name} package: pip install 'rshape[trackers]'")
            for name in ("tensorboard", "wandb")
            if getattr(recipe.trackers, name).enabled and importlib.util.find_spec(name) is None]


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


def _looks_like_path(name: str) -> bool:
    """A local directory, not a Hub id (`org/name`): it exists, starts like a path, or has more than one `/`."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def model_problems(model: Any, need_hub_cache: bool = True) -> list[tuple[tuple[str, ...], str]]:
    """(key, problem) for a `model` section that cannot load: the name must be a local directory with config.json,
    a shipped `builtin:` policy, or a Hub id that is cached when HF_HUB_OFFLINE=1; an adapter needs
    adapter_config.json. Nothing is loaded."""
    problems: list[tuple[tuple[str, ...], str]] = []
    name = model.name
    if name.startswith("builtin:"):
        if name not in BUILTIN_MODELS:
            problems.append((("model", "name"), f"unknown built-in model {name!r}; valid: {', '.join(BUILTIN_MODELS)}"))
    elif _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            problems.append((("model", "name"), f"no such directory: {name}"))
        elif not (path / "config.json").is_file():
            problems.append((("model", "name"), f"{name} has no config.json: not a Hugging Face model directory (point "
                             "at the folder save_pretrained wrote)"))
    elif need_hub_cache and os.environ.get("HF_HUB_OFFLINE") == "1" and \
            not isinstance(try_to_load_from_cache(name, "config.json"), str):
        problems.append((("model", "name"), f"{name!r} is neither a local directory nor in the Hugging Face cache, and "
                         "HF_HUB_OFFLINE=1: download it first or give a local directory"))
    adapter = model.adapter
    if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        problems.append((("model", "adapter"), f"{adapter} is not a LoRA adapter directory (no adapter_config.json)"))
    return problems


def _model_errors(recipe: Recipe, source: KeySource, need_hub_cache: bool = True) -> list[str]:
    """The policy and adapter must be loadable (`model_problems`), and output_dir a directory (checked before anything
    is written)."""
    errors = [source.line(loc, msg) for loc, msg in model_problems(recipe.model, need_hub_cache)]
    out = Path(recipe.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        errors.append(source.line(("output_dir",), f"{recipe.output_dir} is a file, not a directory"))
    return errors
