"""`rshape eval`: evaluate run directories, checkpoints, adapters and models on one task, in one or more sampling
modes, into one comparison table (screen) and `results.json` + per-row samples (output directory).

A target is
- a run directory (`runs/x`): its latest checkpoint, or `runs/x@N` for step N (`@0`: the model before training);
- a LoRA adapter directory (has `adapter_config.json`; its base is the adapter's `base_model_name_or_path`);
- a model: a Hub id, a local directory or `builtin:tiny-<world>`.
The task and the generation settings come from `--recipe`, else from the first run directory's recipe, else from
the defaults (for a built-in policy: its world's digit counts). The metrics are rshape.evaluate's, as in `rl`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rshape.recipe import ModelConfig, Recipe, RecipeError


class TargetError(Exception):
    """A target that cannot be evaluated (one line: the target and what to do)."""


@dataclass(frozen=True)
class Target:
    """What one row evaluates: a label for the table and the `model` section that loads it."""

    label: str
    model: ModelConfig
    recipe: Recipe | None  # the run's own recipe, for a run directory


def resolve_target(spec: str) -> Target:
    """A command-line target → Target (see the module docstring), checked like a recipe's `model` section
    (rshape.validate.model_problems). Touches only files: no model loads."""
    from rshape.validate import model_problems

    target = _target(spec)
    problems = model_problems(target.model)
    if problems:
        raise TargetError(f"{spec}: {problems[0][1]}")
    return target


def _target(spec: str) -> Target:
    from rshape.runs import CHECKPOINTS, latest_checkpoint
    from rshape.validate import load_recipe

    path_part, _, step = spec.rpartition("@") if "@" in spec and not spec.startswith("builtin:") else (spec, "", "")
    path = Path(path_part)
    if (path / "recipe.yaml").is_file() and (path / CHECKPOINTS).is_dir():
        try:
            recipe = load_recipe(path / "recipe.yaml")
        except RecipeError as exc:
            raise TargetError(f"{spec}: the run's recipe.yaml does not validate: {exc.lines[0]}") from None
        if step == "0":  # where the run started: its base model (with the adapter it continued, if any)
            start = recipe.model if recipe.model.adapter else recipe.model.model_copy(
                update={"lora": recipe.model.lora.model_copy(update={"enabled": False})})
            return Target(f"{path.name}@0", start, recipe)
        if step:
            if not step.isdigit():
                raise TargetError(f"{spec}: expected RUN_DIR@STEP with a step number")
            ckpt = path / CHECKPOINTS / f"step_{int(step):06d}"
            if not (ckpt / "model").is_dir():
                kept = sorted(p.name for p in (path / CHECKPOINTS).glob("step_*") if (p / "model").is_dir())
                raise TargetError(f"{spec}: no checkpoint at step {int(step)}; kept: {', '.join(kept) or 'none'}")
        else:
            latest = latest_checkpoint(path)
            if latest is None:
                raise TargetError(f"{spec}: the run has no checkpoint yet")
            ckpt = latest
        label = f"{path.name}@{int(ckpt.name.removeprefix('step_'))}"
        weights = ckpt / "model"
        if (weights / "adapter_config.json").is_file():
            return Target(label, recipe.model.model_copy(update={"adapter": str(weights)}), recipe)
        return Target(label, recipe.model.model_copy(update={"name": str(weights), "adapter": None,
                                                             "lora": recipe.model.lora.model_copy(update={"enabled": False})}),
                      recipe)
    if step:
        raise TargetError(f"{spec}: @STEP needs a run directory (with recipe.yaml and checkpoints/)")
    if (path / "adapter_config.json").is_file():
        try:
            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        except (OSError, ValueError, KeyError) as exc:
            raise TargetError(f"{spec}: adapter_config.json has no base_model_name_or_path ({exc})") from None
        return Target(path.name, ModelConfig(name=base, adapter=str(path)), None)
    if path_part.startswith("builtin:") or (path / "config.json").is_file():
        return Target(path_part, ModelConfig(name=path_part, lora={"enabled": False}), None)
    if path.exists():
        raise TargetError(f"{spec}: not a run directory (recipe.yaml + checkpoints/), an adapter "
                          "(adapter_config.json) or a model directory (config.json)")
    return Target(path_part, ModelConfig(name=path_part, lora={"enabled": False}), None)  # a Hub id


def eval_recipe(targets: list[Target], recipe_file: str | None, overrides: list[str]) -> Recipe:
    """The recipe whose task, rollout and eval sections every target is scored with."""
    from rshape.tasks.worlds import BUILTIN_WORLDS, WORLDS
    from rshape.validate import load_recipe

    if recipe_file is not None:
        return load_recipe(recipe_file, overrides)
    for t in targets:
        if t.recipe is not None:
            return t.recipe if not overrides else _with_overrides(t.recipe, overrides)
    world = next((BUILTIN_WORLDS[t.model.name] for t in targets if t.model.name in BUILTIN_WORLDS), None)
    data: dict[str, Any] = {}
    if world is not None:
        w = WORLDS[world]
        data = {"task": {"difficulties": list(w.difficulties), "eval_per_difficulty": w.eval_per_difficulty},
                "rollout": {"max_new_tokens": w.max_new_tokens}}
    return _with_overrides(Recipe.model_validate(data), overrides)


def _with_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    import tempfile

    from rshape.recipe import recipe_to_yaml
    from rshape.validate import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "recipe.yaml"
        f.write_text(recipe_to_yaml(recipe))
        return load_recipe(f, overrides)


def evaluate_targets(targets: list[Target], recipe: Recipe, modes: list[int], *, temperature: float | None,
                     top_p: float | None, max_new_tokens: int | None, seed: int, device: str, dtype: str,
                     out_dir: Path, console: Any = None) -> list[dict[str, Any]]:
    """Every target in every mode (0 = greedy, k = k samples per problem); one result row each, written to
    `out_dir/results.json` with each row's completions in `out_dir/samples-<row>.jsonl`."""
    import torch

    from rshape.evaluate import evaluate_policy
    from rshape.models import load_policy, resolve_device, resolve_dtype
    from rshape.tasks import build_task

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    task = build_task(recipe.task, recipe.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ro, ev = recipe.rollout, recipe.eval
    limit = max_new_tokens or ev.max_new_tokens or ro.max_new_tokens
    rows: list[dict[str, Any]] = []
    for target in targets:
        if console is not None:
            console.print(f"loading {target.label} ({target.model.name}"
                          + (f" + adapter {target.model.adapter}" if target.model.adapter else "") + ")")
        policy = load_policy(target.model, dev, dt)
        policy.model.eval()
        for k in modes:
            temp = temperature if temperature is not None else (ev.temperature or ro.temperature)
            nucleus = top_p if top_p is not None else (ev.top_p or ro.top_p)
            mode = f"avg@{k} (T={temp:g}, top-p={nucleus:g})" if k else "greedy"
            if console is not None:
                console.print(f"evaluating {target.label}: {mode}, {len(task.eval)} problems, ≤ {limit} tokens")
            t0 = time.perf_counter()
            with torch.no_grad():
                metrics, records = evaluate_policy(policy.model, policy.tokenizer, task, max_new_tokens=limit,
                                                   batch_size=ev.batch_size, device=dev, decoder=ro.decoder,
                                                   samples=k, temperature=temp, top_p=nucleus, seed=seed)
            row = {"target": target.label, "model": target.model.name, "adapter": target.model.adapter,
                   "mode": mode, "samples": k, "temperature": temp if k else None, "top_p": nucleus if k else None,
                   "max_new_tokens": limit, "seed": seed, "eval_set": task.eval_source,
                   "seconds": round(time.perf_counter() - t0, 1), "metrics": metrics}
            with open(out_dir / f"samples-{len(rows)}.jsonl", "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
            rows.append(row)
        del policy
    (out_dir / "results.json").write_text(json.dumps(_finite(rows), indent=2))
    return rows


def _finite(v: Any) -> Any:
    """NaN (no value: e.g. tokens of right answers when none is right) → null, so results.json is valid JSON."""
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _num(x: float, digits: int) -> str:
    text = f"{x:.{digits}f}"
    return text[1:] if digits == 3 and text.startswith("0.") else text  # .927: accuracies fit a narrow column


def _cell(m: dict[str, float], key: str, digits: int, suffix: str = "") -> str:
    """`value (low–high)`, the 95% interval; `-` when there is no value."""
    value = m.get(f"{key}{suffix}")
    if value is None or value != value:
        return "-"
    low, high = m.get(f"{key}_low{suffix}"), m.get(f"{key}_high{suffix}")
    text = f"{value:.{digits}f}"
    if low is not None and high is not None and low == low and high == high:
        text += f" ({_num(low, digits)}–{_num(high, digits)})"
    return text


def print_comparison(rows: list[dict[str, Any]], console: Any) -> None:
    """Every (target, mode) row: accuracy and pass@k; tokens of all, right and wrong answers and truncation; then
    accuracy and tokens per difficulty. Each number with its 95% interval in brackets."""
    from rich import box
    from rich.table import Table

    if not rows:
        return
    first = rows[0]
    sampled = sorted({(r["temperature"], r["top_p"]) for r in rows if r["samples"]})
    how = "; ".join(f"sampled at T={t:g}, top-p={p:g}" for t, p in sampled)
    head = f"{first['eval_set']}, {int(first['metrics']['eval/problems'])} problems, ≤ {first['max_new_tokens']} tokens" + \
        (f"; {how}" if how else "")

    def table(title: str, columns: list[str]) -> Table:
        t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for col in ["target", "mode", *columns]:
            t.add_column(col, justify="left" if col in ("target", "mode") else "right", no_wrap=True)
        return t

    pass_keys = sorted({k for r in rows for k in r["metrics"] if k.startswith("eval/pass@") and k.count("/") == 1
                        and not k.endswith(("_low", "_high"))}, key=lambda k: int(k.split("@")[1]))
    mode = {r["mode"]: ("greedy" if not r["samples"] else f"avg@{r['samples']}") for r in rows}
    accuracy = table(f"accuracy (95% interval) — {head}", ["accuracy", *[k.removeprefix("eval/") for k in pass_keys]])
    tokens = table("mean tokens (95% interval)", ["all", "right answers", "wrong answers", "truncated"])
    for r in rows:
        m = r["metrics"]
        accuracy.add_row(r["target"], mode[r["mode"]], _cell(m, "eval/accuracy", 3), *[_cell(m, k, 3) for k in pass_keys])
        tokens.add_row(r["target"], mode[r["mode"]], _cell(m, "eval/length", 1), _cell(m, "eval/length_correct", 1),
                       _cell(m, "eval/length_wrong", 1), f"{m['eval/truncation']:.3f}")
    console.print(accuracy)
    console.print(tokens)
    difficulties = sorted({int(k.rsplit("_", 1)[1]) for r in rows for k in r["metrics"]
                           if k.startswith("eval/accuracy/difficulty_")})
    if difficulties:
        per = table("per difficulty (95% interval)", ["difficulty", "accuracy", *[k.removeprefix("eval/") for k in
                                                                                   pass_keys[-1:]], "mean tokens"])
        for r in rows:
            m = r["metrics"]
            for d in difficulties:
                if f"eval/accuracy/difficulty_{d}" in m:
                    per.add_row(r["target"], mode[r["mode"]], str(d), _cell(m, "eval/accuracy", 3, f"/difficulty_{d}"),
                                *[_cell(m, k, 3, f"/difficulty_{d}") for k in pass_keys[-1:]],
                                _cell(m, "eval/length", 1, f"/difficulty_{d}"))
            per.add_section()
        console.print(per)
