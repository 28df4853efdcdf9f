"""Running a sweep: one subprocess per trial, locally (bounded parallelism) or as Ray tasks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rshape.results import write_results
from rshape.sweep.spec import LOG_FILE, STATE_FILE, Sweep, SweepError, SweepInterrupted, Trial, format_override
from rshape.sweep.state import State, has_checkpoint, utc_now

# --------------------------------------------------------------------------- one trial process


def trial_command(sweep: Sweep, trial: Trial, resume: bool) -> list[str]:
    """The `rl` command line of a trial, without the interpreter (each backend prepends its own)."""
    argv = ["-m", "rshape.cli", "rl", str(sweep.base), *trial.overrides,
            format_override("output_dir", str(trial.run_dir))]
    return [*argv, "--resume"] if resume else argv


ATTEMPT_MARK = "=== attempt"


def last_error(log: Path, returncode: int | None) -> str:
    """The line that says why the latest attempt of a trial failed: its first `error:` line, else its last line."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    if ATTEMPT_MARK in text:
        text = text[text.rindex(ATTEMPT_MARK):].split("\n", 1)[-1]
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
        self._log.write(f"# {utc_now()} {' '.join(argv)}\n")
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
    """Trials at once: one per GPU; on a CPU one per core, each with one thread (2 cores: two 1-thread trials finish
    1.46–1.68× sooner than the same trials one after the other with 2 threads, since torch's per-op overhead does not
    shrink with a second thread)."""
    if gpus:
        return len(gpus)
    return max(1, _cpu_count())


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
        elif has_checkpoint(t.run_dir):
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
    resume = has_checkpoint(trial.run_dir)
    if not resume and trial.run_dir.exists():
        shutil.rmtree(trial.run_dir)  # a partial run with nothing to resume from: start again
    trial.run_dir.mkdir(parents=True, exist_ok=True)
    rec.update(status="running", error=None, returncode=None, attempts=rec["attempts"] + 1, started_at=utc_now(),
               finished_at=None, duration_s=None, resumed=resume)
    state.write()
    with open(trial.run_dir / LOG_FILE, "a", encoding="utf-8") as log:  # the log keeps every attempt, marked
        log.write(f"{ATTEMPT_MARK} {rec['attempts']} ({'resume' if resume else 'start'}, {rec['started_at']})\n")
    _log(f"start  {trial.name}" + (" (resuming from its checkpoint)" if resume else "")
         + (f" (attempt {rec['attempts']})" if rec["attempts"] > 1 else ""))
    return resume


def _finish(state: State, trial: Trial, rc: int | None, elapsed: float, error: str | None = None) -> None:
    """Record how a trial ended: done when `rl` exited 0 and wrote summary.json, failed otherwise."""
    rec = state.records[trial.name]
    rec.update(returncode=rc, finished_at=utc_now(), duration_s=round(elapsed, 1))
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
                                     finished_at=utc_now(), returncode=None)


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
