"""Difficulty trackers: a pass rate and an easy / medium / hard bucket per prompt (docs/methods.md).

Common interface (every tracker):

- `observe(problem_ids, pass_rates, step)` once per generated batch: one entry per prompt group, the mean
  correctness of its G samples;
- `pass_rate(problem) -> float | None` (None = unknown);
- `bucket(problem) -> "easy" | "medium" | "hard" | None` (None = unknown);
- `visits(problem)` and `last(problem)`: how often the prompt was observed and its latest group pass rate
  (every tracker keeps them; retirement reads them);
- `metrics()`: the distribution over the train pool (`tracker/known`, `tracker/easy|medium|hard` among the
  bucketed prompts, `tracker/pass_rate_mean`, `tracker/solved|unsolved` among the rated ones);
- `state_dict()` / `load_state_dict()` of plain data (dicts of str → int/float), so a resume is exact.

Kinds: `group_pass_rate` (the latest group pass rate), `ema` (moving average from a prior), `static` (a data
label through a mapping or terciles) and `probe` (the initial policy's pass rate, estimated once by a
callable the loop provides and cached to JSON).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rshape.curriculum.config import TrackerConfig
from rshape.tasks.base import Problem

RATE_EPS = 1e-9  # pass rates are float32 means (2/3 → 0.66666669); compare with a little slack


def label_of(problem: Problem, key: str | None) -> Any:
    """The static difficulty label: problem.difficulty, or problem.meta[key] when a key is given."""
    return problem.difficulty if key is None else (problem.meta or {}).get(key)


def bucket_of(rate: float, easy_above: float, hard_below: float) -> str:
    if rate >= easy_above - RATE_EPS:
        return "easy"
    if rate < hard_below - RATE_EPS:
        return "hard"
    return "medium"


class DifficultyTracker:
    """Base: counts visits and the latest group pass rate of each prompt; subclasses define pass_rate/bucket."""

    kind = "base"

    def __init__(self, pool: Sequence[Problem], easy_above: float = 2 / 3, hard_below: float = 1 / 3) -> None:
        self.pool = list(pool)
        self.easy_above, self.hard_below = easy_above, hard_below
        self._visits: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._last_step: dict[str, int] = {}

    # -------------------------------------------------------------- observations
    def observe(self, problem_ids: Sequence[str], pass_rates: Sequence[float], step: int) -> None:
        if len(problem_ids) != len(pass_rates):
            raise ValueError(f"observe: {len(problem_ids)} ids but {len(pass_rates)} pass rates")
        for pid, x in zip(problem_ids, pass_rates):
            x = float(x)
            self._visits[pid] = self._visits.get(pid, 0) + 1
            self._last[pid] = x
            self._last_step[pid] = int(step)
            self._update(pid, x)

    def _update(self, pid: str, x: float) -> None:
        """Kind-specific update after the base bookkeeping."""

    def visits(self, problem: Problem) -> int:
        return self._visits.get(problem.id, 0)

    def last(self, problem: Problem) -> float | None:
        return self._last.get(problem.id)

    # -------------------------------------------------------------- difficulty
    def pass_rate(self, problem: Problem) -> float | None:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must define pass_rate")

    def bucket(self, problem: Problem) -> str | None:
        rate = self.pass_rate(problem)
        return None if rate is None else bucket_of(rate, self.easy_above, self.hard_below)

    def metrics(self) -> dict[str, float]:
        n = len(self.pool)
        counts = {"easy": 0, "medium": 0, "hard": 0}
        rates = []
        for p in self.pool:
            b = self.bucket(p)
            if b is not None:
                counts[b] += 1
            r = self.pass_rate(p)
            if r is not None:
                rates.append(r)
        known = sum(counts.values())
        m = {"tracker/known": known / max(1, n)}
        m.update({f"tracker/{b}": c / known if known else 0.0 for b, c in counts.items()})
        if rates:
            m["tracker/pass_rate_mean"] = sum(rates) / len(rates)
            m["tracker/solved"] = sum(r >= 1.0 - RATE_EPS for r in rates) / len(rates)
            m["tracker/unsolved"] = sum(r <= RATE_EPS for r in rates) / len(rates)
        return m

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "visits": dict(self._visits), "last": dict(self._last),
                "last_step": dict(self._last_step)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"tracker state is for {state.get('kind')!r}, this tracker is {self.kind!r}")
        self._visits = dict(state["visits"])
        self._last = dict(state["last"])
        self._last_step = dict(state["last_step"])


class GroupPassRate(DifficultyTracker):
    """The pass rate of the prompt's group in the latest step it was drawn (free from the rollouts)."""

    kind = "group_pass_rate"

    def pass_rate(self, problem: Problem) -> float | None:
        return self._last.get(problem.id)


class EmaPassRate(DifficultyTracker):
    """p ← (1 − α)·p + α·x per observation x, starting from `prior`; unknown bucket below `min_visits`.

    pass_rate is None for a prompt never observed (the prior only seeds the first update)."""

    kind = "ema"

    def __init__(self, pool: Sequence[Problem], alpha: float = 0.3, prior: float = 0.5, min_visits: int = 1,
                 easy_above: float = 2 / 3, hard_below: float = 1 / 3) -> None:
        super().__init__(pool, easy_above, hard_below)
        self.alpha, self.prior, self.min_visits = alpha, prior, min_visits
        self._ema: dict[str, float] = {}

    def _update(self, pid: str, x: float) -> None:
        p = self._ema.get(pid, self.prior)
        self._ema[pid] = (1 - self.alpha) * p + self.alpha * x

    def pass_rate(self, problem: Problem) -> float | None:
        return self._ema.get(problem.id)

    def bucket(self, problem: Problem) -> str | None:
        if self.visits(problem) < self.min_visits:
            return None
        return super().bucket(problem)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ema": dict(self._ema)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._ema = dict(state["ema"])


class StaticLabel(DifficultyTracker):
    """Buckets from a data label through `mapping` (label → bucket), or the label's terciles over the pool.

    Terciles: each distinct label goes to easy / medium / hard by where the middle of its share of the sorted
    pool falls (< 1/3, < 2/3, else); smaller labels are easier. pass_rate is always None (no pass rate)."""

    kind = "static"

    def __init__(self, pool: Sequence[Problem], mapping: dict[Any, str] | None = None, label_key: str | None = None) -> None:
        super().__init__(pool)
        self.label_key = label_key
        if mapping is not None:
            self.mapping = {str(k): v for k, v in mapping.items()}
        else:
            self.mapping = self._terciles([label_of(p, label_key) for p in self.pool])

    @staticmethod
    def _terciles(labels: list[Any]) -> dict[str, str]:
        values = [v for v in labels if v is not None]
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values):
            raise ValueError("static tracker: terciles need numeric labels; give a `mapping` for other labels")
        n = len(values)
        out: dict[str, str] = {}
        below = 0
        for v in sorted(set(values)):
            c = values.count(v)
            mid = (below + c / 2) / n
            out[str(v)] = "easy" if mid < 1 / 3 else "medium" if mid < 2 / 3 else "hard"
            below += c
        return out

    def pass_rate(self, problem: Problem) -> float | None:
        return None

    def bucket(self, problem: Problem) -> str | None:
        label = label_of(problem, self.label_key)
        return None if label is None else self.mapping.get(str(label))


class ProbePassRate(DifficultyTracker):
    """The initial policy's pass rate per prompt, from `estimate(problems) -> list[float]` called once.

    With `cache_path`, estimates are read from that JSON file when it exists and only the prompts it lacks
    are estimated (then the file is rewritten); `limit` probes a seeded subset of the pool (others unknown)."""

    kind = "probe"

    def __init__(self, pool: Sequence[Problem], estimate: Callable[[list[Problem]], list[float]] | None = None,
                 cache_path: str | os.PathLike | None = None, limit: int | None = None, seed: int = 0,
                 easy_above: float = 2 / 3, hard_below: float = 1 / 3) -> None:
        super().__init__(pool, easy_above, hard_below)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        targets = self.pool
        if limit is not None and limit < len(self.pool):
            g = torch.Generator().manual_seed(seed * 1_000_003 + 424_242)
            idx = sorted(torch.randperm(len(self.pool), generator=g)[:limit].tolist())
            targets = [self.pool[i] for i in idx]
        self.rates: dict[str, float] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            cached = json.loads(self.cache_path.read_text())
            self.rates = {str(k): float(v) for k, v in cached.get("rates", {}).items()}
        missing = [p for p in targets if p.id not in self.rates]
        if missing:
            if estimate is None:
                raise ValueError(f"probe tracker: {len(missing)} prompts have no cached estimate "
                                 "and no estimate callable was given")
            values = list(estimate(missing))
            if len(values) != len(missing):
                raise ValueError(f"probe estimate returned {len(values)} values for {len(missing)} prompts")
            self.rates.update({p.id: float(v) for p, v in zip(missing, values)})
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_path.with_suffix(self.cache_path.suffix + ".tmp")
                tmp.write_text(json.dumps({"version": 1, "rates": self.rates}, indent=0, sort_keys=True))
                tmp.replace(self.cache_path)

    def pass_rate(self, problem: Problem) -> float | None:
        return self.rates.get(problem.id)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rates": dict(self.rates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rates = dict(state["rates"])


def build_tracker(cfg: TrackerConfig, pool: Sequence[Problem], *, label_key: str | None = None, seed: int = 0,
                  estimate: Callable[[list[Problem]], list[float]] | None = None,
                  cache_path: str | os.PathLike | None = None) -> DifficultyTracker:
    """The tracker a `curriculum.tracker` section describes (a probe runs `estimate` here, unless cached)."""
    if cfg.kind == "group_pass_rate":
        return GroupPassRate(pool, cfg.easy_above, cfg.hard_below)
    if cfg.kind == "ema":
        return EmaPassRate(pool, cfg.alpha, cfg.prior, cfg.min_visits, cfg.easy_above, cfg.hard_below)
    if cfg.kind == "static":
        return StaticLabel(pool, cfg.mapping, label_key)
    if cfg.kind == "probe":
        path = cfg.cache if cfg.cache is not None else cache_path
        return ProbePassRate(pool, estimate, path, cfg.limit, seed, cfg.easy_above, cfg.hard_below)
    raise ValueError(f"unknown tracker kind {cfg.kind!r}")  # pragma: no cover
