"""Run one reproduction: prepare (e.g. train a reward model), the sweep, results, figures, the verdict."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rshape.repro.claims import Claim
from rshape.repro.data import SweepData

REPRO_ROOT = Path("runs/repro")
# a smoke run checks the whole pipeline in seconds: 2 steps, 1 seed, tiny batches and eval split
SMOKE_OVERRIDES = ["train.steps=2", "train.checkpoint_every=0", "eval.every=0", "task.eval_per_difficulty=2",
                   "task.train_per_difficulty=20", "rollout.prompts_per_step=2", "rollout.group_size=2",
                   "rollout.max_new_tokens=16"]
SMOKE_PREPARE = {"train-rm": ["train.steps=2", "train.batch_size=2", "train.eval_every=0", "data.train_size=8",
                              "data.eval_size=4"]}


def _prepare(claim: Claim, out: Path, smoke: bool) -> list[str]:
    """Run the claim's preparation commands whose output is missing; → the overrides the sweep needs."""
    extra: list[str] = []
    for cmd in claim.prepare:
        name, recipe = cmd[0], cmd[1]
        target = out / Path(recipe).stem
        overrides = [*cmd[2:], f"output_dir={target}", *(SMOKE_PREPARE.get(name, []) if smoke else [])]
        if name == "train-rm":
            extra.append(f"rewards.rm.path={target / 'model'}")
            if (target / "model" / "rm_meta.json").is_file():
                continue
        argv = [sys.executable, "-m", "rshape.cli", name, recipe, *overrides]
        print(f"repro {claim.name}: {shlex.join(argv[2:])}", flush=True)
        log = out / f"{Path(recipe).stem}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(log, "w") as f:
            rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0:
            raise RuntimeError(f"{shlex.join(argv[2:])} failed (exit {rc}); see {log}")
        times = json.loads((out / PREPARE_TIMES).read_text()) if (out / PREPARE_TIMES).is_file() else {}
        times[shlex.join(argv[2:])] = round(time.time() - t0, 1)
        (out / PREPARE_TIMES).write_text(json.dumps(times, indent=2) + "\n")
    return extra


PREPARE_TIMES = "prepare_seconds.json"


def sweep_seconds(sweep_dir: Path) -> tuple[float, float]:
    """(wall seconds from the first trial's start to the last one's end, sum of the trials' durations)."""
    state = json.loads((sweep_dir / "trials.json").read_text()) if (sweep_dir / "trials.json").is_file() else {}
    done = [t for t in state.get("trials", []) if t.get("started_at") and t.get("finished_at")]
    if not done:
        return 0.0, 0.0
    start = min(datetime.fromisoformat(t["started_at"]) for t in done)
    end = max(datetime.fromisoformat(t["finished_at"]) for t in done)
    return (end - start).total_seconds(), sum(float(t.get("duration_s") or 0) for t in done)


def verdict_record(claim: Claim, sweep_dir: Path, after_sweep_s: float, command: str, smoke: bool) -> dict[str, Any]:
    """The verdict of a finished sweep, with everything docs/reproductions.md shows. Wall time = preparation
    (e.g. train-rm) + the sweep from its first trial's start to its last trial's end + `after_sweep_s` (results,
    figures), so a re-run that skips finished trials still reports what a fresh run takes."""
    data = SweepData(sweep_dir)
    tests = claim.tests(data)
    spec = json.loads((sweep_dir / "trials.json").read_text()) if (sweep_dir / "trials.json").is_file() else {}
    steps = data.last_eval_step()
    span, trial_s = sweep_seconds(sweep_dir)
    prep = sweep_dir / PREPARE_TIMES
    prepare_s = sum(json.loads(prep.read_text()).values()) if prep.is_file() else 0.0
    results_md = sweep_dir / "results.md"
    return {
        "claim": claim.name, "title": claim.title, "paper": claim.paper, "statement": claim.statement,
        "transfer": claim.transfer, "command": command, "smoke": smoke,
        "methods": {m: data.seeds(m) for m in data.methods()}, "steps": steps,
        "trials": len(spec.get("trials", [])),
        "tests": [t.as_dict() for t in tests], "verdict": claim.decide(tests),
        "wall_seconds": round(prepare_s + span + after_sweep_s, 1), "prepare_seconds": round(prepare_s, 1),
        "sweep_wall_seconds": round(span, 1), "trial_seconds": round(trial_s, 1),
        "results_table": results_md.read_text() if results_md.is_file() else "",
        "figures": sorted(str(p.relative_to(sweep_dir)) for p in (sweep_dir / "figures").glob("*.png")),
    }


def format_verdict(rec: dict[str, Any]) -> str:
    """The verdict as a few lines of text: the claim, each test's effect with its 95% interval, the verdict."""
    lines = [f"claim {rec['claim']}: {rec['title']}", f"  paper: {rec['paper']}"]
    for t in rec["tests"]:
        e = t["effect"]
        unit = t["unit"]
        scale, fmt = (100, "{:+.1f} pts") if unit == "accuracy" else (1, "{:+.2f}")
        if e["n"] == 0:
            effect = "no data"
        else:
            effect = fmt.format(scale * e["mean"]) + (f", 95% CI [{fmt.format(scale * e['low'])}, "
                                                      f"{fmt.format(scale * e['high'])}]" if e["n"] > 1 else "")
            effect += f" over {e['n']} seed{'s' if e['n'] > 1 else ''}" + ("" if unit == "accuracy" else f" ({unit})")
        lines.append(f"  - {t['statement']}: {effect} → {t['verdict']}")
    lines.append(f"  verdict: {rec['verdict']}  ({rec['wall_seconds']:.0f} s)")
    return "\n".join(lines)


def run_claim(claim: Claim, out: str | Path | None = None, smoke: bool = False, max_parallel: int | None = None,
              command: str = "") -> dict[str, Any]:
    """Prepare, sweep (resumable: finished trials are skipped), results, figures, verdict.json / verdict.md."""
    from rshape.plot import plot
    from rshape.sweep import load_sweep, run_sweep

    out = Path(out or (REPRO_ROOT / ("smoke" if smoke else "") / claim.name))
    out.mkdir(parents=True, exist_ok=True)
    extra = _prepare(claim, out, smoke)
    sweep = load_sweep(claim.sweep_file, [*extra, *(SMOKE_OVERRIDES if smoke else [])], out,
                       seeds=[0] if smoke else None)
    outcome = run_sweep(sweep, max_parallel=max_parallel)
    if outcome.failed:
        raise RuntimeError(f"{len(outcome.failed)} trial(s) failed, e.g. {outcome.failed[0][0]}: {outcome.failed[0][1]}")
    t1 = time.time()
    plot(out)
    rec = verdict_record(claim, out, time.time() - t1, command or f"make repro-{claim.name}", smoke)
    (out / "verdict.json").write_text(json.dumps(rec, indent=2) + "\n")
    (out / "verdict.txt").write_text(format_verdict(rec) + "\n")
    return rec
