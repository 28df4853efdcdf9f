"""Opt-in experiment trackers: TensorBoard and Weights & Biases receive the records of metrics.jsonl and eval.jsonl
under the same names, with the record's `step` as the x-axis; W&B gets the resolved recipe as its run config.

    trackers:
      tensorboard: true                       # event files in <output_dir>/tensorboard
      wandb: {enabled: true, project: rshape} # run id kept in <output_dir>/wandb_id.txt, so --resume continues it

The JSONL files stay the source of truth: a tracker that fails prints one warning line and is switched off, and
the run goes on. tensorboard and wandb are imported only when a tracker is enabled.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any

WANDB_ID_FILE = "wandb_id.txt"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a log record (booleans as 0/1, 1-element tensors unwrapped), without its `step`:
    what the trackers receive. Strings, None, NaN, inf and lists are left out."""
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if hasattr(value, "item") and tuple(getattr(value, "shape", ())) in ((), (1,)):
            value = value.item()
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


class TensorBoardTracker:
    """Scalars in TensorBoard event files (torch's SummaryWriter)."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, recipe_yaml: str, first_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # on resume, events from `first_step` on (logged after the checkpoint) are hidden: they are logged again
        self.writer = SummaryWriter(str(log_dir), purge_step=first_step)
        if first_step is None:
            self.writer.add_text("recipe", "    " + recipe_yaml.replace("\n", "\n    "), 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run whose id is kept in the run directory, so that --resume continues it."""

    name = "wandb"

    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        root = Path(cfg.dir) if cfg.dir else run_dir
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.resolve().name,
                              dir=str(root), tags=cfg.tags or None, id=run_id, resume="allow",
                              mode=None if os.environ.get("WANDB_MODE") else cfg.mode)
        self.run.config.update(config, allow_val_change=True)  # a resumed run may have accepted changes

    def log(self, values: dict[str, float], step: int) -> None:
        if step >= self.run.step:  # W&B's history only grows: the steps a resumed run already has stay as they are
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers a recipe enables, for one run directory; `log` forwards a JSONL record to each of them."""

    def __init__(self, backends: list[Any] | None = None) -> None:
        self.backends = list(backends or [])

    @classmethod
    def open(cls, recipe: Any, run_dir: Path, first_step: int | None = None) -> Trackers:
        """Start the enabled trackers; `first_step`: a resumed run's first step to be logged again (None: fresh).
        A tracker that cannot start is reported in one line and left out."""
        cfg = recipe.trackers
        starts = []
        if cfg.tensorboard.enabled:
            from rshape.recipe import recipe_to_yaml

            log_dir = Path(cfg.tensorboard.log_dir) if cfg.tensorboard.log_dir else run_dir / "tensorboard"
            starts.append(("tensorboard", lambda: TensorBoardTracker(log_dir, recipe_to_yaml(recipe), first_step)))
        if cfg.wandb.enabled:
            starts.append(("wandb", lambda: WandbTracker(cfg.wandb, run_dir, recipe.model_dump(mode="json"))))
        backends = []
        for name, start in starts:
            try:
                backends.append(start())
            except Exception as exc:  # the JSONL logs do not depend on it
                _warn(name, "could not start, left off", exc)
        return cls(backends)

    def log(self, record: dict[str, Any]) -> None:
        """Send the record's finite numbers, at its `step`, to every tracker; one that raises is switched off."""
        if not self.backends:
            return
        values = scalars(record)
        if not values:
            return
        for backend in list(self.backends):
            try:
                backend.log(values, int(record["step"]))
            except Exception as exc:
                _warn(backend.name, "failed, switched off for the rest of the run", exc)
                self.backends.remove(backend)
                with contextlib.suppress(Exception):  # already reported once
                    backend.close()

    def close(self) -> None:
        """Flush and close every tracker (W&B: finish the run)."""
        backends, self.backends = self.backends, []
        for backend in backends:
            try:
                backend.close()
            except Exception as exc:
                _warn(backend.name, "failed to close", exc)


def _warn(name: str, what: str, exc: BaseException) -> None:
    text = (str(exc).strip().splitlines() or [""])[0]
    print(f"warning: trackers.{name}: {what} ({type(exc).__name__}: {text}); metrics.jsonl and eval.jsonl are "
          "complete", file=sys.stderr)
