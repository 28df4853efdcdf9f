"""CurriculumSampler: a drop-in for rshape.sampler.PromptSampler with orders, stages, retirement,
medium upweighting and difficulty-aware length budgets (docs/methods.md).

Two ways to draw, chosen per step:

- **walk** (the current stage has no mixture and medium_weight is 1): epochs over the pool in an order
  fixed at the epoch's start — a permutation seeded by (seed, epoch) for `random` (exactly PromptSampler's),
  or that permutation stably sorted easiest first for `easy_to_hard`; retired prompts are skipped.
- **weighted** (a mixture or medium_weight ≠ 1): each prompt gets weight mixture[group]/|group| ×
  medium_weight (if medium); n prompts are drawn without replacement (more passes if n exceeds the
  candidates) from a generator seeded by (seed, number of previous draws) — no generator state to save.

Stage logic runs in `report(step, metrics)`, called once per step after the step's draws.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rshape.curriculum.config import BUCKETS, CurriculumConfig
from rshape.curriculum.trackers import RATE_EPS, DifficultyTracker, build_tracker, label_of
from rshape.schedules import parse_schedule
from rshape.tasks.base import Problem

GROUPS = (*BUCKETS, "unknown")


class CurriculumSampler:
    """Draws the prompts of each step as `curriculum` says; `state_dict()` is plain data and a resume is exact.

    Loop contract: `next(n)` for every batch of prompts (several per step under dynamic sampling);
    `observe(ids, pass_rates, step)` after scoring each batch (one entry per group, before any filtering);
    `metrics()` into the step's log; `report(step, metrics)` at the end of the step.
    """

    def __init__(self, pool: Sequence[Problem], seed: int, config: CurriculumConfig | dict[str, Any] | None = None, *,
                 estimate: Callable[[list[Problem]], list[float]] | None = None,
                 cache_path: str | os.PathLike | None = None, tracker: DifficultyTracker | None = None) -> None:
        if not pool:
            raise ValueError("the train pool is empty")
        if config is None:
            config = CurriculumConfig()
        elif not isinstance(config, CurriculumConfig):
            config = CurriculumConfig.model_validate(config)
        self.cfg = config
        self.pool = list(pool)
        self.seed = seed
        self.tracker = tracker if tracker is not None else build_tracker(
            config.tracker, self.pool, label_key=config.label, seed=seed, estimate=estimate, cache_path=cache_path)
        self._budgets = {name: (parse_schedule(v) if isinstance(v, dict) else v)
                         for name in GROUPS if (v := getattr(config.budgets, name)) is not None}
        order_by = config.order_by
        if order_by == "auto":
            order_by = "label" if config.tracker.kind == "static" else "pass_rate"
        self._order_by = order_by
        # ---- state
        self.epoch = 0
        self.cursor = 0
        self.draws = 0  # next() calls so far: seeds the weighted draws
        self.stage = 0
        self.stage_steps = 0  # steps reported in the current stage
        self.last_step = 0  # last step given to report()
        self.window: list[float] = []  # recent values of the current stage's `until` metric
        self.history: list[dict[str, Any]] = []  # {"stage", "name", "step"}: the first step of each later stage
        self._drawn = dict.fromkeys(GROUPS, 0)  # buckets drawn since the last report
        self._targets = [0.0, 0]  # sum and count of target lengths given since the last report
        self._flags = {"retire_fallback": 0.0, "mixture_fallback": 0.0}
        self._order = self._epoch_order(0)

    # ------------------------------------------------------------------ public
    @property
    def stage_name(self) -> str:
        return self.cfg.stage_name(self.stage)

    def observe(self, problem_ids: Sequence[str], pass_rates: Sequence[float], step: int) -> None:
        """Record the group pass rates of a scored batch (forwarded to the tracker)."""
        self.tracker.observe(problem_ids, pass_rates, step)

    def next(self, n: int, step: int | None = None) -> list[Problem]:
        """n prompts for step `step` (default: the step after the last reported one), with length targets set."""
        stage = self.cfg.stages[self.stage]
        weighted = stage.mixture is not None or self.cfg.medium_weight != 1.0
        idx = self._next_weighted(n, stage) if weighted else self._next_walk(n)
        self.draws += 1
        step = self.last_step + 1 if step is None else step
        out = []
        for i in idx:
            p = self.pool[i]
            self._drawn[self.tracker.bucket(p) or "unknown"] += 1
            out.append(self._with_target(p, step))
        return out

    def target_length(self, problem: Problem, step: int | None = None) -> float | None:
        """The length budget of the prompt's current bucket at `step` (default: the next step); None = no budget."""
        spec = self._budgets.get(self.tracker.bucket(problem) or "unknown")
        if spec is None:
            return None
        if isinstance(spec, (int, float)):
            return float(spec)
        return float(spec(self.last_step + 1 if step is None else step))

    def report(self, step: int, metrics: dict[str, Any]) -> None:
        """End of step `step`: count it in the stage, feed the promotion window, move on when the stage is over."""
        self.last_step = int(step)
        self.stage_steps += 1
        stage = self.cfg.stages[self.stage]
        until = stage.until
        if until is not None:
            v = metrics.get(until.metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.window = [*self.window, float(v)][-until.window:]
        leave = False
        if self.stage < len(self.cfg.stages) - 1:
            if stage.steps is not None and self.stage_steps >= stage.steps:
                leave = True
            if until is not None and len(self.window) >= until.window:
                mean = sum(self.window) / len(self.window)
                leave |= mean >= until.above if until.above is not None else mean <= until.below
            if stage.max_steps is not None and self.stage_steps >= stage.max_steps:
                leave = True
        if leave:
            self.stage += 1
            self.stage_steps = 0
            self.window = []
            self.history.append({"stage": self.stage, "name": self.stage_name, "step": self.last_step + 1})
        self._drawn = dict.fromkeys(GROUPS, 0)
        self._targets = [0.0, 0]
        self._flags = dict.fromkeys(self._flags, 0.0)

    def metrics(self) -> dict[str, float]:
        """`curriculum/...` numbers for the step's log (call before report())."""
        retired = len(self._retired(range(len(self.pool))))
        m: dict[str, float] = {
            "curriculum/stage": float(self.stage),
            "curriculum/stage_steps": float(self.stage_steps),
            "curriculum/retired": float(retired),
            "curriculum/retired_frac": retired / len(self.pool),
            **{f"curriculum/{k}": v for k, v in self._flags.items()},
        }
        drawn = sum(self._drawn.values())
        if drawn:
            m.update({f"curriculum/drawn/{g}": c / drawn for g, c in self._drawn.items()})
        if self._targets[1]:
            m["curriculum/target_length_mean"] = self._targets[0] / self._targets[1]
        until = self.cfg.stages[self.stage].until
        if until is not None and self.window:
            m["curriculum/until_mean"] = sum(self.window) / len(self.window)
        m.update({f"curriculum/{k}": v for k, v in self.tracker.metrics().items()})
        return m

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "pool_size": len(self.pool), "epoch": self.epoch, "cursor": self.cursor,
            "order": list(self._order), "draws": self.draws, "stage": self.stage, "stage_steps": self.stage_steps,
            "last_step": self.last_step, "window": list(self.window), "history": [dict(h) for h in self.history],
            "drawn": dict(self._drawn), "targets": list(self._targets), "flags": dict(self._flags),
            "tracker": self.tracker.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) == {"epoch", "cursor", "seed"}:  # a PromptSampler checkpoint: continue its walk
            self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
            self._order = self._epoch_order(self.epoch)
            return
        if state["pool_size"] != len(self.pool):
            raise ValueError(f"sampler state is for a pool of {state['pool_size']} prompts, this pool has {len(self.pool)}")
        if state["stage"] >= len(self.cfg.stages):
            raise ValueError(f"sampler state is in stage {state['stage']}, the curriculum has {len(self.cfg.stages)} stages")
        self.seed = state["seed"]
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = list(state["order"])
        self.draws = state["draws"]
        self.stage, self.stage_steps, self.last_step = state["stage"], state["stage_steps"], state["last_step"]
        self.window = list(state["window"])
        self.history = [dict(h) for h in state["history"]]
        self._drawn = dict(state["drawn"])
        self._targets = list(state["targets"])
        self._flags = dict(state["flags"])
        self.tracker.load_state_dict(state["tracker"])

    # ------------------------------------------------------------------ internals
    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)  # = PromptSampler's permutation
        perm = torch.randperm(len(self.pool), generator=g).tolist()
        if self.cfg.order == "random":
            return perm
        return sorted(perm, key=lambda i: self._ease_key(self.pool[i]))  # stable: ties keep the seeded order

    def _ease_key(self, p: Problem) -> tuple:
        """Sort key, easiest first: ascending label, or descending pass rate; unknown last."""
        if self._order_by == "label":
            v = label_of(p, self.cfg.label)
            if v is None:
                return (2, 0.0, "")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return (0, float(v), "")
            return (1, 0.0, str(v))
        r = self.tracker.pass_rate(p)
        return (1, 0.0) if r is None else (0, -r)

    def _retired(self, indices) -> set[int]:
        rc = self.cfg.retire
        if not rc.enabled:
            return set()
        out = set()
        for i in indices:
            p = self.pool[i]
            if self.tracker.visits(p) < rc.min_visits:
                continue
            r = self.tracker.last(p) if rc.signal == "last" else self.tracker.pass_rate(p)
            if r is not None and r >= rc.threshold - RATE_EPS:
                out.add(i)
        return out

    def _next_walk(self, n: int) -> list[int]:
        retired = self._retired(range(len(self.pool)))
        if len(retired) == len(self.pool):  # retiring everything would empty the pool: keep them all
            retired = set()
            self._flags["retire_fallback"] = 1.0
        unique = n <= len(self.pool) - len(retired)  # then no prompt twice in one call, even across an epoch end
        out: list[int] = []
        taken: set[int] = set()
        while len(out) < n:
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._epoch_order(self.epoch)
            i = self._order[self.cursor]
            if i in retired:
                self.cursor += 1
                continue
            if unique and i in taken:  # drawn just before the epoch ended: postpone it within the new epoch
                j = next(j for j in range(self.cursor + 1, len(self._order))
                         if self._order[j] not in taken and self._order[j] not in retired)
                self._order[self.cursor], self._order[j] = self._order[j], i
                i = self._order[self.cursor]
            self.cursor += 1
            out.append(i)
            taken.add(i)
        return out

    def _group(self, p: Problem, by: str) -> str:
        if by == "bucket":
            return self.tracker.bucket(p) or "unknown"
        v = label_of(p, self.cfg.label)
        return "unknown" if v is None else str(v)

    def _next_weighted(self, n: int, stage) -> list[int]:
        everyone = range(len(self.pool))
        mixed = stage.mixture is not None
        mass = {str(k): float(w) for k, w in stage.mixture.items()} if mixed else {}
        groups = [self._group(p, stage.mixture_by) for p in self.pool] if mixed else []
        eligible = [i for i in everyone if mass.get(groups[i], 0.0) > 0] if mixed else list(everyone)
        if not eligible:  # no prompt in any group of the mixture: draw from the whole pool, uniformly
            eligible, mixed = list(everyone), False
            self._flags["mixture_fallback"] = 1.0
        retired = self._retired(eligible)
        active = [i for i in eligible if i not in retired]
        if not active:  # retiring them all would empty the pool: keep them
            active = eligible
            self._flags["retire_fallback"] = 1.0
        sizes: dict[str, int] = {}
        for i in active if mixed else ():
            sizes[groups[i]] = sizes.get(groups[i], 0) + 1
        weights = []
        for i in active:
            w = mass[groups[i]] / sizes[groups[i]] if mixed else 1.0
            if self.cfg.medium_weight != 1.0 and self.tracker.bucket(self.pool[i]) == "medium":
                w *= self.cfg.medium_weight
            weights.append(w)
        w = torch.tensor(weights, dtype=torch.float64)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + 998_244_353 * (self.draws + 1)) % (1 << 63))
        out: list[int] = []
        while len(out) < n:  # passes without replacement; a prompt repeats only when n exceeds the candidates
            k = min(n - len(out), len(active))
            picks = torch.multinomial(w, k, replacement=False, generator=g).tolist()
            out.extend(active[j] for j in picks)
        return out

    def _with_target(self, p: Problem, step: int) -> Problem:
        if not self._budgets:
            return p
        key = self.cfg.budgets.key
        meta = p.meta or {}
        if self.cfg.budgets.keep_existing and key in meta:
            t = meta[key]
            if isinstance(t, (int, float)):
                self._targets[0] += float(t)
                self._targets[1] += 1
            return p
        t = self.target_length(p, step)
        if t is None:
            return p
        self._targets[0] += t
        self._targets[1] += 1
        return dataclasses.replace(p, meta={**meta, key: t})
