"""A sweep's state on disk: trials.json, rewritten atomically after every change."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rshape.sweep.spec import STATE_FILE, STATUSES, Sweep, SweepError

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


def has_checkpoint(run_dir: Path) -> bool:
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
            "axes": axes, "rank_by": self.sweep.spec.rank_by, "updated_at": utc_now(),
            "trials": list(self.records.values())})

    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(STATUSES, 0)
        for r in self.records.values():
            c[r["status"]] = c.get(r["status"], 0) + 1
        return c


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


