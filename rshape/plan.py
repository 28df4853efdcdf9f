"""`rshape rl --dry-run`: what a recipe would do, without training or writing anything.

The plan: steps, prompts and completions per step, the most tokens a step generates, the data (loaded when it is
reachable), the model's parameters and trainable parameters (counted on the meta device: no weights load), and an
estimate of the GPU memory: weights, gradients and AdamW state (with float32 masters for 16-bit full fine-tuning),
the KV cache of a step's generation, and the activations and logits of one training chunk. The estimate is a sum
of textbook terms (activations after Korthikanti et al. 2022, arXiv 2205.05198: ≈ 34·s·h bytes per layer and row
in 16-bit without recomputation); allocator overhead and fragmentation come on top, so read it as ±30%.
"""

from __future__ import annotations

from typing import Any

from rshape.recipe import Recipe, chunk_rows

GIB = 1024 ** 3
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def model_shape(name: str, trust_remote_code: bool = False) -> dict[str, Any] | None:
    """Architecture numbers and parameter counts of a model from its config alone (the model is built on the meta
    device: nothing is downloaded but config.json, nothing is allocated); None when the config is unreachable."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rshape.models import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)
    except Exception:  # offline and not cached, no such model...: the plan goes on without it
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    total = sum(p.numel() for p in model.parameters())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    return {
        "architecture": type(model).__name__, "parameters": total,
        "linear_parameters": sum(m.weight.numel() for m in linear.values()),
        "linear_shapes": {n: (m.in_features, m.out_features) for n, m in linear.items()},
        "layers": text.num_hidden_layers, "hidden": text.hidden_size, "vocab": text.vocab_size,
        "kv_heads": getattr(text, "num_key_value_heads", None) or heads,
        "head_dim": getattr(text, "head_dim", None) or text.hidden_size // heads,
    }


def lora_parameters(shape: dict[str, Any], r: int, targets: str | list[str]) -> int:
    """r·(in + out) for every adapted linear layer (`all-linear`: all but the output layer, as peft does)."""
    out = 0
    for name, (fan_in, fan_out) in shape["linear_shapes"].items():
        leaf = name.rsplit(".", 1)[-1]
        chosen = leaf not in ("lm_head", "embed_out", "output") if targets == "all-linear" else leaf in targets
        out += r * (fan_in + fan_out) if chosen else 0
    return out


def memory_estimate(recipe: Recipe, shape: dict[str, Any], prompt_tokens: int, dtype: str) -> dict[str, float]:
    """Bytes of each term (see the module docstring), for one GPU."""
    b = BYTES.get(dtype, 4)
    m, ro, algo = recipe.model, recipe.rollout, recipe.algorithm
    linear, total = shape["linear_parameters"], shape["parameters"]
    weights = (linear * 0.5 + (total - linear) * b) if m.load_in_4bit else total * b
    if m.lora.enabled:
        trainable = lora_parameters(shape, m.lora.r, m.lora.target_modules)
        optimiser = trainable * 16  # peft keeps adapters in float32: weight, gradient, two AdamW moments
    elif b < 4 and recipe.optim.float32_master:  # 16-bit gradient; float32 master, its gradient, two AdamW moments
        trainable = total
        optimiser = total * (b + 16)
    else:
        trainable = total
        optimiser = total * 3 * b  # gradient and two AdamW moments in the parameters' dtype
    reference = weights if (algo.kl_beta > 0 and not m.lora.enabled) else 0.0
    rows = ro.prompts_per_step * ro.group_size
    seq = prompt_tokens + ro.max_new_tokens
    kv_cache = 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * b * rows * seq
    chunk = chunk_rows(algo.logprob_chunk, seq, shape["vocab"])
    row_tokens = chunk * seq * shape["hidden"]
    if m.gradient_checkpointing:  # each layer's input is kept; one layer's activations are rebuilt at a time
        activations = (shape["layers"] * b + 17 * b) * row_tokens
    else:
        activations = shape["layers"] * 17 * b * row_tokens
    logits = 3 * chunk * seq * shape["vocab"] * 4  # float32 logits, log-softmax and its gradient
    return {"weights": weights, "frozen reference": reference, "trainable state": optimiser, "KV cache": kv_cache,
            "activations": activations, "logits": logits, "trainable_parameters": trainable, "chunk_rows": chunk}


def build_plan(recipe: Recipe) -> dict[str, Any]:
    """Everything `print_plan` shows; loads the data, tokenizer and config when they are reachable."""
    from rshape.models import resolve_device, resolve_dtype
    from rshape.tasks import DataError, build_task

    plan: dict[str, Any] = {"recipe": recipe}
    try:
        plan["task"] = build_task(recipe.task, recipe.seed)
    except DataError as exc:
        plan["data_error"] = str(exc)
    tokenizer = None
    try:
        from rshape.models import load_tokenizer

        tokenizer = load_tokenizer(recipe.model.name, recipe.model.trust_remote_code)
        if len(tokenizer) < 2:  # transformers builds an empty tokenizer for a directory without tokenizer files
            tokenizer = None
            plan["tokenizer_error"] = "the model directory has no tokenizer files"
    except Exception as exc:  # offline, not cached: the plan says so
        plan["tokenizer_error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if tokenizer is not None and "task" in plan:
        from rshape.rl.rollout import render_prompt

        task = plan["task"]
        sample = task.train[:2000]
        lengths = [len(tokenizer(render_prompt(p.prompt, tokenizer, task.system_prompt, task.chat))["input_ids"])
                   for p in sample]
        plan["prompt_tokens"] = (min(lengths), sum(lengths) / len(lengths), max(lengths), len(sample))
    plan["shape"] = model_shape(recipe.model.name, recipe.model.trust_remote_code)
    device = resolve_device(recipe.device) if recipe.device != "auto" else None
    plan["dtype"] = recipe.dtype if recipe.dtype != "auto" else (
        "bfloat16 on a GPU with bf16, else float32" if device is None else str(resolve_dtype("auto", device)).split(".")[-1])
    if plan["shape"] is not None:
        dtype = recipe.dtype if recipe.dtype != "auto" else "bfloat16"
        prompt = plan["prompt_tokens"][2] if "prompt_tokens" in plan else 256
        plan["memory"] = memory_estimate(recipe, plan["shape"], prompt, dtype)
        plan["memory_dtype"] = dtype
        plan["memory_prompt"] = prompt
    return plan


def _gb(x: float) -> str:
    return f"{x / GIB:.1f} GB" if x >= 0.05 * GIB else f"{x / 1024 ** 2:.0f} MB"


def print_plan(plan: dict[str, Any], out: Any = print) -> None:
    """The plan as lines of text (`out` is print or a console's print)."""
    r: Recipe = plan["recipe"]
    ro, tr = r.rollout, r.train
    rows = ro.prompts_per_step * ro.group_size
    out("dry run: nothing is trained or written")
    shape = plan["shape"]
    model = f"{r.model.name}"
    if shape is not None:
        model += f" ({shape['architecture']}, {shape['parameters'] / 1e6:,.1f} M parameters)"
        trainable = plan["memory"]["trainable_parameters"]
        how = f"LoRA r={r.model.lora.r} on {r.model.lora.target_modules}" if r.model.lora.enabled else "full fine-tuning"
        model += f"; {how}: {trainable / 1e6:,.2f} M trainable ({100 * trainable / shape['parameters']:.2f}%)"
    else:
        model += " (its config.json is not reachable: no parameter count or memory estimate; download the model or "\
                 "run online)"
    out(f"  model      {model}")
    out(f"  dtype      {plan['dtype']}" + (", base in 4-bit NF4" if r.model.load_in_4bit else ""))
    if "task" in plan:
        t = plan["task"]
        out(f"  data       {len(t.train):,} training problems; eval: {len(t.eval):,} ({t.eval_source})")
    else:
        out(f"  data       not loaded: {plan['data_error']}")
    if "prompt_tokens" in plan:
        lo, mean, hi, n = plan["prompt_tokens"]
        out(f"  prompts    {lo}–{hi} tokens (mean {mean:.0f}, over {n:,} training prompts)")
    elif "tokenizer_error" in plan:
        out(f"  prompts    tokenizer not loaded ({plan['tokenizer_error']}): prompt lengths unknown, 256 assumed")
    out(f"  steps      {tr.steps:,} × {ro.prompts_per_step} prompts × {ro.group_size} completions = {rows:,} completions "
        f"per step ({tr.steps * rows:,} in all"
        + (", more with dynamic-sampling refills" if r.algorithm.dynamic_sampling.enabled else "") + ")")
    out(f"  tokens     ≤ {rows * ro.max_new_tokens:,} generated per step ({rows:,} × {ro.max_new_tokens:,}); "
        f"{r.algorithm.epochs} epoch(s) × {r.algorithm.minibatches} optimiser step(s) per step")
    samples = r.eval.samples
    out(f"  eval       at the start, every {r.eval.every} steps and at the end: "
        + ("greedy" if not samples else f"{samples} samples per problem"))
    weight = {k: f"×{v.weight:g}" if isinstance(v.weight, (int, float)) else "scheduled weight" for k, v in r.rewards.items()}
    out(f"  rewards    {', '.join(f'{k} ({v.type or k}, {weight[k]})' for k, v in r.rewards.items())}; "
        f"advantage {r.algorithm.advantage}")
    if "memory" in plan:
        m = plan["memory"]
        resident = ["weights", "frozen reference", "trainable state"]
        generation, update = m["KV cache"], m["activations"] + m["logits"]
        total = sum(m[k] for k in resident) + max(generation, update)  # the KV cache is freed before the update
        out(f"  GPU memory (estimate, {plan['memory_dtype']}, prompts of {plan['memory_prompt']} tokens, "
            f"{m['chunk_rows']} rows per training chunk):")
        for k in [*resident, "KV cache", "activations", "logits"]:
            if m[k]:
                out(f"    {k:<18}{_gb(m[k]):>10}" + ("   (generation)" if k == "KV cache" else
                                                    "   (update)" if k in ("activations", "logits") else ""))
        fits = next((f"fits one {g} GB GPU" for g in (24, 40, 48, 80, 94, 141) if total * 1.1 < g * 1e9),
                    "more than one GPU holds")
        out(f"    {'peak':<18}{_gb(total):>10}   (resident + the larger of generation and update, ±30%; {fits} with "
            "10% to spare)")
        if m["logits"] > 0.5 * total:
            out("    note: the logits of a training chunk dominate: lower algorithm.logprob_chunk")
