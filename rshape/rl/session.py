"""What every training command shares around its steps: the run directory, the task, the policy, the logs,
held-out evaluation and checkpoints (`rl` in rshape.rl.loop, `sft` phases in rshape.phases)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rshape.evaluate import evaluate_recipe
from rshape.models import Policy, load_policy, resolve_device, resolve_dtype
from rshape.recipe import Recipe, recipe_to_yaml
from rshape.rl.distributed import SINGLE, Ranks, rank_device, ranks_from_env
from rshape.runs import (
    JsonlWriter,
    manifest,
    prepare_run_dir,
    read_jsonl,
    save_checkpoint,
    trainable_state_dict,
    truncate_jsonl_after_step,
    write_json,
)
from rshape.tasks import build_task
from rshape.tasks.base import Task
from rshape.trackers import Trackers

TRACKED = ("metrics", "eval")  # the logs whose records also go to the recipe's trackers


class NullLog:
    """The logs of a rank other than 0: records are dropped (rank 0 writes the same ones)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TrackedLog(JsonlWriter):
    """A JSONL log whose records are also sent to the trackers (after the line is written: JSONL comes first)."""

    def __init__(self, path: Path, trackers: Trackers) -> None:
        super().__init__(path)
        self.trackers = trackers

    def write(self, record: dict[str, Any]) -> None:
        super().write(record)
        self.trackers.log(record)


@dataclass
class RunSession:
    """One run directory with its task, policy, logs and trackers."""

    recipe: Recipe
    run_dir: Path
    device: torch.device
    dtype: torch.dtype
    task: Task
    policy: Policy
    logs: dict[str, JsonlWriter]
    trackers: Trackers = field(default_factory=Trackers)
    say: Callable[[str], None] = lambda _: None  # a line for the person watching (the CLI's stderr console)
    ranks: Ranks = SINGLE  # data-parallel ranks (rshape.rl.distributed); only rank 0 writes

    @property
    def model(self) -> torch.nn.Module:
        return self.policy.model

    @property
    def tokenizer(self) -> Any:
        return self.policy.tokenizer

    @classmethod
    def open(cls, recipe: Recipe, resume: bool, keep_reference: bool = False,
             say: Callable[[str], None] | None = None) -> RunSession:
        """Threads, device and dtype; the run directory (checked before anything loads); the seeded task; the
        policy. Nothing is written to the run directory yet (see `start` / `resume_logs`)."""
        if recipe.threads:
            torch.set_num_threads(recipe.threads)
        device = resolve_device(recipe.device)
        ranks = ranks_from_env(device)
        device = rank_device(device, ranks)
        say = say if say is not None and ranks.main else (lambda _: None)
        dtype = resolve_dtype(recipe.dtype, device)
        run_dir = prepare_run_dir(recipe.output_dir, resume) if ranks.main else Path(recipe.output_dir)
        torch.manual_seed(recipe.seed)
        task = build_task(recipe.task, recipe.seed)
        say(f"loading {recipe.model.name}" + (" (4-bit base)" if recipe.model.load_in_4bit else "")
            + (f" + adapter {recipe.model.adapter}" if recipe.model.adapter else "") + f" on {device}, {str(dtype)[6:]}"
            + (f"; {ranks.world} data-parallel ranks" if ranks.world > 1 else ""))
        policy = load_policy(recipe.model, device, dtype, keep_reference=keep_reference)
        return cls(recipe, run_dir, device, dtype, task, policy, {}, say=say, ranks=ranks)

    def start(self, manifest_extra: dict[str, Any], logs: tuple[str, ...]) -> None:
        """A fresh run: write the resolved recipe and the manifest, open the logs and the trackers."""
        if not self.ranks.main:
            return self.open_logs(logs)
        (self.run_dir / "recipe.yaml").write_text(recipe_to_yaml(self.recipe))
        write_json(self.run_dir / "manifest.json", manifest(self.recipe.seed, self.device, manifest_extra))
        self.open_logs(logs)

    def resume_logs(self, logs: dict[str, int]) -> None:
        """A resumed run: drop each log's records after its step (name → step), then open the logs and the trackers.
        The trackers drop what they got after the earliest of those steps and are sent the records kept from it on."""
        if not self.ranks.main:
            return self.open_logs(tuple(logs))
        for name, step in logs.items():
            truncate_jsonl_after_step(self.run_dir / f"{name}.jsonl", step)
        tracked = [step for name, step in logs.items() if name in TRACKED]
        first = min(tracked) + 1 if tracked else None
        self.open_logs(tuple(logs), first)
        if first is not None and self.trackers.backends:
            kept = [r for name in TRACKED if name in logs for r in read_jsonl(self.run_dir / f"{name}.jsonl")
                    if r["step"] >= first]
            for record in sorted(kept, key=lambda r: r["step"]):
                self.trackers.log(record)

    def open_logs(self, logs: tuple[str, ...], first_step: int | None = None) -> None:
        """Open the JSONL logs and the recipe's trackers (`first_step`: a resumed run's first step logged again); on
        ranks other than 0, logs that write nothing."""
        if not self.ranks.main:
            self.logs = {name: NullLog() for name in logs}
            return
        self.trackers = Trackers.open(self.recipe, self.run_dir, first_step)
        self.logs = {name: TrackedLog(self.run_dir / f"{name}.jsonl", self.trackers) if name in TRACKED
                     else JsonlWriter(self.run_dir / f"{name}.jsonl") for name in logs}

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out evaluation (rshape.evaluate), logged to eval.jsonl; the model goes back to train mode."""
        k = self.recipe.eval.samples
        self.say(f"evaluating step {step}: {len(self.task.eval):,} problems, " + (f"{k} samples each" if k else "greedy"))
        self.model.eval()
        with torch.no_grad():
            m = evaluate_recipe(self.model, self.tokenizer, self.task, self.recipe, self.device, self.ranks)
        self.model.train()
        self.logs["eval"].write({"step": step, **m})
        return m

    def checkpoint(self, step: int, **state: Any) -> None:
        """Save the trainable weights with `state` (optimizer, scheduler, sampler, RNG...), in the order given (rank 0;
        every rank holds the same state)."""
        if not self.ranks.main:
            return
        save_checkpoint(self.run_dir, step, self.model, {"step": step, "trainable": trainable_state_dict(self.model),
                                                         **state}, tokenizer=self.tokenizer)

    def close_logs(self) -> None:
        """Close the JSONL logs and the trackers."""
        for log in self.logs.values():
            log.close()
        self.trackers.close()

    def finish(self, final_eval: dict[str, float], steps: int) -> dict[str, Any]:
        """Close the logs and trackers and write summary.json (first and final evaluation)."""
        self.close_logs()
        if not self.ranks.main:
            return {"run_dir": str(self.run_dir), "final_eval": final_eval, "steps": steps}
        summary = {"run_dir": str(self.run_dir), "first_eval": read_jsonl(self.run_dir / "eval.jsonl")[0],
                   "final_eval": final_eval, "steps": steps, "eval_set": self.task.eval_source}
        write_json(self.run_dir / "summary.json", summary)
        return summary
