"""The `rshape` command: load → validate → dispatch. User mistakes exit 2 with one line each."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reward-shaping experiments for RL fine-tuning of language models.")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"rshape {version('rshape')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print rshape's version and exit.")] = False,
) -> None:
    """Reward-shaping experiments for RL fine-tuning of language models."""


def fail(lines: list[str] | str, code: int = 2) -> None:
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"error: {line}", file=sys.stderr)
    raise typer.Exit(code)


def warn_if_cpu_contended(cfg, console) -> None:
    """Print `cpu_contention_warning` for a run that will compute on the CPU."""
    import torch

    from rshape.models import resolve_device
    from rshape.runs import cpu_contention_warning

    if resolve_device(cfg.device).type != "cpu":
        return
    if (warning := cpu_contention_warning(cfg.threads or torch.get_num_threads())) is not None:
        console.print(warning, style="yellow", highlight=False)


def warn_if_updates_round_away(cfg, console) -> None:
    """Print `low_precision_update_warning` for an `rl` recipe that trains full 16-bit weights without masters."""
    from rshape.models import low_precision_update_warning, resolve_device, resolve_dtype

    dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    if (warning := low_precision_update_warning(cfg.model, dtype, cfg.optim.lr, cfg.optim.float32_master)) is not None:
        console.print(warning, style="yellow", highlight=False)


@app.command()
def rl(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.steps=50.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in output_dir from its latest checkpoint.")] = False,
    accept_changes: Annotated[bool, typer.Option("--accept-changes", help="With --resume: continue with a recipe that "
                                                 "changes keys of the run's own (recorded in recipe_changes.jsonl).")
                              ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate, load the data and tokenizer when reachable, "
                                          "and print the plan (steps, tokens, parameters, GPU memory estimate); "
                                          "train and write nothing.")] = False,
) -> None:
    """Train a policy with a GRPO-family algorithm as RECIPE says."""
    from rshape.deferred import deferred_import
    from rshape.recipe import RecipeError

    with deferred_import("torch"):  # validation and the run-directory checks answer before torch or a model loads
        from rshape.runs import RunDirError, check_run_dir
        from rshape.validate import load_recipe

        try:
            cfg = load_recipe(recipe, overrides or [], need_hub_cache=not dry_run)
        except RecipeError as exc:
            fail(exc.lines)
        main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 owns the run directory
        try:
            if not dry_run and main_rank:
                check_run_dir(cfg.output_dir, resume, cfg.train.steps)
        except RunDirError as exc:
            fail(str(exc).splitlines())
    if dry_run:
        from rshape.plan import build_plan, print_plan

        print(f"plan for {recipe}" + (f" {' '.join(overrides)}" if overrides else ""))
        print_plan(build_plan(cfg))
        return
    from rich.console import Console

    from rshape.report import print_summary
    from rshape.rewards import RewardRuntimeError
    from rshape.rl.distributed import shut_down
    from rshape.rl.loop import RunInterrupted, train
    from rshape.rl.rollout import DecoderError
    from rshape.rl.step import NonFiniteError
    from rshape.tasks import DataError

    console = Console(stderr=True)
    if main_rank:
        warn_if_cpu_contended(cfg, console)
        warn_if_updates_round_away(cfg, console)
    try:
        if cfg.phases:
            from rshape.phases import run_phases

            summary = run_phases(cfg, resume=resume, console=console)
        else:
            summary = train(cfg, resume=resume, console=console, accept_changes=accept_changes)
        shut_down()  # data-parallel ranks leave together
    except (RunDirError, DataError, RewardRuntimeError, DecoderError, NonFiniteError) as exc:
        fail(str(exc).splitlines())
    except RunInterrupted as exc:
        if main_rank:
            print(f"stopped: {exc}\nresume with: rshape rl {recipe} {' '.join(overrides or [])} --resume".replace("  ", " "),
                  file=sys.stderr)
        raise typer.Exit(128 + int(getattr(signal, exc.signal_name))) from None
    if main_rank:
        print_summary(summary, Console())


@app.command("eval")
def eval_(
    targets: Annotated[list[str], typer.Argument(help="Run directories (RUN or RUN@STEP; @0 = before training), "
                                                 "adapter directories, or models (Hub id, directory, builtin:...).")],
    recipe: Annotated[str | None, typer.Option("--recipe", help="Recipe whose task, rollout and eval sections to use "
                                               "(default: the first run's own recipe, else the defaults).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override of that recipe, e.g. task.eval_size=500 "
                                                   "(repeatable).")] = None,
    samples: Annotated[list[int] | None, typer.Option("--samples", help="0 = greedy; k = k samples per problem "
                                                      "(avg@k, pass@k). Repeat for several modes.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Sampling temperature (default: the "
                                                      "recipe's eval.temperature or rollout.temperature).")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus mass (default: the recipe's).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="Generation limit (default: the "
                                                       "recipe's).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling noise.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda...")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16...")] = "auto",
    output: Annotated[str | None, typer.Option("--output", "-o", help="Directory for results.json and the "
                                               "completions (default: evals/<time>).")] = None,
) -> None:
    """Evaluate runs, checkpoints, adapters or models on one task: greedy or avg@k/pass@k, tokens, per difficulty."""
    import time as _time
    from pathlib import Path

    from rshape.deferred import deferred_import
    from rshape.recipe import RecipeError

    modes = samples or [0]
    bad = [f"--samples {k}: must be ≥ 0" for k in modes if k < 0]
    bad += [f"--temperature {temperature}: must be > 0"] if temperature is not None and not temperature > 0 else []
    bad += [f"--top-p {top_p}: must be in (0, 1]"] if top_p is not None and not 0 < top_p <= 1 else []
    if bad:
        fail(bad)
    with deferred_import("torch"):  # targets and the recipe are checked before torch or a model loads
        from rshape.eval_targets import TargetError, eval_recipe, resolve_target

        resolved, errors = [], []
        for spec in targets:
            try:
                resolved.append(resolve_target(spec))
            except TargetError as exc:
                errors.append(str(exc))
        if errors:
            fail(errors)
        try:
            cfg = eval_recipe(resolved, recipe, set_ or [])
        except RecipeError as exc:
            fail(exc.lines)
    from rich.console import Console

    from rshape.eval_targets import evaluate_targets, print_comparison
    from rshape.tasks import DataError

    out_dir = Path(output or f"evals/{_time.strftime('%Y%m%d-%H%M%S')}")
    console = Console(stderr=True)
    try:
        rows = evaluate_targets(resolved, cfg, modes, temperature=temperature, top_p=top_p,
                                max_new_tokens=max_new_tokens, seed=seed, device=device, dtype=dtype,
                                out_dir=out_dir, console=console)
    except DataError as exc:
        fail(str(exc))
    except OSError as exc:  # a model or adapter that does not load (missing files, no network for a Hub id)
        fail(f"{exc}".splitlines()[0] if str(exc) else type(exc).__name__, code=1)
    print_comparison(rows, Console())
    print(f"results: {out_dir / 'results.json'} (completions: {out_dir}/samples-*.jsonl)")


@app.command("train-rm")
def train_rm(
    recipe: Annotated[str, typer.Argument(help="train-rm recipe YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.steps=100.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep finished ensemble members in output_dir and train the rest.")
                      ] = False,
) -> None:
    """Train a reward model (or an ensemble) on preference pairs or scored data and export it for `rl`."""
    from rshape.recipe import RecipeError
    from rshape.rm.recipe import load_rm_recipe

    try:
        cfg = load_rm_recipe(recipe, overrides or [])
    except RecipeError as exc:
        fail(exc.lines)
    from rich.console import Console

    from rshape.rm.evaluate import print_report
    from rshape.rm.modeling import RewardModelError
    from rshape.rm.train import train_rm as run_train_rm
    from rshape.runs import RunDirError
    from rshape.tasks import DataError

    console = Console(stderr=True)
    warn_if_cpu_contended(cfg, console)
    try:
        report = run_train_rm(cfg, resume=resume, console=console)
    except (RunDirError, DataError, RewardModelError) as exc:
        fail(str(exc))
    print_report(report, Console())
    print(f"reward model: {report['model']}  (report: {cfg.output_dir}/eval_report.json, "
          f"train time {report['train_time_s']:.0f}s)")


@app.command("eval-rm")
def eval_rm(
    model_dir: Annotated[str, typer.Argument(help="A directory written by train-rm (model/ of its run).")],
    data: Annotated[str | None, typer.Option("--data", help="Pairs or scored data to evaluate on (a file, or "
                                             "builtin:tiny-preferences); default: the held-out set of training.")] = None,
    best_of_n: Annotated[int, typer.Option("--best-of-n", help="Also run best-of-N with N samples per prompt (0 = off).")] = 0,
    policy: Annotated[str, typer.Option("--policy", help="Policy for best-of-N.")] = "builtin:tiny-addition",
    prompts: Annotated[int, typer.Option("--prompts", help="best-of-N: held-out addition prompts.")] = 100,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="best-of-N: generation limit.")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", help="best-of-N: sampling temperature.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="best-of-N: sampling seed.")] = 0,
    aggregate: Annotated[str | None, typer.Option("--aggregate", help="Ensembles: mean, min or mean_minus_std.")] = None,
    k: Annotated[float | None, typer.Option("--k", help="Ensembles: k of mean_minus_std.")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the JSON report here.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda...")] = "auto",
) -> None:
    """Evaluate a trained reward model: pairwise accuracy, length bias, calibration, best-of-N."""
    from pathlib import Path

    from rshape.rm.modeling import RewardModelError, check_rm_dir

    problem = check_rm_dir(model_dir)
    if problem:
        fail(problem)
    if aggregate is not None and aggregate not in ("mean", "min", "mean_minus_std"):
        fail(f"--aggregate: mean, min or mean_minus_std, got {aggregate!r}")
    if data is not None and not data.startswith(("builtin:", "hf:")) and not Path(data).exists():
        fail(f"--data: file not found: {data}")
    from rich.console import Console

    from rshape.rm.evaluate import print_report
    from rshape.rm.train import eval_data_config, load_eval_examples
    from rshape.rm.train import eval_rm as run_eval_rm
    from rshape.runs import write_json
    from rshape.tasks import DataError

    try:
        recipe, data_seed = eval_data_config(model_dir)
        examples = load_eval_examples(recipe, data_seed, data)
        label = data or f"{recipe.data.eval or recipe.data.train} (training's held-out set)"
        best = None
        if best_of_n:
            best = {"policy": policy, "n": best_of_n, "prompts": prompts, "max_new_tokens": max_new_tokens,
                    "temperature": temperature, "seed": seed}
        report = run_eval_rm(model_dir, examples, recipe, label, device, best, aggregate, k)
    except (DataError, RewardModelError) as exc:
        fail(str(exc))
    print_report(report, Console())
    if output:
        write_json(Path(output), report)
        print(f"report: {output}")


@app.command()
def sweep(
    sweep_file: Annotated[str, typer.Argument(help="Sweep YAML: a base recipe, axes (grid, zip, random) and seeds.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides for every trial, e.g. train.steps=5.")
                         ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the trials and what a run would do; run nothing.")
                       ] = False,
    max_parallel: Annotated[int | None, typer.Option("--max-parallel", min=1, help="Trials at once (default: the sweep "
                            "file's max_parallel, else GPUs, else CPU cores // 2).")] = None,
    backend: Annotated[str, typer.Option("--backend", help="local (subprocesses here) or ray (tasks on a Ray cluster).")
                       ] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address (e.g. auto or "
                           "ray://host:10001); default: start a local Ray instance.")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Sweep directory (default: the sweep file's output_dir).")
                   ] = None,
    rank_by: Annotated[str | None, typer.Option("--rank-by", help="Results column that picks the best setting, e.g. "
                       "accuracy (default), tokens, min:tokens_d4.")] = None,
) -> None:
    """Run every trial of SWEEP_FILE as its own `rshape rl` process; skip finished ones on a re-run."""
    from rshape.results import ResultsError, check_rank_by
    from rshape.sweep import SweepError, SweepInterrupted, load_sweep, plan, run_sweep

    if backend not in ("local", "ray"):
        fail(f"--backend: local or ray, got {backend!r}")
    if rank_by is not None and (msg := check_rank_by(rank_by)):
        fail(f"--rank-by: {msg}")
    try:
        sw = load_sweep(sweep_file, overrides or [], out)
        if dry_run:
            todo = plan(sw)
            seeds = f"{len(sw.seeds)} seed{'s' if len(sw.seeds) > 1 else ''}"
            print(f"sweep {sw.output_dir}: {len(todo)} trials ({len(sw.settings)} settings × {seeds}), base {sw.base}")
            width = max(len(t.name) for t, _ in todo)
            for t, action in todo:
                shown = [o for o in t.overrides if o not in sw.spec.overrides and o not in sw.extra_overrides]
                print(f"  {t.name:<{width}}  {action:<12}  {' '.join(shown)}")
            return
        outcome = run_sweep(sw, max_parallel=max_parallel, backend=backend, ray_address=ray_address, rank_by=rank_by)
    except SweepError as exc:
        fail(exc.lines)
    except ResultsError as exc:  # e.g. rank_by names a difficulty no trial has
        fail(str(exc))
    except SweepInterrupted as exc:
        print(f"sweep interrupted: running trials stopped and marked interrupted in {sw.output_dir}/trials.json; "
              "run the same command again to resume", file=sys.stderr)
        raise typer.Exit(130 if exc.signum == 2 else 143) from None
    except KeyboardInterrupt:  # before the trials started (validation, building the built-in model)
        print("sweep interrupted before any trial started", file=sys.stderr)
        raise typer.Exit(130) from None
    for path in outcome.results:
        print(f"results: {path}")
    if outcome.results:
        best = [ln for ln in outcome.results[-1].read_text().splitlines() if ln.startswith("| ★")]
        if best:
            print("best: " + best[0].split("|")[1].strip(" ★*"))
    print(outcome.summary_line(), file=sys.stderr if not outcome.ok else sys.stdout)
    if not outcome.ok:
        raise typer.Exit(1)


@app.command()
def repro(
    names: Annotated[list[str], typer.Argument(help="Claims to reproduce: length-collapse, laser-d, drpo, tlts, par, "
                                               "label-free, or all (rshape/repro/claims.py).")],
    smoke: Annotated[bool, typer.Option("--smoke", help="2 steps, 1 seed, tiny batches: check the pipeline only.")
                     ] = False,
    out: Annotated[str | None, typer.Option("--out", help="Directory of the claims' sweeps (default runs/repro, "
                   "runs/repro/smoke with --smoke).")] = None,
    max_parallel: Annotated[int | None, typer.Option("--max-parallel", min=1, help="Trials at once (default: the "
                            "sweep file's).")] = None,
    doc: Annotated[str | None, typer.Option("--doc", help="Also write this markdown report of every verdict found "
                   "(e.g. docs/reproductions.md; figures are copied next to it).")] = None,
) -> None:
    """Reproduce published claims on the graded tiny world: sweep, results, figures and a verdict per claim."""
    from pathlib import Path

    from rshape.repro.claims import CLAIMS, get_claim

    try:
        claims = CLAIMS if names == ["all"] else [get_claim(n) for n in names]
    except KeyError as exc:
        fail(str(exc.args[0]))
    from rshape.repro.report import write_doc
    from rshape.repro.run import REPRO_ROOT, format_verdict, run_claim
    from rshape.sweep import SweepError, SweepInterrupted

    root = Path(out) if out else REPRO_ROOT / ("smoke" if smoke else "")
    failed = []
    for claim in claims:
        try:
            rec = run_claim(claim, root / claim.name, smoke=smoke, max_parallel=max_parallel,
                            command=f"rshape repro {claim.name}" + (" --smoke" if smoke else ""))
        except SweepError as exc:
            fail(exc.lines)
        except SweepInterrupted:
            raise typer.Exit(130) from None
        except RuntimeError as exc:
            print(f"error: repro {claim.name}: {exc}", file=sys.stderr)
            failed.append(claim.name)
            continue
        print(format_verdict(rec), flush=True)
    if doc:
        print(f"report: {write_doc(root, Path(doc))}")
    if failed:
        raise typer.Exit(1)


@app.command()
def results(
    directory: Annotated[str, typer.Argument(help="A sweep directory (or any directory of runs).")],
    rank_by: Annotated[str, typer.Option("--rank-by", help="Column that picks the best setting: accuracy (default), "
                       "tokens, reward, truncation, accuracy_dN, tokens_dN; prefix min: or max: to set the direction."
                       )] = "accuracy",
    out: Annotated[str | None, typer.Option("--out", help="Where results.csv and results.md go (default: DIRECTORY).")
                   ] = None,
) -> None:
    """Aggregate finished runs over seeds: results.csv and results.md (mean ± std per setting, best marked)."""
    from rshape.results import ResultsError, write_results

    try:
        paths = write_results(directory, rank_by=rank_by, out=out)
    except ResultsError as exc:
        fail(str(exc))
    print(paths[1].read_text())
    for path in paths:
        print(f"results: {path}")


@app.command()
def plot(
    directory: Annotated[str, typer.Argument(help="A run directory or a sweep directory.")],
    out: Annotated[str | None, typer.Option("--out", help="Output directory (default: DIRECTORY/figures).")] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", help="Comma-separated metrics for the curves figure, e.g. "
                       "reward/total,accuracy,length/p90,eval/accuracy (default: reward total and components, "
                       "accuracy, mean length, truncation rate).")] = None,
    group_by: Annotated[str | None, typer.Option("--group-by", help="Pool runs by one axis (a sweep axis key, its "
                        "short name, or any dotted recipe key) instead of by setting.")] = None,
    smooth: Annotated[int | None, typer.Option("--smooth", min=1, help="Moving-average window of the training curves "
                      "in steps (default: steps / 10; 1 = raw).")] = None,
    band: Annotated[str, typer.Option("--band", help="Band and error bars over seeds: auto (min-max over seeds up to 4 "
                    "seeds, t-based 95% confidence interval of the mean from 5), range (= minmax, min-max over seeds), "
                    "ci95, sem (±1 standard error of the mean) or none. Single runs never get a band.")] = "auto",
) -> None:
    """Write the figures (PNG and PDF) of a run or a sweep: curves, Pareto front, length histograms, difficulty."""
    from rshape.plot import PlotError
    from rshape.plot import plot as make_plots

    try:
        figures = make_plots(directory, out=out, metrics=[m.strip() for m in metrics.split(",") if m.strip()]
                             if metrics else None, group_by=group_by, smooth_window=smooth, band_kind=band)
    except PlotError as exc:
        fail(str(exc))
    for f in figures:
        print(f"{f.name:<14} " + "  ".join(str(p) for p in f.paths))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
