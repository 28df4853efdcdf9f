"""The sweep file: its schema, loading with line-numbered errors, and expansion into trials."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random as _random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

STATE_FILE = "trials.json"
LOG_FILE = "log.txt"
STATUSES = ("pending", "running", "done", "failed", "interrupted")
RESERVED_AXES = {"seed": "use `seeds:` for seeds", "output_dir": "the sweep sets each trial's output_dir"}
GENERIC_LEAVES = {"type", "weight", "name", "enabled", "value", "start", "end", "r", "alpha", "every", "steps"}


class SweepError(Exception):
    """A user mistake in a sweep file or sweep directory: one line per problem, no traceback."""

    def __init__(self, lines: list[str] | str) -> None:
        self.lines = [lines] if isinstance(lines, str) else lines
        super().__init__("\n".join(self.lines))


class SweepInterrupted(Exception):
    """Ctrl-C (or SIGTERM): children were stopped, their trials marked interrupted, the state written."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


# --------------------------------------------------------------------------- the sweep file schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """One random axis: exactly one of the keys below."""

    choice: list[Any] | None = None
    """Pick one of the values uniformly."""
    uniform: tuple[float, float] | None = None
    """Uniform on [low, high]."""
    log_uniform: tuple[float, float] | None = None
    """Log-uniform on [low, high] (both > 0), e.g. learning rates."""
    int_uniform: tuple[int, int] | None = None
    """A uniform integer in [low, high], both included."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, uniform, log_uniform, int_uniform"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.choice is not None and not self.choice:
            raise ValueError("choice: needs at least one value")
        for name in ("uniform", "log_uniform", "int_uniform"):
            lo_hi = getattr(self, name)
            if lo_hi is not None and not lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"{name}: low must be ≤ high (got {list(lo_hi)})")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError(f"log_uniform: bounds must be > 0 (got {list(self.log_uniform)})")
        return self

    def sample(self, rng: _random.Random) -> Any:
        if self.choice is not None:
            return self.choice[rng.randrange(len(self.choice))]
        if self.int_uniform is not None:
            return rng.randint(*self.int_uniform)
        if self.uniform is not None:
            x = rng.uniform(*self.uniform)
        else:
            lo, hi = self.log_uniform  # type: ignore[misc]
            x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return float(f"{x:.4g}")  # the trial name shows exactly the value the trial runs with


def _bare_list_is_choice(v: Any) -> Any:
    return {"choice": v} if isinstance(v, list) else v


class RandomSection(_Strict):
    count: int = Field(gt=0)
    """How many settings to draw."""
    seed: int = 0
    """Seeds the draws (not the trials: those use `seeds`)."""
    axes: dict[str, Annotated[Distribution, BeforeValidator(_bare_list_is_choice)]]
    """Recipe key → distribution (a bare list means `choice`)."""


class RayOptions(_Strict):
    num_cpus: float = Field(1.0, gt=0)
    """CPUs Ray reserves for each trial (also its torch thread count)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs Ray reserves for each trial (Ray sets CUDA_VISIBLE_DEVICES)."""


AxisValues = list[Any] | dict[str, Any]


class SweepSpec(_Strict):
    """The whole sweep file."""

    base: str
    """The base recipe, relative to the sweep file."""
    output_dir: str | None = None
    """The sweep directory (default `runs/<sweep file name>`), relative to the working directory."""
    overrides: list[str] = []
    """Dotted overrides applied to every trial, before the axes."""
    grid: dict[str, AxisValues] = {}
    """Axes crossed with each other: every combination runs."""
    zip: dict[str, AxisValues] = {}
    """Axes walked together: the i-th values of every zip axis form one setting (equal lengths)."""
    random: RandomSection | None = None
    """`count` settings drawn with `seed` from the distributions in `axes`."""
    seeds: list[int] | None = None
    """Each setting runs once per seed (default: the base recipe's seed)."""
    max_parallel: int | None = Field(None, gt=0)
    """Trials at once (default: the number of GPUs, else the CPU cores, one thread each)."""
    rank_by: str = "accuracy"
    """Results column that picks the best setting (see `rshape results --help`)."""
    trial_timeout: float | None = Field(None, gt=0)
    """Seconds after which a trial is killed and marked failed (default: none)."""
    ray: RayOptions = RayOptions()
    """Resources of each trial under `--backend ray`."""


# --------------------------------------------------------------------------- expansion


@dataclass
class Axis:
    key: str
    section: str  # grid | zip | random
    values: list[Any]
    labels: list[str]
    short: str = ""
    labeled: bool = False  # given as a `label: value` mapping


@dataclass
class Setting:
    name: str
    values: dict[str, Any]  # recipe key → value
    labels: dict[str, str]  # recipe key → label


@dataclass
class Trial:
    name: str
    setting: str
    seed: int
    values: dict[str, Any]
    labels: dict[str, str]
    overrides: list[str]
    run_dir: Path
    error: str | None = None  # set when the recipe does not validate
    error_lines: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    model_name: str | None = None


@dataclass
class Sweep:
    file: Path
    spec: SweepSpec
    base: Path
    output_dir: Path
    axes: list[Axis]
    settings: list[Setting]
    seeds: list[int]
    trials: list[Trial]
    extra_overrides: list[str]


def _sanitize(text: str, limit: int = 40) -> str:
    out = "".join(c if c.isalnum() or c in "._+-" else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out[:limit] or "x"


def _short_hash(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:6]


def value_label(value: Any) -> str:
    """A short, path-safe label of an axis value: numbers and strings as written, dicts by their `type`."""
    if value is None or value == {} or value == []:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return _sanitize(f"{value:.4g}")
    if isinstance(value, (int, str)):
        return _sanitize(str(value))
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return _sanitize(value["type"])
    if isinstance(value, dict) and len(value) == 1:
        return _sanitize(str(next(iter(value))))
    return "h" + _short_hash(value)


def _axis_labels(values: list[Any], given: list[str] | None) -> list[str]:
    labels = [_sanitize(g) for g in given] if given is not None else [value_label(v) for v in values]
    seen: dict[str, int] = {}
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
    if given is None:  # two different values with one label (e.g. two dicts of one type): add a hash
        labels = [f"{lab}-{_short_hash(v)}" if seen[lab] > 1 and _distinct(values, lab, labels) else lab
                  for lab, v in zip(labels, values)]
    return labels


def _distinct(values: list[Any], label: str, labels: list[str]) -> bool:
    same = [json.dumps(v, sort_keys=True, default=str) for v, lab in zip(values, labels) if lab == label]
    return len(set(same)) > 1


def short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix that tells each key apart (at least two parts when the last is generic)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            if n == 1 and parts[-1] in GENERIC_LEAVES and len(parts) > 1:
                continue
            cand = ".".join(parts[-n:])
            if not any(o != key and (o == cand or o.endswith("." + cand)) for o in keys):
                out[key] = cand
                break
        else:
            out[key] = key
    return out


def _axis(key: str, section: str, raw: AxisValues) -> Axis:
    if isinstance(raw, dict):
        return Axis(key, section, list(raw.values()), _axis_labels(list(raw.values()), [str(k) for k in raw]),
                    labeled=True)
    return Axis(key, section, list(raw), _axis_labels(list(raw), None))


def expand_settings(spec: SweepSpec) -> tuple[list[Axis], list[Setting]]:
    """grid × zip × random, in that nesting order (grid outermost, file order within a section)."""
    grid = [_axis(k, "grid", v) for k, v in spec.grid.items()]
    zipped = [_axis(k, "zip", v) for k, v in spec.zip.items()]
    random_axes: list[Axis] = []
    random_rows: list[list[int]] = [[]]
    if spec.random is not None:
        rng = _random.Random(spec.random.seed)
        draws = {k: [] for k in spec.random.axes}
        for _ in range(spec.random.count):
            for key, dist in spec.random.axes.items():
                draws[key].append(dist.sample(rng))
        random_axes = [_axis(k, "random", v) for k, v in draws.items()]
        random_rows = [[i] * len(random_axes) for i in range(spec.random.count)]
    axes = grid + zipped + random_axes
    shorts = short_names([a.key for a in axes])
    for a in axes:
        a.short = shorts[a.key]
    # A one-valued axis is just an override. Within zip, labelled axes name the setting when there are any
    # (the paired plain lists would only repeat them).
    zip_labeled = any(a.labeled for a in zipped)
    named = [a for a in axes if len(set(a.labels)) > 1 and not (a.section == "zip" and zip_labeled and not a.labeled)]

    grid_rows = list(itertools.product(*[range(len(a.values)) for a in grid])) if grid else [()]
    n_zip = len(zipped[0].values) if zipped else 0
    zip_rows = [[i] * len(zipped) for i in range(n_zip)] if zipped else [[]]
    settings: list[Setting] = []
    used: dict[str, int] = {}
    for g in grid_rows:
        for z in zip_rows:
            for r in random_rows:
                idx = dict(zip([id(a) for a in axes], [*g, *z, *r]))
                values = {a.key: a.values[idx[id(a)]] for a in axes}
                labels = {a.key: a.labels[idx[id(a)]] for a in axes}
                name = ",".join(f"{a.short}={labels[a.key]}" for a in named) or "base"
                used[name] = used.get(name, 0) + 1
                if used[name] > 1:  # e.g. two identical random draws
                    name = f"{name}-{used[name]}"
                settings.append(Setting(name, values, labels))
    return axes, settings


def format_override(key: str, value: Any) -> str:
    """key=value with the value in YAML flow style, so parse_override reads back exactly `value`."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 30).strip()
    text = text.removesuffix("...").strip()
    return f"{key}={text}"


# --------------------------------------------------------------------------- loading and validating


def _spec_errors(spec: SweepSpec, source: str, lines: dict[tuple[str, ...], int]) -> list[str]:
    from rshape.recipe import KeySource, RecipeError, parse_override

    keys = KeySource(source, lines)
    errors = []
    sections = {"grid": spec.grid, "zip": spec.zip, "random": spec.random.axes if spec.random else {}}
    owner: dict[str, str] = {}
    for section, axes in sections.items():
        at = ("random", "axes") if section == "random" else (section,)
        for key, vals in axes.items():
            loc, here = (section, key), (*at, key)
            if key in RESERVED_AXES:
                errors.append(keys.line(loc, f"not an axis: {RESERVED_AXES[key]}", at=here))
            if any(not p for p in key.split(".")):
                errors.append(keys.line(loc, "empty part in the dotted key", at=here))
            if key in owner:
                errors.append(keys.line(loc, f"already an axis in {owner[key]}", at=here))
            owner.setdefault(key, section)
            if section != "random" and len(vals) == 0:
                errors.append(keys.line(loc, "needs at least one value", at=here))
    lengths = {k: len(v) for k, v in spec.zip.items()}
    if len(set(lengths.values())) > 1:
        first = next(iter(lengths))
        for key, n in lengths.items():
            if n != lengths[first]:
                errors.append(keys.line(("zip", key), f"{n} values but zip.{first} has {lengths[first]}; "
                                        "zip axes are paired and need equal lengths"))
    for i, item in enumerate(spec.overrides):
        try:
            parsed, _ = parse_override(item)
        except RecipeError as exc:
            errors += [keys.line(("overrides", str(i)), m) for m in exc.lines]
            continue
        if parsed == ["output_dir"]:
            errors.append(keys.line(("overrides", str(i)), "output_dir is set by the sweep; use the sweep file's output_dir"))
    from rshape.results import check_rank_by

    if (msg := check_rank_by(spec.rank_by)) is not None:
        errors.append(keys.line(("rank_by",), msg))
    if spec.seeds is not None and (not spec.seeds or len(set(spec.seeds)) != len(spec.seeds)):
        errors.append(keys.line(("seeds",), "give a non-empty list of distinct seeds"))
    return errors


def load_sweep(path: str | Path, extra_overrides: list[str] | tuple[str, ...] = (),
               output_dir: str | Path | None = None, seeds: list[int] | None = None) -> Sweep:
    """Read and validate a sweep file, expand its trials and validate every trial's recipe.

    `seeds` replaces the file's seeds (e.g. one seed for a smoke run).

    Mistakes in the sweep file raise SweepError (one line each, naming file, line and key); a trial
    whose recipe does not validate is returned with `error` set, so the others can still run.
    """
    from rshape.recipe import KeySource, RecipeError, line_index, parse_override
    from rshape.validate import load_recipe

    p = Path(path)
    if not p.is_file():
        raise SweepError(f"{p}: sweep file not found")
    text = p.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SweepError(f"{p}{f':{mark.line + 1}' if mark else ''}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{p}: a sweep file is a mapping of keys, got {type(data).__name__}")
    lines = line_index(text)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SweepError(KeySource(str(p), lines).validation_lines(exc)) from None
    errors = _spec_errors(spec, str(p), lines)
    base = (p.parent / spec.base).resolve()
    if not base.is_file():
        errors.insert(0, f"{p}:{lines.get(('base',), 1)}: base: recipe file not found: {base}")
    for item in extra_overrides:
        try:
            keys, _ = parse_override(item)
            if keys == ["output_dir"]:
                errors.append("command line: output_dir is set by the sweep (use --out)")
        except RecipeError as exc:
            errors += [f"command line: {m}" for m in exc.lines]
    if errors:
        raise SweepError(errors)
    out = Path(output_dir or spec.output_dir or Path("runs") / p.stem).resolve()

    axes, settings = expand_settings(spec)
    common = [*spec.overrides, *extra_overrides]
    base_data = yaml.safe_load(base.read_text())  # with the overrides: what a finished trial ran (its fingerprint)
    if seeds is not None:
        seeds = list(seeds)
    elif spec.seeds is not None:
        seeds = list(spec.seeds)
    else:
        try:
            seeds = [load_recipe(base, common).seed]
        except RecipeError:
            seeds = [int((yaml.safe_load(base.read_text()) or {}).get("seed", 0) or 0)]
    trials = []
    for s in settings:
        for seed in seeds:
            name = f"{s.name},seed={seed}" if s.name != "base" else f"seed={seed}"
            overrides = [*common, *(format_override(k, v) for k, v in s.values.items()), f"seed={seed}"]
            run_dir = out / name
            trial = Trial(name, s.name, seed, s.values, s.labels, overrides, run_dir)
            try:
                recipe = load_recipe(base, [*overrides, format_override("output_dir", str(run_dir))])
            except RecipeError as exc:
                trial.error_lines = [line.removeprefix("command line: ") for line in exc.lines]
                trial.error = trial.error_lines[0] + (f" (+{len(exc.lines) - 1} more)" if len(exc.lines) > 1 else "")
            else:
                trial.model_name = recipe.model.name
            trial.fingerprint = _short_hash({"base": base_data, "overrides": overrides})
            trials.append(trial)
    return Sweep(p, spec, base, out, axes, settings, seeds, trials, list(extra_overrides))


