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

Modules: `spec` (the sweep file's schema, loading, expansion into trials), `state` (trials.json),
`run` (trial subprocesses, the local and Ray backends).
"""

from rshape.sweep.run import SweepOutcome, plan, run_sweep
from rshape.sweep.spec import (
    Sweep,
    SweepError,
    SweepInterrupted,
    SweepSpec,
    Trial,
    expand_settings,
    format_override,
    load_sweep,
    short_names,
    value_label,
)
from rshape.sweep.state import read_state

__all__ = ["Sweep", "SweepError", "SweepInterrupted", "SweepOutcome", "SweepSpec", "Trial", "expand_settings",
           "format_override", "load_sweep", "plan", "read_state", "run_sweep", "short_names", "value_label"]
