"""`rshape train-rm`: train a reward model (or an ensemble of K) and export it for `rl` (docs/methods.md).

    run/
      recipe.yaml, manifest.json
      metrics.jsonl        training lines (loss, accuracy in the batch, lr, grad norm) and evaluations, per member
      eval_report.json     the final evaluation (and best-of-N when asked), also printed as a table
      model/               the export: HF format + rm_meta.json (reward mean/std on the eval set), or for K > 1
                           member_0/ … member_{K−1}/ and ensemble.json

Every record of the data is read and checked before any model loads, so bad data fails in a second
with one line; an existing export is never overwritten (`--resume` keeps finished ensemble members and
trains the rest). Exports are written to a temp directory and renamed.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from rshape.models import resolve_device, resolve_dtype
from rshape.recipe import recipe_to_yaml
from rshape.rm.data import RMData, load_rm_data, read_pairs, read_scored, tiny_preferences
from rshape.rm.evaluate import best_of_n, evaluate_pairs, evaluate_scored, pair_inputs, pairs_report
from rshape.rm.losses import bradley_terry_loss, regression_loss
from rshape.rm.modeling import (
    ENSEMBLE_FILE,
    META_FILE,
    EnsembleRM,
    RewardModel,
    aggregate_members,
    encode,
    ensemble_member_paths,
    export_rm,
    forward_scores,
    is_ensemble_dir,
    load_for_training,
    load_reward_model,
    render_example,
    response_lengths,
    uses_pair_encoding,
)
from rshape.rm.recipe import BUILTIN_PREFERENCES, RMDataConfig, RMRecipe
from rshape.runs import JsonlWriter, RunDirError, manifest, write_json
from rshape.schedules import lr_factor


def _scalar_metrics(m: dict[str, Any], prefix: str = "eval/") -> dict[str, Any]:
    return {prefix + k: v for k, v in m.items() if not isinstance(v, (list, dict))}


def attribute_names(recipe: RMRecipe) -> list[str]:
    if recipe.model.head == "bt":
        return ["reward"]
    keys = recipe.data.rating_keys
    A = recipe.model.num_attributes
    return list(keys) if len(keys) == A else [f"{keys[0]}_{a}" for a in range(A)]


def base_meta(recipe: RMRecipe, pair_encoding: bool, data: RMData) -> dict[str, Any]:
    A = recipe.model.num_attributes
    return {"format": "rshape-rm", "version": 1, "head": recipe.model.head, "num_attributes": A,
            "attributes": attribute_names(recipe), "attribute_weights": [1.0 / A] * A,
            "max_length": recipe.model.max_length, "pair_encoding": pair_encoding,
            "system_prompt": recipe.data.system_prompt, "base_model": recipe.model.name,
            "load_in_4bit": recipe.model.load_in_4bit, "bnb_compute_dtype": recipe.model.bnb_compute_dtype,
            "lora": recipe.model.lora.enabled,
            "data": {**data.description, **recipe.data.model_dump(mode="json")}}


def evaluate_scorer(scorer: RewardModel | EnsembleRM, recipe: RMRecipe, examples: list) -> dict[str, Any]:
    if recipe.data.format == "pairs":
        return evaluate_pairs(scorer, examples, recipe.train.eval_batch_size)
    return evaluate_scored(scorer, examples, attribute_names(recipe), recipe.train.eval_batch_size)


class _Progress:
    def __init__(self, total: int, label: str, enabled: bool, console: Any) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"), TimeElapsedColumn(),
                           TimeRemainingColumn(), console=console or Console(stderr=True), disable=not enabled)
        self._t = self._p.add_task(label, total=total, loss="-", acc="-")

    def __enter__(self) -> _Progress:
        self._p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._p.__exit__(*exc)

    def update(self, step: int, loss: float, acc: float) -> None:
        self._p.update(self._t, completed=step, loss=f"{loss:.4f}", acc="-" if math.isnan(acc) else f"{acc:.2f}")


def train_member(recipe: RMRecipe, data: RMData, member: int, out_dir: Path, device: torch.device, dtype: torch.dtype,
                 log: JsonlWriter, console: Any = None) -> dict[str, Any]:
    """Train one RM (seed = recipe.seed + member) and export it to out_dir; returns its rm_meta."""
    t0 = time.perf_counter()
    seed = recipe.seed + member
    torch.manual_seed(seed)
    model, tok = load_for_training(recipe.model, device, dtype, seed)
    pair = uses_pair_encoding(tok)
    meta = {**base_meta(recipe, pair, data), "seed": seed, "member": member}
    system = recipe.data.system_prompt
    train = list(data.train)
    if recipe.ensemble.bootstrap:
        rng = random.Random(f"rm-bootstrap-{seed}")
        train = [train[rng.randrange(len(train))] for _ in range(len(train))]
    is_pairs = recipe.data.format == "pairs"
    if is_pairs:
        items_c = [render_example(p.prompt, p.chosen, tok, pair, system) for p in train]
        items_r = [render_example(p.prompt, p.rejected, tok, pair, system) for p in train]
        margins = torch.tensor([p.margin or 0.0 for p in train], dtype=torch.float32)
        ties = torch.tensor([p.tie for p in train], dtype=torch.bool)
    else:
        items = [render_example(e.prompt, e.response, tok, pair, system) for e in train]
        targets = torch.tensor([[float("nan") if r is None else r for r in e.ratings] for e in train], dtype=torch.float32)
    N, B = len(train), recipe.train.batch_size
    steps = recipe.train.steps or max(1, math.ceil(recipe.train.epochs * N / B))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.optim.lr, betas=recipe.optim.betas, weight_decay=recipe.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(recipe.optim.schedule, recipe.optim.warmup_steps, steps))
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    max_len = recipe.model.max_length
    scorer = RewardModel(model, tok, meta, device)
    loss_cfg = recipe.loss
    label = f"train-rm member {member}" if recipe.ensemble.members > 1 else "train-rm"
    model.train()
    with _Progress(steps, label, recipe.train.progress, console) as progress:
        for step in range(1, steps + 1):
            ts = time.perf_counter()
            if len(order) < B:
                order += torch.randperm(N, generator=gen).tolist()
            idx, order = order[:B], order[B:]
            if is_pairs:
                enc = encode(tok, [items_c[i] for i in idx] + [items_r[i] for i in idx], max_len, device)
                s = forward_scores(model, enc)[:, 0]
                rc, rr = s[: len(idx)], s[len(idx):]
                loss, stats = bradley_terry_loss(rc, rr, margins[idx].to(device) if loss_cfg.margin else None,
                                                 ties[idx].to(device), loss_cfg.center_coef, loss_cfg.ties, loss_cfg.tie_weight)
            else:
                enc = encode(tok, [items[i] for i in idx], max_len, device)
                loss, stats = regression_loss(forward_scores(model, enc), targets[idx].to(device))
                stats["train/accuracy"] = float("nan")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, recipe.optim.max_grad_norm).item()
            opt.step()
            sched.step()
            if step % recipe.train.log_every == 0 or step == steps:
                log.write({"member": member, "step": step, "loss": loss.item(), **stats, "optim/lr": sched.get_last_lr()[0],
                           "optim/grad_norm": grad_norm, "perf/step_time": time.perf_counter() - ts})
            progress.update(step, loss.item(), stats.get("train/accuracy", float("nan")))
            if recipe.train.eval_every and step % recipe.train.eval_every == 0 and step != steps:
                log.write({"member": member, "step": step, **_scalar_metrics(evaluate_scorer(scorer, recipe, data.eval))})
                model.train()
    final, scores = final_eval(scorer, recipe, data)
    mean, std = final["reward/mean"], final["reward/std"]
    train_time = time.perf_counter() - t0
    meta.update({"reward_mean": mean, "reward_std": std, "steps": steps, "train_time_s": train_time,
                 "eval": _scalar_metrics(final, "")})
    log.write({"member": member, "step": steps, **_scalar_metrics(final), "perf/train_time": train_time})
    export_rm(model, tok, out_dir, meta, load_in_4bit=recipe.model.load_in_4bit)
    return {"meta": meta, "eval": final, "scores": scores}


def final_eval(scorer: RewardModel, recipe: RMRecipe, data: RMData) -> tuple[dict[str, Any], torch.Tensor | None]:
    """The member's evaluation and, for pairs, its scores of every eval response (reused for the ensemble)."""
    if recipe.data.format != "pairs":
        return evaluate_scorer(scorer, recipe, data.eval), None
    prompts, responses = pair_inputs(data.eval)
    scores = scorer.score(prompts, responses, recipe.train.eval_batch_size)
    return pairs_report(data.eval, scores, response_lengths(scorer.tokenizer, responses)), scores


def prepare_rm_dir(path: str | Path, resume: bool) -> Path:
    """The run directory; refuse to write over a finished export (resume keeps finished ensemble members)."""
    run = Path(path)
    model_dir = run / "model"
    if (model_dir / META_FILE).exists() or (model_dir / ENSEMBLE_FILE).exists():
        raise RunDirError(f"{run}: a trained reward model already exists there ({model_dir}); choose another output_dir")
    members = sorted(model_dir.glob("member_*/" + META_FILE)) if model_dir.is_dir() else []
    if members and not resume:
        raise RunDirError(f"{run}: {len(members)} ensemble member(s) already trained there; pass --resume to keep them "
                          "and train the rest, or choose another output_dir")
    run.mkdir(parents=True, exist_ok=True)
    return run


def train_rm(recipe: RMRecipe, resume: bool = False, console: Any = None, data: RMData | None = None) -> dict[str, Any]:
    """Train as the recipe says; returns the report (also written to eval_report.json)."""
    t0 = time.perf_counter()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    A = recipe.model.num_attributes
    data = data or load_rm_data(recipe.data, A, recipe.seed)  # every record checked before anything else happens
    device = resolve_device(recipe.device)
    dtype = resolve_dtype(recipe.dtype, device)
    run = prepare_rm_dir(recipe.output_dir, resume)
    (run / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    write_json(run / "manifest.json", manifest(recipe.seed, device, {"dtype": str(dtype), "data": data.description}))
    log = JsonlWriter(run / "metrics.jsonl")
    K = recipe.ensemble.members
    model_dir = run / "model"
    results: list[dict[str, Any]] = []
    try:
        for k in range(K):
            out = model_dir if K == 1 else model_dir / f"member_{k}"
            if K > 1 and (out / META_FILE).is_file():
                if console is not None:
                    console.print(f"member {k}: already trained, kept ({out})")
                kept = RewardModel.load(out, device)
                results.append({"meta": kept.meta, **dict(zip(("eval", "scores"), final_eval(kept, recipe, data)))})
                continue
            results.append(train_member(recipe, data, k, out, device, dtype, log, console))
        report: dict[str, Any] = {"model": str(model_dir), "data": data.description.get("source"),
                                  "train_time_s": sum(r["meta"].get("train_time_s", 0.0) for r in results)}
        if K == 1:
            report["eval"] = results[0]["eval"]
        else:
            ens = {"format": "rshape-rm-ensemble", "members": [f"member_{k}" for k in range(K)],
                   "aggregate": recipe.ensemble.aggregate, "k": recipe.ensemble.k, "bootstrap": recipe.ensemble.bootstrap}
            if recipe.data.format == "pairs":
                members = torch.stack([r["scores"] for r in results])
                prompts, responses = pair_inputs(data.eval)
                lengths = response_lengths(RewardModel.load(model_dir / "member_0", "cpu").tokenizer, responses)
                report["eval"] = pairs_report(data.eval, aggregate_members(members, ens["aggregate"], ens["k"]), lengths,
                                              members)
                ens["reward_mean"], ens["reward_std"] = report["eval"]["reward/mean"], report["eval"]["reward/std"]
                write_json(model_dir / ENSEMBLE_FILE, ens)
            else:
                scorer = EnsembleRM.load_paths([model_dir / m for m in ens["members"]], device, torch.float32,
                                               ens["aggregate"], ens["k"])
                report["eval"] = evaluate_scorer(scorer, recipe, data.eval)
                ens["reward_mean"], ens["reward_std"] = report["eval"]["reward/mean"], report["eval"]["reward/std"]
                write_json(model_dir / ENSEMBLE_FILE, ens)
            log.write({"step": results[-1]["meta"].get("steps", 0), "ensemble": K, **_scalar_metrics(report["eval"])})
        if recipe.eval.best_of_n:
            e = recipe.eval
            scorer = load_reward_model(model_dir, device)
            report["best_of_n"] = best_of_n(scorer, e.policy, e.best_of_n, e.prompts, e.difficulties, e.max_new_tokens,
                                            e.temperature, recipe.seed, device, recipe.train.eval_batch_size)
            log.write({"step": results[-1]["meta"].get("steps", 0), **{f"best_of_n/accuracy@{r['n']}": r["accuracy"]
                                                                        for r in report["best_of_n"]["curve"]}})
        report["total_time_s"] = time.perf_counter() - t0
        write_json(run / "eval_report.json", report)
    finally:
        log.close()
    return report


def eval_data_config(model_dir: str | Path) -> tuple[RMRecipe, int]:
    """The data section (keys, format, built-in parameters) and seed a model was trained with, from its rm_meta.json."""
    import json

    p = Path(model_dir)
    meta_path = (ensemble_member_paths(p)[0][0] if is_ensemble_dir(p) else p) / META_FILE
    meta = json.loads(meta_path.read_text())
    saved = meta.get("data", {})
    data_cfg = RMDataConfig.model_validate({k: v for k, v in saved.items() if k in RMDataConfig.model_fields})
    head = meta.get("head", "bt")
    recipe = RMRecipe.model_validate({"data": data_cfg.model_dump(), "model": {
        "name": meta.get("base_model", "random:tiny-llama"), "head": head, "num_attributes": meta.get("num_attributes", 1)}})
    return recipe, int(saved.get("seed", 0))


def load_eval_examples(recipe: RMRecipe, seed: int, source: str | None = None) -> list:
    """The held-out set the model was trained with (`source` None), or the records of `source`."""
    cfg = recipe.data
    if source is None:
        return load_rm_data(cfg, recipe.model.num_attributes, seed).eval
    if source == BUILTIN_PREFERENCES:
        return tiny_preferences(cfg.eval_size, "eval", cfg.difficulties, seed, cfg.ties)
    if cfg.format == "pairs":
        return read_pairs(source, cfg)
    return read_scored(source, cfg, recipe.model.num_attributes)


def eval_rm(model_dir: str | Path, examples: list | None, recipe: RMRecipe, data_label: str, device: str = "auto",
            best: dict[str, Any] | None = None, aggregate: str | None = None, k: float | None = None) -> dict[str, Any]:
    """`rshape eval-rm`: evaluate an export on pairs or scored data, and best-of-N if asked."""
    dev = resolve_device(device)
    scorer = load_reward_model(model_dir, dev)
    if isinstance(scorer, EnsembleRM):
        scorer.aggregate = aggregate or scorer.aggregate
        scorer.k = scorer.k if k is None else k
    report: dict[str, Any] = {"model": str(model_dir), "data": data_label}
    if examples:
        report["eval"] = evaluate_scorer(scorer, recipe, examples)
    if best:
        report["best_of_n"] = best_of_n(scorer, device=dev, batch_size=recipe.train.eval_batch_size, **best)
    return report
