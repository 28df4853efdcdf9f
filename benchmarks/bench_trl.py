"""rshape vs TRL: GRPO seconds per step and peak memory on the CPU, same model, prompts and settings.

    python benchmarks/bench_trl.py                  # defaults: 3 rounds x 12 steps, 8 prompts x 8 completions, 64 new tokens
    python benchmarks/bench_trl.py --steps 4 --rounds 1 --json out.json   # a quick look
    python benchmarks/bench_trl.py --no-lora        # full fine-tuning on both sides

Each framework runs in its own subprocess (`--worker trl|rshape`), one after the other, so each peak RSS
(`ru_maxrss` of the worker) is that framework's alone. The parent prints a markdown table and the ratios
rshape steps/s / TRL steps/s (target >= 1.5) and rshape peak RSS / TRL peak RSS (target <= 1.0).

Matched: model directory, tiny-world train prompts, correctness reward (same verifier), B prompts x G
completions per optimizer step (one generation per step, one update per generation), max new tokens,
temperature 1, top-p 1, no top-k, EOS id 1 / pad id 0, beta (KL) 0, per-sequence token-mean loss ("grpo"
aggregation on both), group-std advantages (eps 1e-4), clip 0.2, AdamW lr 1e-4 constant, grad-norm clip 1,
float32, LoRA r16/alpha32/dropout 0 on all linear layers (or full fine-tuning on both), no gradient
checkpointing, 2 torch threads. Step time: rshape's own `perf/step_time` (metrics.jsonl, which excludes its
start/end evaluation); TRL's from a callback, on_step_begin -> on_step_end (generation, scoring, loss,
backward, optimizer step). The first `--warmup` steps are left out of both means.

Needs `pip install trl` (the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEED_TARGET = 3.0  # rshape steps/s over TRL steps/s (issue 16)
MEMORY_TARGET = 0.6  # rshape peak RSS over TRL peak RSS
GEN_BOUND_TARGET = 5.0  # generation time over its FLOP bound
UPDATE_BOUND_TARGET = 2.5  # the rest of the step over the update's FLOP bound
THREADS = 2
DP_RANKS = 2  # the data-parallel row: 2 processes of 1 thread on the same 2 cores
WORLD = int(os.environ.get("WORLD_SIZE", "1"))  # TRL's worker under `accelerate launch`: each process takes a share


# --------------------------------------------------------------------------- shared


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompt_tokens(model_dir: str) -> float:
    """Mean prompt tokens of the benchmark's training prompts under the model's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    problems = train_problems()[:500]
    return statistics.fmean(len(tok(p.prompt)["input_ids"]) for p in problems)


def train_problems():
    from rshape.tasks.arithmetic import addition_task

    return addition_task(eval_per_difficulty=4, seed=0).train


def prepare_model(tmp: Path) -> str:
    """A copy of the built-in tiny policy if it is already there, else a random-init tiny Llama, under tmp.

    Copied, so both workers load the same weights even if the shipped policy is rebuilt during the run.
    """
    from rshape.models import BUILTIN_MODELS

    builtin = BUILTIN_MODELS["builtin:tiny-addition"]
    if (builtin / "config.json").is_file():
        return str(shutil.copytree(builtin, tmp / "tiny-addition"))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rshape.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    model.generation_config.bos_token_id = None
    path = tmp / "random-tiny-llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def summarize(framework: str, runs: list[dict], warmup: int) -> dict:
    """Pool the timed steps (all but the first `warmup` of each run) of every round of one framework."""
    timed = [t for r in runs for t in r["step_times"][warmup:]]
    lengths = [x for r in runs for x in r["lengths"][warmup:]]
    gen = [t for r in runs for t in r["gen_times"][warmup:]]
    mean = statistics.fmean(timed)
    return {"framework": framework, "rounds": len(runs), "timed_steps": len(timed),
            "step_times": [r["step_times"] for r in runs], "s_per_step_mean": mean,
            "s_per_step_median": statistics.median(timed), "s_per_step_min": min(timed), "steps_per_s": 1.0 / mean,
            "gen_s_per_step_median": statistics.median(gen) if gen else float("nan"),
            "peak_rss_mb": max(r.get("rank_peak_rss_mb", r["peak_rss_mb"]) for r in runs),
            "import_rss_mb": max(r["import_rss_mb"] for r in runs), "wall_s": [r["wall_s"] for r in runs],
            "completion_tokens_mean": statistics.fmean(lengths) if lengths else float("nan")}


# --------------------------------------------------------------------------- workers


def worker_trl(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(THREADS if WORLD == 1 else 1)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rshape.tasks.arithmetic import verify_integer_answer
    from rshape.tasks.base import Problem

    import_rss = peak_rss_mb()
    problems = train_problems()
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in problems], "answer": [p.answer for p in problems]})

    def correctness(prompts, completions, answer, **_):
        return [float(verify_integer_answer(c, Problem(id="", prompt=p, answer=a)))
                for p, c, a in zip(prompts, completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.lengths: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    B, G = args.prompts, args.group
    config = GRPOConfig(
        output_dir=str(Path(args.workdir) / "trl"), seed=0, use_cpu=True, bf16=False, fp16=False,
        report_to=[], logging_steps=1, save_strategy="no", eval_strategy="no", disable_tqdm=True,
        max_steps=args.steps, per_device_train_batch_size=B * G // WORLD, num_generations=G, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, max_completion_length=args.max_new_tokens,
        temperature=args.temperature, top_p=1.0, top_k=0, beta=0.0, loss_type="grpo", scale_rewards="group",
        epsilon=0.2, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, gradient_checkpointing=False, model_init_kwargs={"dtype": "float32"},
        log_completions=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    peft_config = None
    if args.lora:
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    timer = StepTimer()
    trainer = GRPOTrainer(model=args.model, reward_funcs=[correctness], args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[timer])
    gen_times: list[float] = []
    generate = trainer._generate_single_turn  # padding + model.generate + EOS masking, for the breakdown only

    def timed_generate(*a, **kw):
        t = time.perf_counter()
        out = generate(*a, **kw)
        gen_times.append(time.perf_counter() - t)
        return out

    trainer._generate_single_turn = timed_generate
    assert trainer.eos_token_ids == [1] and tokenizer.pad_token_id == 0, (trainer.eos_token_ids, tokenizer.pad_token_id)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    # TRL's completions/mean_length counts the EOS token (it keeps tokens up to and including EOS)
    return {"wall_s": wall, "step_times": timer.times, "gen_times": gen_times, "lengths": timer.lengths,
            "import_rss_mb": import_rss}


def rshape_recipe(args: argparse.Namespace, run_dir: Path, threads: int) -> dict:
    """The rshape recipe matched to TRL's settings (see the module docstring)."""
    return {
        "seed": 0, "output_dir": str(run_dir), "device": "cpu", "dtype": "float32", "threads": threads,
        "model": {"name": args.model, "gradient_checkpointing": False,
                  "lora": {"enabled": args.lora, "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}},
        "task": {"name": "addition", "eval_per_difficulty": 4},
        "rollout": {"prompts_per_step": args.prompts, "group_size": args.group, "max_new_tokens": args.max_new_tokens,
                    "temperature": args.temperature, "top_p": 1.0},
        "rewards": {"correctness": {"weight": 1.0}},
        "algorithm": {"advantage": "grpo", "adv_eps": 1e-4, "loss_agg": "grpo", "clip_low": 0.2, "clip_high": 0.2,
                      "kl_beta": 0.0, "epochs": 1, "minibatches": 1},
        "optim": {"lr": args.lr, "weight_decay": 0.0, "schedule": "constant", "warmup_steps": 0, "max_grad_norm": 1.0},
        "train": {"steps": args.steps, "checkpoint_every": 0, "progress": False},
        "eval": {"every": 0},
    }


def rshape_rows(run_dir: Path) -> dict:
    """Step and generation times and tokens per completion (EOS counted, as TRL counts) from metrics.jsonl."""
    from rshape.runs import read_jsonl

    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "perf/step_time" in r]
    return {"step_times": [r["perf/step_time"] for r in rows], "gen_times": [r["perf/gen_time"] for r in rows],
            "lengths": [r["length/mean"] + (1.0 - r["truncation_rate"]) for r in rows]}


def worker_rshape_dp(args: argparse.Namespace) -> dict:
    """rshape with 2 data-parallel ranks of 1 thread each (torchrun, gloo); peak RSS is the largest rank's."""
    import yaml

    run_dir = Path(args.workdir) / "rshape-dp"
    recipe = Path(args.workdir) / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(rshape_recipe(args, run_dir, 1)))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run([str(torchrun), "--standalone", f"--nproc-per-node={DP_RANKS}", "-m", "rshape.cli", "rl", str(recipe)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rank_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_s": wall, **rshape_rows(run_dir), "import_rss_mb": float("nan"), "rank_peak_rss_mb": rank_rss}


def worker_trl_dp(args: argparse.Namespace) -> dict:
    """TRL with 2 processes of 1 thread (`accelerate launch --cpu`, gloo): each takes half of the B·G completions."""
    accelerate = Path(sys.executable).with_name("accelerate")
    result = Path(args.workdir) / "trl-dp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [str(accelerate), "launch", "--cpu", f"--num_processes={DP_RANKS}", "--num_cpu_threads_per_process=1",
           str(Path(__file__).resolve()), "--worker", "trl", "--model", args.model, "--workdir", args.workdir,
           "--result", str(result), "--steps", str(args.steps), "--warmup", str(args.warmup), "--prompts",
           str(args.prompts), "--group", str(args.group), "--max-new-tokens", str(args.max_new_tokens), "--temperature",
           str(args.temperature), "--lr", str(args.lr), "--lora" if args.lora else "--no-lora"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    res = json.loads(result.read_text())
    res["rank_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return res


def matmul_gflops(rows: int, inner: int, cols: int, threads: int, repeats: int = 50, spells: int = 5) -> float:
    """This CPU's float32 matmul throughput at one shape, GFLOP/s: the best of `spells` bursts of `repeats`
    products, half a second apart (a single burst swung 126–200 GFLOP/s between runs on the shared VM)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    best = float("inf")
    for spell in range(spells):
        if spell:
            time.sleep(0.5)
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    return 2 * rows * inner * cols / best / 1e9


def flop_bound(model_dir: str, args: argparse.Namespace, tokens_per_completion: float, prompt_tokens: float) -> dict:
    """The FLOPs of one step and the time they take at this CPU's measured matmul throughput: generation at the
    decode shape (B·G rows × hidden), the update at the training shape; every weight multiply counted (2·params per
    token), the backward as 1× the forward with LoRA (no base-weight gradients) or 2× with full fine-tuning."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    h, f, n, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * (h // cfg.num_attention_heads)
    per_token = 2 * (n * (h * h + 2 * h * kv + h * h + 3 * h * f) + h * v)  # projections, MLP, output layer
    rows = args.prompts * args.group
    gen_flops = per_token * rows * (prompt_tokens + tokens_per_completion)
    update_flops = per_token * rows * (prompt_tokens + tokens_per_completion) * (2 if args.lora else 3)
    decode = matmul_gflops(rows, h, f, THREADS)
    train_ = matmul_gflops(int(rows * (prompt_tokens + tokens_per_completion)), h, f, THREADS)
    return {"gen_gflop": gen_flops / 1e9, "update_gflop": update_flops / 1e9, "decode_gflops": decode,
            "train_gflops": train_, "gen_bound_s": gen_flops / decode / 1e9, "update_bound_s": update_flops / train_ / 1e9}


def worker_rshape(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    from rshape.recipe import Recipe
    from rshape.rl.loop import train

    import_rss = peak_rss_mb()
    run_dir = Path(args.workdir) / "rshape"
    recipe = Recipe.model_validate(rshape_recipe(args, run_dir, THREADS))
    t0 = time.perf_counter()
    train(recipe)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, **rshape_rows(run_dir), "import_rss_mb": import_rss}


# --------------------------------------------------------------------------- parent


def run_worker(name: str, args: argparse.Namespace, model: str, root: Path, round_: int | str) -> dict:
    workdir = root / f"{name}-{round_}"
    workdir.mkdir()
    out = workdir / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--model", model, "--workdir", str(workdir),
           "--result", str(out), "--steps", str(args.steps), "--warmup", str(args.warmup), "--prompts", str(args.prompts),
           "--group", str(args.group), "--max-new-tokens", str(args.max_new_tokens), "--temperature", str(args.temperature),
           "--lr", str(args.lr), "--lora" if args.lora else "--no-lora"]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    what = f"round {round_ + 1}/{args.rounds}" if isinstance(round_, int) else f"scaling {round_}"
    print(f"{what}: {name}, {args.steps} steps...", file=sys.stderr, flush=True)
    log = workdir / "worker.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=workdir)
    if proc.returncode != 0 or not out.is_file():
        sys.stderr.write(log.read_text()[-6000:])
        raise SystemExit(f"{name} worker failed (exit {proc.returncode}); log above")
    return json.loads(out.read_text())


def report(results: dict[str, dict], args: argparse.Namespace, model_label: str) -> dict:
    trl, rs = results["trl"], results["rshape"]
    mode = "LoRA r16" if args.lora else "full fine-tuning"
    print(f"\nGRPO on CPU ({THREADS} threads), model {model_label}, {args.prompts} prompts x {args.group} completions/step, "
          f"{args.max_new_tokens} max new tokens, {mode}, float32; {args.rounds} x {args.steps} steps each, "
          f"first {args.warmup} of each run excluded\n")
    print("| framework | s/step (mean) | s/step (median) | s/step (min) | steps/s | generation s/step (median) | peak RSS MB "
          "| RSS after imports MB | mean completion tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in (trl, rs, *[results[k] for k in ("trl-dp", "rshape-dp") if k in results]):
        cells = [r["framework"], f"{r['s_per_step_mean']:.3f}", f"{r['s_per_step_median']:.3f}",
                 f"{r['s_per_step_min']:.3f}", f"{r['steps_per_s']:.3f}",
                 f"{r['gen_s_per_step_median']:.3f}", f"{r['peak_rss_mb']:.0f}", f"{r['import_rss_mb']:.0f}",
                 f"{r['completion_tokens_mean']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    print("\n(completion tokens per completion, counting the EOS token; peak RSS = ru_maxrss of the worker process)")
    speed = rs["steps_per_s"] / trl["steps_per_s"]
    speed_median = trl["s_per_step_median"] / rs["s_per_step_median"]
    speed_min = trl["s_per_step_min"] / rs["s_per_step_min"]
    memory = rs["peak_rss_mb"] / trl["peak_rss_mb"]
    speed_ok, memory_ok = speed >= SPEED_TARGET, memory <= MEMORY_TARGET
    print(f"\nspeed  rshape/TRL steps/s   = {speed:.2f}x  (target >= {SPEED_TARGET}x)  {'PASS' if speed_ok else 'FAIL'}")
    print(f"       (from medians: {speed_median:.2f}x, from fastest steps: {speed_min:.2f}x; less sensitive to load)")
    print(f"memory rshape/TRL peak RSS  = {memory:.2f}x  (target <= {MEMORY_TARGET}x)  {'PASS' if memory_ok else 'FAIL'}")
    print(f"overall: {'PASS' if speed_ok and memory_ok else 'FAIL'}")
    dp_ratio = None
    if "rshape-dp" in results:
        dp = results["rshape-dp"]
        dp_ratio = rs["s_per_step_median"] / dp["s_per_step_median"]
        print(f"\ndata-parallel: {DP_RANKS} ranks × 1 thread vs 1 process × {THREADS} threads = {dp_ratio:.2f}x "
              f"steps/s (medians); vs TRL {trl['s_per_step_median'] / dp['s_per_step_median']:.2f}x; peak RSS per rank "
              f"{dp['peak_rss_mb']:.0f} MB (the DP row's peak RSS is the largest rank's)")
    if "trl-dp" in results and "rshape-dp" in results:
        best_trl = min((trl, results["trl-dp"]), key=lambda r: r["s_per_step_median"])
        best_rs = min((rs, results["rshape-dp"]), key=lambda r: r["s_per_step_median"])
        print(f"best configurations: {best_rs['framework']} vs {best_trl['framework']} = "
              f"{best_trl['s_per_step_median'] / best_rs['s_per_step_median']:.2f}x steps/s (medians)")
    fb = results.get("flop_bound")
    if fb:
        gen = rs["gen_s_per_step_median"]
        upd = rs["s_per_step_median"] - gen
        print(f"\nwhere rshape's step goes, against this CPU's float32 matmul throughput ({THREADS} threads: "
              f"{fb['decode_gflops']:.0f} GFLOP/s at the decode shape, {fb['train_gflops']:.0f} at the training shape):")
        g, u = gen / fb["gen_bound_s"], upd / fb["update_bound_s"]
        print(f"  generation  {gen:.3f} s/step for {fb['gen_gflop']:.2f} GFLOP: bound {fb['gen_bound_s']:.3f} s, "
              f"{g:.1f}x the bound (target <= {GEN_BOUND_TARGET}x) {'PASS' if g <= GEN_BOUND_TARGET else 'FAIL'}")
        print(f"  rest (scoring, update) {upd:.3f} s/step for {fb['update_gflop']:.2f} GFLOP: bound {fb['update_bound_s']:.3f} s,"
              f" {u:.1f}x the bound (target <= {UPDATE_BOUND_TARGET}x) {'PASS' if u <= UPDATE_BOUND_TARGET else 'FAIL'}")
    if results.get("scaling"):
        print(f"\nscaling (rshape, 1 process × {THREADS} threads; median s/step, generation in brackets):")
        lengths = sorted({t for _, t in results["scaling"]})
        print("| G \\ max new tokens | " + " | ".join(str(t) for t in lengths) + " |")
        print("|---|" + "---:|" * len(lengths))
        for G in sorted({g for g, _ in results["scaling"]}):
            cells = [f"{results['scaling'][(G, t)]['s']:.3f} ({results['scaling'][(G, t)]['gen']:.3f})" for t in lengths]
            print(f"| {G} | " + " | ".join(cells) + " |")
    load = results.get("load_avg", [])
    if load and max(load) > THREADS + 0.5:
        print(f"warning: 1-min load average reached {max(load):.1f} on {os.cpu_count()} cores during the run; "
              "other processes competed for the CPU, so timings are noisy (try --rounds 3 on a quiet machine)")
    results = {**results, "scaling": {f"G{g}-T{t}": v for (g, t), v in results.get("scaling", {}).items()}}
    return {"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "json", "result", "workdir")},
            "results": results, "speed_ratio": speed, "speed_ratio_median": speed_median,
            "speed_ratio_min": speed_min, "memory_ratio": memory, "dp_speed_ratio": dp_ratio,
            "speed_pass": speed_ok, "memory_pass": memory_ok}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the means")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step (B)")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True, help="LoRA (default) or full fine-tuning")
    p.add_argument("--rounds", type=int, default=3, help="runs of each framework, alternating; steps are pooled "
                   "(timings on a shared VM swing ±20%% from run to run)")
    p.add_argument("--model", help="model directory (default: built-in tiny policy if present, else a random tiny Llama)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--scaling", action="store_true", help="also time rshape alone over G = 4, 8, 16, 32 x max new "
                   "tokens 32, 64, 128 (4 steps each)")
    p.add_argument("--dp", action=argparse.BooleanOptionalAction, default=True,
                   help=f"also time rshape with {DP_RANKS} data-parallel ranks of 1 thread (torchrun, gloo) and TRL with "
                   f"{DP_RANKS} processes of 1 thread (accelerate launch --cpu)")
    p.add_argument("--worker", choices=["trl", "rshape", "rshape-dp", "trl-dp"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.warmup >= args.steps:
        p.error("--warmup must be smaller than --steps")

    if args.worker:
        fn = {"trl": worker_trl, "rshape": worker_rshape, "rshape-dp": worker_rshape_dp, "trl-dp": worker_trl_dp}[
            args.worker]
        res = fn(args)
        res["peak_rss_mb"] = peak_rss_mb()
        if os.environ.get("RANK", "0") == "0":  # under a launcher, rank 0 reports
            Path(args.result).write_text(json.dumps(res))
        return

    with tempfile.TemporaryDirectory(prefix="bench_trl_") as tmp:
        workdir = Path(tmp)
        model = args.model or prepare_model(workdir)
        model_label = args.model or ("builtin:tiny-addition (copy)" if Path(model).name == "tiny-addition"
                                     else "random-init tiny Llama (built-in policy not found)")
        print(f"model: {model_label}", file=sys.stderr)
        names = ["trl", "rshape", *(["trl-dp", "rshape-dp"] if args.dp else [])]
        runs: dict[str, list[dict]] = {name: [] for name in names}
        load = [os.getloadavg()[0]]
        for round_ in range(args.rounds):  # alternate, so background load hits all alike
            for name in (names if round_ % 2 == 0 else names[::-1]):
                runs[name].append(run_worker(name, args, model, workdir, round_))
                load.append(os.getloadavg()[0])
        labels = {"trl": f"TRL (1 process × {THREADS} threads)", "rshape": f"rshape (1 process × {THREADS} threads)",
                  "trl-dp": f"TRL ({DP_RANKS} processes × 1 thread)", "rshape-dp": f"rshape ({DP_RANKS} ranks × 1 thread)"}
        results = {name: summarize(labels[name], runs[name], args.warmup) for name in names}
        results["load_avg"] = load
        rs = results["rshape"]
        results["flop_bound"] = flop_bound(model, args, rs["completion_tokens_mean"], prompt_tokens(model))
        if args.scaling:
            results["scaling"] = {}
            for G in (4, 8, 16, 32):
                for T in (32, 64, 128):
                    sub = argparse.Namespace(**{**vars(args), "group": G, "max_new_tokens": T, "steps": 4, "warmup": 1})
                    r = summarize("rshape", [run_worker("rshape", sub, model, workdir, f"G{G}-T{T}")], 1)
                    results["scaling"][(G, T)] = {"s": r["s_per_step_median"], "gen": r["gen_s_per_step_median"]}
    out = report(results, args, model_label)
    out["settings"]["model"] = model_label
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
