"""The numbers a verdict reads from a finished sweep: per method (setting label) and seed, the first and final
evaluations, any evaluation step, and windows of the training metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rshape.results import find_runs, read_jsonl


class SweepData:
    """Finished trials of one sweep directory, keyed by method (the joined axis labels) and seed."""

    def __init__(self, sweep_dir: str | Path) -> None:
        self.dir = Path(sweep_dir)
        self.runs: dict[str, dict[int, Path]] = {}
        for info in find_runs(self.dir):
            if info.status != "done":
                continue
            method = ",".join(dict.fromkeys(info.labels.values())) or info.setting
            self.runs.setdefault(method, {})[int(info.seed or 0)] = info.run_dir
        self._evals: dict[Path, list[dict[str, Any]]] = {}
        self._metrics: dict[Path, list[dict[str, Any]]] = {}

    def methods(self) -> list[str]:
        return list(self.runs)

    def seeds(self, method: str) -> list[int]:
        return sorted(self.runs.get(method, {}))

    def evals(self, run_dir: Path) -> list[dict[str, Any]]:
        if run_dir not in self._evals:
            self._evals[run_dir] = read_jsonl(run_dir / "eval.jsonl")
        return self._evals[run_dir]

    def metrics(self, run_dir: Path) -> list[dict[str, Any]]:
        if run_dir not in self._metrics:
            self._metrics[run_dir] = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "step" in r]
        return self._metrics[run_dir]

    def _per_seed(self, method: str, pick) -> dict[int, float]:
        out = {}
        for seed, run_dir in self.runs.get(method, {}).items():
            v = pick(run_dir)
            if v is not None:
                out[seed] = float(v)
        return out

    def final(self, method: str, key: str) -> dict[int, float]:
        """The last evaluation's `key` (e.g. `eval/accuracy/difficulty_5`) per seed."""
        return self._per_seed(method, lambda d: (self.evals(d) or [{}])[-1].get(key))

    def first(self, method: str, key: str) -> dict[int, float]:
        """The step-0 evaluation's `key` per seed."""
        return self._per_seed(method, lambda d: (self.evals(d) or [{}])[0].get(key))

    def change(self, method: str, key: str) -> dict[int, float]:
        """Final − step-0 evaluation of `key` per seed."""
        a, b = self.final(method, key), self.first(method, key)
        return {s: a[s] - b[s] for s in a if s in b}

    def at_step(self, method: str, key: str, step: int) -> dict[int, float]:
        """`key` of the evaluation at `step` (the latest one at or before it) per seed."""
        def pick(d: Path) -> Any:
            rows = [e for e in self.evals(d) if e.get("step", 0) <= step]
            return rows[-1].get(key) if rows else None
        return self._per_seed(method, pick)

    def window(self, method: str, key: str, start: float, end: float) -> dict[int, float]:
        """Mean of training metric `key` over the steps in the fraction [start, end) of the run, per seed."""
        def pick(d: Path) -> Any:
            rows = self.metrics(d)
            n = len(rows)
            sel = [r[key] for r in rows[int(start * n): max(int(start * n) + 1, int(end * n))] if r.get(key) is not None]
            return sum(sel) / len(sel) if sel else None
        return self._per_seed(method, pick)

    def last_eval_step(self) -> int:
        steps = [e.get("step", 0) for runs in self.runs.values() for d in runs.values() for e in self.evals(d)]
        return max(steps) if steps else 0
