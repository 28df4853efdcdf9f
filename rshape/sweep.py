"""`rshape sweep`: a base recipe plus axes → trials, run as separate processes, state kept on disk.

    # rshape sweep recipes/sweep_demo.yaml
    base: quickstart.yaml                 # relative to the sweep file
    output_dir: runs/sweep_demo           # relative to the working directory, like a recipe's output_dir
    overrides: [train.steps=30]           # applied to every trial
    grid:   {optim.lr: [1.0e-3, 3.0e-3]}  # every combination of the grid axes
    zip:    {rewards.length: {kimi: {...}, tlts: {...}}, schedules: [{}, {budget: {...}}]}   # paired, equal lengths
    random: {count: 4, seed: 0, axes: {optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}, model.lora.r: {choice: [8, 16]}}}
    seeds: [0, 1]

Settings are grid × zip × random (each section optional); every setting runs once per seed. An axis is
a list of values or a mapping `label: value` (the label names the trial). A trial is named from its
axis values, `length=kimi,lr=0.001,seed=0`, and runs `python -m rshape.cli rl BASE OVERRIDES...
output_dir=SWEEP/NAME` with its output in `SWEEP/NAME/log.txt`. `SWEEP/trials.json` holds every
trial's status (pending, running, done, failed, interrupted), error line, return code and attempts;
it is rewritten atomically after every change. A trial is done when `rl` exited 0 and its
summary.json exists; a re-run skips done trials and retries the others (with `--resume` from their
latest checkpoint when there is one, from scratch otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import random as _random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

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
    """Trials at once (default: the number of GPUs, else CPU cores // 2)."""
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
    from rshape.recipe import RecipeError, parse_override

    def where(*loc: str) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in lines:
                return f"{source}:{lines[loc[:n]]}"
        return source

    errors = []
    sections = {"grid": spec.grid, "zip": spec.zip, "random": spec.random.axes if spec.random else {}}
    owner: dict[str, str] = {}
    for section, axes in sections.items():
        loc0 = ("random", "axes") if section == "random" else (section,)
        for key, vals in axes.items():
            if key in RESERVED_AXES:
                errors.append(f"{where(*loc0, key)}: {section}.{key}: not an axis: {RESERVED_AXES[key]}")
            if any(not p for p in key.split(".")):
                errors.append(f"{where(*loc0, key)}: {section}.{key}: empty part in the dotted key")
            if key in owner:
                errors.append(f"{where(*loc0, key)}: {section}.{key}: already an axis in {owner[key]}")
            owner.setdefault(key, section)
            if section != "random" and len(vals) == 0:
                errors.append(f"{where(*loc0, key)}: {section}.{key}: needs at least one value")
    lengths = {k: len(v) for k, v in spec.zip.items()}
    if len(set(lengths.values())) > 1:
        first = next(iter(lengths))
        for key, n in lengths.items():
            if n != lengths[first]:
                errors.append(f"{where('zip', key)}: zip.{key}: {n} values but zip.{first} has {lengths[first]}; "
                              "zip axes are paired and need equal lengths")
    for i, item in enumerate(spec.overrides):
        try:
            keys, _ = parse_override(item)
        except RecipeError as exc:
            errors += [f"{where('overrides', str(i))}: overrides.{i}: {m}" for m in exc.lines]
            continue
        if keys == ["output_dir"]:
            errors.append(f"{where('overrides', str(i))}: overrides.{i}: output_dir is set by the sweep; "
                          "use the sweep file's output_dir")
    from rshape.results import check_rank_by

    if (msg := check_rank_by(spec.rank_by)) is not None:
        errors.append(f"{where('rank_by')}: rank_by: {msg}")
    if spec.seeds is not None and (not spec.seeds or len(set(spec.seeds)) != len(spec.seeds)):
        errors.append(f"{where('seeds')}: seeds: give a non-empty list of distinct seeds")
    return errors


def load_sweep(path: str | Path, extra_overrides: list[str] | tuple[str, ...] = (),
               output_dir: str | Path | None = None) -> Sweep:
    """Read and validate a sweep file, expand its trials and validate every trial's recipe.

    Mistakes in the sweep file raise SweepError (one line each, naming file, line and key); a trial
    whose recipe does not validate is returned with `error` set, so the others can still run.
    """
    from rshape.recipe import RecipeError, _format_errors, _line_index, load_recipe, parse_override

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
    lines = _line_index(text)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SweepError(_format_errors(exc, str(p), lines, set())) from None
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
    if spec.seeds is not None:
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


# --------------------------------------------------------------------------- state on disk


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_state(sweep_dir: Path) -> dict[str, Any]:
    f = Path(sweep_dir) / STATE_FILE
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise SweepError(f"{f}: unreadable state file ({exc}); move it away to start the sweep afresh") from None


def _is_done(record: dict[str, Any], run_dir: Path) -> bool:
    return record.get("status") == "done" and record.get("returncode") == 0 and (run_dir / "summary.json").is_file()


def _has_checkpoint(run_dir: Path) -> bool:
    pointer = run_dir / "checkpoints" / "latest"
    return pointer.is_file() and (run_dir / "checkpoints" / pointer.read_text().strip() / "state.pt").is_file()


class State:
    """trials.json: one record per trial, rewritten atomically on every change (by the driver only)."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.path = sweep.output_dir / STATE_FILE
        old = read_state(sweep.output_dir)
        old_records = {r["name"]: r for r in old.get("trials", [])}
        self.records: dict[str, dict[str, Any]] = {}
        changed = []
        for t in sweep.trials:
            prev = old_records.get(t.name, {})
            rec = {
                **{k: v for k, v in prev.items() if k not in ("error_lines",)},
                "name": t.name, "setting": t.setting, "seed": t.seed, "run_dir": t.name,
                "axes": t.labels, "values": t.values, "overrides": t.overrides, "fingerprint": t.fingerprint,
                "status": prev.get("status", "pending"), "error": prev.get("error"),
                "returncode": prev.get("returncode"), "attempts": prev.get("attempts", 0),
                "started_at": prev.get("started_at"), "finished_at": prev.get("finished_at"),
                "duration_s": prev.get("duration_s"),
            }
            if prev and prev.get("fingerprint") and t.fingerprint and prev["fingerprint"] != t.fingerprint \
                    and t.run_dir.exists():
                changed.append(t.name)
            if t.error is not None:
                rec.update(status="failed", error=t.error, error_lines=t.error_lines, returncode=None)
            elif rec["status"] == "done" and not _is_done(rec, t.run_dir):
                rec.update(status="pending", error="summary.json missing: rerun")
            elif not prev and (t.run_dir / "summary.json").is_file():
                rec.update(status="done", returncode=0, error=None)  # finished before the state file was lost
            self.records[t.name] = rec
        if changed:
            raise SweepError([f"{sweep.output_dir / n}: this trial ran with a different recipe (the base recipe or "
                              "the overrides changed); use --out or another output_dir, or delete the trial directory"
                              for n in changed])

    def write(self) -> None:
        self.sweep.output_dir.mkdir(parents=True, exist_ok=True)
        axes = [{"key": a.key, "short": a.short, "section": a.section, "labels": a.labels} for a in self.sweep.axes]
        write_json_atomic(self.path, {
            "sweep_file": str(self.sweep.file.resolve()), "base": str(self.sweep.base),
            "overrides": [*self.sweep.spec.overrides, *self.sweep.extra_overrides], "seeds": self.sweep.seeds,
            "axes": axes, "rank_by": self.sweep.spec.rank_by, "updated_at": _now(),
            "trials": list(self.records.values())})

    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(STATUSES, 0)
        for r in self.records.values():
            c[r["status"]] = c.get(r["status"], 0) + 1
        return c


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# --------------------------------------------------------------------------- one trial process


def trial_command(sweep: Sweep, trial: Trial, resume: bool) -> list[str]:
    """The `rl` command line of a trial, without the interpreter (each backend prepends its own)."""
    argv = ["-m", "rshape.cli", "rl", str(sweep.base), *trial.overrides,
            format_override("output_dir", str(trial.run_dir))]
    return [*argv, "--resume"] if resume else argv


def last_error(log: Path, returncode: int | None) -> str:
    """The line that says why a trial failed: the first `error:` line, else the log's last line."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error:")]
    if errs:
        msg = errs[0].removeprefix("error:").strip() + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else "")
    elif returncode is not None and returncode < 0:
        try:
            msg = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            msg = f"killed by signal {-returncode}"
    else:
        msg = (lines[-1] if lines else "no output") + f" (exit code {returncode})"
    return msg[:400]


class TrialProcess:
    """One `rl` subprocess in its own session, output to log.txt; killable with its whole process group."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str], cwd: str, timeout: float | None) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "a", encoding="utf-8")
        self._log.write(f"# {_now()} {' '.join(argv)}\n")
        self._log.flush()
        self.started = time.monotonic()
        self.timeout = timeout
        self.timed_out = False
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is None and self.timeout is not None and time.monotonic() - self.started > self.timeout:
            self.timed_out = True
            self.stop(grace=5.0)
            rc = self.proc.returncode
        if rc is not None:
            self._log.close()
        return rc

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def wait(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        while (rc := self.poll()) is None:
            if should_stop():
                self.stop()
                return self.proc.returncode
            time.sleep(0.2)
        return rc


def run_trial_blocking(argv: list[str], log: str, env_extra: dict[str, str], cwd: str,
                       timeout: float | None) -> dict[str, Any]:
    """Run one trial to the end where this is called (a Ray worker); the result the driver records."""
    env = {**os.environ, **env_extra}
    tp = TrialProcess([sys.executable, *argv], Path(log), env, cwd, timeout)
    try:
        rc = tp.wait()
    finally:  # ray.cancel raises KeyboardInterrupt here: take the child down with us
        tp.stop(grace=5.0)
    return {"returncode": rc, "timed_out": tp.timed_out}


# --------------------------------------------------------------------------- running a sweep


def default_parallel(gpus: list[str]) -> int:
    if gpus:
        return len(gpus)
    return max(1, _cpu_count() // 2)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch or no driver: CPU
        return []


@contextlib.contextmanager
def _signals_to_flag(flag: dict[str, int | None]) -> Iterator[None]:
    """SIGINT/SIGTERM set flag['signum'] (a second Ctrl-C still interrupts at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if flag.get("signum") is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signum"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _prepare_builtin_models(sweep: Sweep, todo: list[Trial]) -> None:
    """Build a missing built-in policy once here, not in every trial at the same time."""
    names = {t.model_name for t in todo if t.model_name and t.model_name.startswith("builtin:")}
    if not names:
        return
    from rshape.models import BUILTIN_MODELS, resolve_model_path

    for name in sorted(names):
        if name in BUILTIN_MODELS and not (BUILTIN_MODELS[name] / "config.json").is_file():
            _log(f"building the built-in model {name} once before the trials start")
            resolve_model_path(name)


@dataclass
class SweepOutcome:
    sweep_dir: Path
    counts: dict[str, int]
    failed: list[tuple[str, str]]
    results: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary_line(self) -> str:
        c = self.counts
        parts = [f"{c['done']} done", f"{c['failed']} failed"]
        for s in ("interrupted", "pending", "running"):
            if c.get(s):
                parts.append(f"{c[s]} {s}")
        line = f"sweep {self.sweep_dir}: {sum(c.values())} trials: " + ", ".join(parts)
        if self.failed:
            name, err = self.failed[0]
            more = f" (and {len(self.failed) - 1} more, see {STATE_FILE})" if len(self.failed) > 1 else ""
            line += f"; first failure {name}: {err}{more}"
        return line


def plan(sweep: Sweep) -> list[tuple[Trial, str]]:
    """What a run would do with each trial: `skip (done)`, `run`, `resume`, `invalid: …`."""
    state = State(sweep)
    out = []
    for t in sweep.trials:
        rec = state.records[t.name]
        if t.error:
            out.append((t, f"invalid: {t.error}"))
        elif rec["status"] == "done":
            out.append((t, "skip (done)"))
        elif _has_checkpoint(t.run_dir):
            out.append((t, "resume"))
        else:
            out.append((t, "run"))
    return out


def run_sweep(sweep: Sweep, max_parallel: int | None = None, backend: Literal["local", "ray"] = "local",
              ray_address: str | None = None, rank_by: str | None = None,
              command: Callable[[Sweep, Trial, bool], list[str]] = trial_command) -> SweepOutcome:
    """Run every trial that is not done; write trials.json all along and the results at the end.

    Raises SweepInterrupted after Ctrl-C/SIGTERM (children stopped, state consistent).
    """
    sweep.output_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(sweep.output_dir)
    try:
        state = State(sweep)
        for rec in state.records.values():  # a driver killed hard leaves `running` behind
            if rec["status"] == "running":
                _stop_orphan(rec, sweep.output_dir / rec["run_dir"])
                rec.update(status="interrupted", error="the sweep process stopped while this trial ran")
        state.write()
        with contextlib.suppress(shutil.SameFileError, OSError):
            shutil.copyfile(sweep.file, sweep.output_dir / "sweep.yaml")  # the sweep as it was last run
        todo = [t for t in sweep.trials if state.records[t.name]["status"] != "done" and t.error is None]
        for t in sweep.trials:
            if t.error is not None:
                _log(f"invalid {t.name}: {t.error}")
        skipped = sum(1 for t in sweep.trials if state.records[t.name]["status"] == "done")
        if skipped:
            _log(f"{skipped} trial(s) already done, skipped")
        _prepare_builtin_models(sweep, todo)
        limit = max_parallel or sweep.spec.max_parallel
        flag: dict[str, int | None] = {"signum": None}
        with _signals_to_flag(flag):
            if backend == "ray":
                _run_ray(sweep, state, todo, limit, ray_address, flag, command)
            else:
                _run_local(sweep, state, todo, limit, flag, command)
        state.write()
        outcome = SweepOutcome(sweep.output_dir, state.counts(),
                               [(r["name"], r.get("error") or "?") for r in state.records.values()
                                if r["status"] == "failed"])
        if flag["signum"] is not None:
            raise SweepInterrupted(flag["signum"])
        if any(r["status"] == "done" for r in state.records.values()):
            from rshape.results import write_results

            outcome.results = list(write_results(sweep.output_dir, rank_by=rank_by or sweep.spec.rank_by))
        return outcome
    finally:
        lock.close()


def _stop_orphan(rec: dict[str, Any], run_dir: Path) -> None:
    """A trial process left running by a driver that was killed (SIGKILL): stop it before the retry.

    The sweep lock is ours, so no other driver owns it; it is only touched if its command line names this
    trial's run directory.
    """
    pid = rec.get("pid")
    if not pid or rec.get("backend") != "local":
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if "rshape.cli" not in cmdline or f"output_dir={run_dir}" not in cmdline:
        return
    _log(f"stopping the orphaned process {pid} of {rec['name']}")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    for _ in range(50):
        if not _alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    except (OSError, IndexError):
        return False


def _lock(sweep_dir: Path):
    import fcntl

    f = open(sweep_dir / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise SweepError(f"{sweep_dir}: another `rshape sweep` is running on this directory") from None
    return f


def _start(sweep: Sweep, state: State, trial: Trial) -> bool:
    """Get the trial directory ready; True to resume from its checkpoint."""
    rec = state.records[trial.name]
    resume = _has_checkpoint(trial.run_dir)
    if not resume and trial.run_dir.exists():
        shutil.rmtree(trial.run_dir)  # a partial run with nothing to resume from: start again
    trial.run_dir.mkdir(parents=True, exist_ok=True)
    rec.update(status="running", error=None, returncode=None, attempts=rec["attempts"] + 1, started_at=_now(),
               finished_at=None, duration_s=None, resumed=resume)
    state.write()
    _log(f"start  {trial.name}" + (" (resuming from its checkpoint)" if resume else "")
         + (f" (attempt {rec['attempts']})" if rec["attempts"] > 1 else ""))
    return resume


def _finish(state: State, trial: Trial, rc: int | None, elapsed: float, error: str | None = None) -> None:
    """Record how a trial ended: done when `rl` exited 0 and wrote summary.json, failed otherwise."""
    rec = state.records[trial.name]
    rec.update(returncode=rc, finished_at=_now(), duration_s=round(elapsed, 1))
    if error is None and rc == 0 and (trial.run_dir / "summary.json").is_file():
        rec.update(status="done", error=None)
        final = json.loads((trial.run_dir / "summary.json").read_text()).get("final_eval", {})
        acc, tok = final.get("eval/accuracy"), final.get("eval/length")
        extra = f": eval accuracy {acc:.3f}, {tok:.1f} tokens" if acc is not None and tok is not None else ""
        _log(f"done   {trial.name} in {elapsed:.0f} s{extra}")
    else:
        if error is None:
            error = "exited 0 without writing summary.json" if rc == 0 else last_error(trial.run_dir / LOG_FILE, rc)
        rec.update(status="failed", error=error)
        _log(f"failed {trial.name}: {error}  (log: {trial.run_dir / LOG_FILE})")
    state.write()


def _interrupt(state: State, trial: Trial) -> None:
    state.records[trial.name].update(status="interrupted", error="interrupted (Ctrl-C or SIGTERM); rerun to resume",
                                     finished_at=_now(), returncode=None)


def _run_local(sweep: Sweep, state: State, todo: list[Trial], limit: int | None, flag: dict[str, int | None],
               command: Callable[[Sweep, Trial, bool], list[str]]) -> None:
    gpus = visible_gpus()
    limit = limit or default_parallel(gpus)
    threads = str(max(1, _cpu_count() // limit))
    _log(f"{len(todo)} trial(s) to run, {limit} at once" + (f" on GPUs {','.join(gpus)}" if gpus else " on the CPU")
         + f" → {sweep.output_dir}")
    queue = list(todo)
    running: dict[int, tuple[Trial, TrialProcess]] = {}  # slot → trial
    hard = False
    try:
        while (queue or running) and flag["signum"] is None:
            for slot in range(limit):
                if slot in running or not queue or flag["signum"] is not None:
                    continue
                trial = queue.pop(0)
                resume = _start(sweep, state, trial)
                env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
                env.setdefault("OMP_NUM_THREADS", threads)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                try:
                    tp = TrialProcess([sys.executable, *command(sweep, trial, resume)], trial.run_dir / LOG_FILE, env,
                                      os.getcwd(), sweep.spec.trial_timeout)
                except OSError as exc:
                    _finish(state, trial, None, 0.0, error=f"could not start: {exc}")
                    continue
                running[slot] = (trial, tp)
                state.records[trial.name].update(pid=tp.proc.pid, backend="local")
                state.write()
            time.sleep(0.2)
            for slot, (trial, tp) in list(running.items()):
                rc = tp.poll()
                if rc is not None:
                    del running[slot]
                    _finish(state, trial, rc, time.monotonic() - tp.started,
                            error=f"timed out after {tp.timeout:g} s" if tp.timed_out else None)
    except BaseException:
        hard = True  # a second Ctrl-C or a bug here: the children must not outlive us
        raise
    finally:
        if running:
            _log(f"stopping {len(running)} running trial(s)…")
            for _, tp in running.values():
                tp.signal(signal.SIGKILL if hard else signal.SIGTERM)
            for trial, tp in running.values():
                tp.stop(grace=0.0 if hard else 10.0)
                _interrupt(state, trial)
            state.write()


def _run_ray(sweep: Sweep, state: State, todo: list[Trial], limit: int | None, address: str | None,
             flag: dict[str, int | None], command: Callable[[Sweep, Trial, bool], list[str]]) -> None:
    try:
        import ray
    except ImportError:
        raise SweepError("--backend ray needs Ray: pip install 'rshape[sweep-ray]' (or pip install ray)") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address in (None, "", "local"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    opts = sweep.spec.ray
    task = ray.remote(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, max_retries=0)(run_trial_blocking)
    env_extra = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                 "OMP_NUM_THREADS": str(max(1, int(opts.num_cpus)))}
    limit = limit or len(todo) or 1  # Ray queues what its resources cannot run yet
    _log(f"{len(todo)} trial(s) to run on Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs in the cluster), "
         f"up to {limit} at once → {sweep.output_dir}")
    queue = list(todo)
    running: dict[Any, tuple[Trial, float]] = {}
    try:
        while (queue or running) and flag["signum"] is None:
            while queue and len(running) < limit:
                trial = queue.pop(0)
                resume = _start(sweep, state, trial)
                ref = task.remote(command(sweep, trial, resume), str(trial.run_dir / LOG_FILE), env_extra,
                                  os.getcwd(), sweep.spec.trial_timeout)
                running[ref] = (trial, time.monotonic())
                state.records[trial.name].update(pid=None, backend="ray")
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                trial, t0 = running.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the worker died: record it as the trial's failure
                    text = str(exc).strip().splitlines()
                    _finish(state, trial, None, time.monotonic() - t0,
                            error="Ray task failed: " + (text[0][:300] if text else repr(exc)))
                    continue
                timeout = sweep.spec.trial_timeout
                _finish(state, trial, res["returncode"], time.monotonic() - t0,
                        error=f"timed out after {timeout:g} s" if res["timed_out"] else None)
    finally:
        if running:
            _log(f"cancelling {len(running)} running trial(s)…")
            for ref in running:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)  # KeyboardInterrupt in the task: it stops its child process group
            stuck = list(running)
            with contextlib.suppress(Exception):
                _, stuck = ray.wait(list(running), num_returns=len(running), timeout=15)
            for ref in stuck:  # only tasks still running: force-cancelling a finished one upsets Ray
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            for trial, _ in running.values():
                _interrupt(state, trial)
            state.write()
        if started_here:
            ray.shutdown()
