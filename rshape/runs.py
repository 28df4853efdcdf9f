"""The run directory: resolved recipe, manifest, metrics.jsonl, samples.jsonl and atomic checkpoints.

    run/
      recipe.yaml          the resolved recipe (after overrides)
      manifest.json        package versions, git commit, seed, device, command
      metrics.jsonl        one JSON object per step (and per eval), namespaced keys
      samples.jsonl        a few completions per step with their rewards
      eval.jsonl           every greedy evaluation, per difficulty
      checkpoints/step_000050/   trainable weights, optimiser, scheduler, RNG, data cursor, state
      checkpoints/latest   name of the newest complete checkpoint
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

CHECKPOINTS = "checkpoints"


class RunDirError(Exception):
    """A run directory that cannot be used as asked (exists without --resume, nothing to resume)."""


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, torch.Tensor):
        return _clean(v.item()) if v.numel() == 1 else v.tolist()
    return v


class JsonlWriter:
    """Append-only JSONL with one flushed line per record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def truncate_jsonl_after_step(path: Path, step: int) -> None:
    """Drop records of steps after `step`, so a resumed run rewrites them instead of duplicating them. A torn last
    line (a write cut short, e.g. on a full disk) is dropped with a notice on stderr; a broken line before the last
    is an error naming the file and line."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                print(f"notice: {path}: dropped a torn last line (a write cut short): {line[:60]!r}", file=sys.stderr)
                break
            raise RunDirError(f"{path}:{i + 1}: not a JSON record; the log is damaged, not only its end") from None
        if record.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def publish_dir(tmp: Path, out: Path) -> Path:
    """Move a fully written directory `tmp` to `out`, replacing what was there without writing into it.

    The old directory is renamed aside and then deleted, never overwritten file by file: a process that
    has its files memory-mapped (safetensors weights) keeps reading the old contents instead of crashing."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def cpu_contention_warning(threads: int, load: float | None = None, cores: int | None = None) -> str | None:
    """A one-line warning when CPU torch threads would compete with other busy processes, else None.

    With more runnable processes than cores, torch's OpenMP threads spin-wait on each other and a
    step can take 10-100x longer (measured on a 2-core machine); one thread degrades gracefully."""
    load = os.getloadavg()[0] if load is None else load
    cores = cores or os.cpu_count() or 1
    if threads <= 1 or load + threads <= cores + 1.0:  # an idle VM shows a load of ~0.5
        return None
    return (f"warning: the 1-min load average is {load:.1f} on {cores} cores and torch will use {threads} threads; "
            "with other processes busy a step can be many times slower: consider `threads: 1`")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(seed: int, device: torch.device, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    versions = {}
    for pkg in ("rshape", "torch", "transformers", "peft", "bitsandbytes", "pydantic", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "command": sys.argv, "seed": seed, "device": str(device), "git_commit": git_commit(),
        "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None, **(extra or {}),
    }


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / CHECKPOINTS / "latest"
    if pointer.is_file():
        path = run_dir / CHECKPOINTS / pointer.read_text().strip()
        if (path / "state.pt").is_file():
            return path
    return None


def refuse_run_dir(run: Path, resume: bool) -> None:
    """Raise RunDirError when `run` cannot be started (a run is there) or resumed (no checkpoint there)."""
    restart = "it stopped before its first checkpoint: delete it or choose another output_dir to start again"
    if resume:
        if latest_checkpoint(run) is None:
            raise RunDirError(f"{run}: --resume given but no checkpoint found there; "
                              + (restart if (run / "metrics.jsonl").exists() else "nothing to resume"))
        return
    if latest_checkpoint(run) is not None:
        raise RunDirError(f"{run}: a run already exists there; pass --resume to continue it or choose another output_dir")
    if (run / "metrics.jsonl").exists():
        raise RunDirError(f"{run}: a run already exists there, and {restart}")


def check_run_dir(path: str | Path, resume: bool, steps: int) -> None:
    """The run-directory problems found without loading a model: `refuse_run_dir`'s, and a finished run that
    --resume cannot extend (latest checkpoint at ≥ `steps` and summary.json written)."""
    run = Path(path)
    refuse_run_dir(run, resume)
    latest = latest_checkpoint(run) if resume else None
    if latest is not None and int(latest.name.removeprefix("step_")) >= steps and (run / "summary.json").is_file():
        raise RunDirError(f"{run}: already trained {int(latest.name.removeprefix('step_'))} steps; raise train.steps "
                          "to continue it")


def prepare_run_dir(path: str | Path, resume: bool) -> Path:
    """Create the run directory; refuse to write over an existing run unless resuming."""
    run = Path(path)
    refuse_run_dir(run, resume)
    if resume:
        return run
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only filesystem, no permission, a file in the way...
        raise RunDirError(f"{run}: cannot create the run directory ({exc.strerror or exc}); choose a writable "
                          "output_dir") from None
    return run


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, trainer_state: dict[str, Any], keep: int = 2,
                    tokenizer: Any = None) -> Path:
    """Write checkpoints/step_{step} atomically (temp dir, then rename) and point `latest` at it.

    The model part is what trains: the LoRA adapter (peft `save_pretrained`) or the full weights.
    `trainer_state` holds the optimiser, scheduler, RNG, data cursor and per-prompt state.
    """
    root = run_dir / CHECKPOINTS
    name = f"step_{step:06d}"
    tmp = root / f".{name}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        model.save_pretrained(tmp / "model")
        if tokenizer is not None:  # so the saved model loads on its own (full fine-tuning, the next phase)
            tokenizer.save_pretrained(tmp / "model")
        torch.save(trainer_state, tmp / "state.pt")
    except OSError as exc:  # disk full, quota, read-only: the previous checkpoint stays `latest`, untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunDirError(f"{run_dir}: could not write the checkpoint of step {step} ({exc.strerror or exc}); the "
                          "previous checkpoint is intact: free space, then --resume") from None
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = root / ".latest.tmp"
    pointer_tmp.write_text(name)
    os.replace(pointer_tmp, root / "latest")
    olds = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name != name)
    for old in olds[: max(0, len(olds) - (keep - 1))]:
        shutil.rmtree(old)
    return final


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def restore_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load the run's latest checkpoint: trainable weights into the model, the optimizer state, torch's RNG.
    Returns the saved trainer state (step, scheduler, sampler... as the trainer wrote them)."""
    ckpt = latest_checkpoint(run_dir)
    state = read_checkpoint_state(ckpt)
    copy_trainable(model, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return state


def read_checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's state.pt; RunDirError (one line, saying what to do) when it cannot be read."""
    try:
        state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "trainable" not in state:
            raise ValueError("not a checkpoint written by rshape")
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise RunDirError(f"{checkpoint / 'state.pt'}: cannot be read ({type(exc).__name__}: {exc}); the checkpoint "
                          f"is damaged: delete {checkpoint.name} and write an earlier step_* into "
                          f"{checkpoint.parent / 'latest'}, or start the run again") from None
    return state


def copy_trainable(model: torch.nn.Module, trainable: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in trainable.items():
            params[k].copy_(v.to(params[k].device))


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
