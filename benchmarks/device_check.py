"""The paths CI cannot exercise (no GPU there), checked in one run on an accelerator machine.

    python benchmarks/device_check.py                    # cuda when present, else cpu; every check
    python benchmarks/device_check.py --device cpu --quick --only logits,tokens,lean   # what the test suite runs
    python benchmarks/device_check.py --json out.json    # also write the results

Each check prints one line, PASS or FAIL, with its numbers; the exit code is 1 if any check fails.

- logits   the fast decoder (prefill + 4 one-token steps) against the model's own forward, LoRA adapters on,
           Llama with grouped K/V heads and Qwen3 (q/k norms), in float32 and bfloat16
- tokens   the `hf`, `fast` and `compiled` decoders sample the same tokens (float32, rows finishing at different
           steps)
- lean     the lean LoRA training forward: logits and LoRA gradients equal peft's (float32; bfloat16 close)
- qlora    a 4-bit NF4 base with LoRA (bitsandbytes) trains 2 `rshape rl` steps: finite loss, adapters moved
- masters  bfloat16 full fine-tuning at lr 1e-6 keeps float32 master weights that hold the steps bf16 rounds away
- ranks    `torchrun` data-parallel ranks (NCCL on GPUs, gloo on the CPU) give the 1-process run; with one GPU
           only the 1-rank launch (NCCL refuses two ranks on one GPU, and one rank starts no process group)
- speed    one rollout of 64 rows × 64 tokens and one update with each decoder / forward, in the device's fast
           dtype, on a ~100M-parameter random Llama (`--quick`: the built-in tiny policy)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHECKS: dict = {}


def check(name: str):
    def register(fn):
        CHECKS[name] = fn
        return fn
    return register


def tiny(kind: str, dtype: torch.dtype, device: torch.device, lora: bool = True, hidden: int = 64) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=97, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    if kind == "llama_gqa":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=16, **common))
    model = model.to(device=device, dtype=dtype)
    if not lora:
        return model.eval()
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0: make the adapters matter
                p.normal_(0, 0.1)
    return model.eval()


def prompts(device: torch.device, repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[5, 9, 12, 7, 3], [0, 0, 0, 8, 4], [0, 6, 6, 2, 11]], device=device).repeat(repeat, 1)
    return ids, (ids != 0).long()


@check("logits")
def decoder_logits(device: torch.device, quick: bool) -> str:
    from rshape.rl.fast_decode import FastDecoder
    from rshape.rl.rollout import positions_from_mask

    worst = []
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        for kind in ("llama_gqa", "qwen3"):
            model = tiny(kind, dtype, device)
            ids, mask = prompts(device)
            added = torch.tensor([[13, 14, 15, 16], [17, 18, 19, 20], [21, 22, 23, 24]], device=device)
            dec = FastDecoder(model)
            with torch.no_grad():
                got = [dec.prefill(ids, mask, positions_from_mask(mask), max_new_tokens=4)]
                pos = positions_from_mask(mask)[:, -1] + 1
                got += [dec.step(added[:, t], pos + t) for t in range(3)]
                full = torch.cat([mask, torch.ones_like(added)], 1)
                want = model(input_ids=torch.cat([ids, added], 1), attention_mask=full,
                             position_ids=positions_from_mask(full)).logits[:, ids.shape[1] - 1:]
            scale = want.float().abs().max().item()
            diff = max((g.float() - want[:, t].float()).abs().max().item() for t, g in enumerate(got)) / scale
            worst.append(f"{kind} {str(dtype)[6:]} {diff:.1e}")
            assert diff < tolerance, f"{kind} {dtype}: max |Δlogit| / max |logit| = {diff:.2e} ≥ {tolerance}"
    return "max |Δlogit| / max |logit|: " + ", ".join(worst)


@check("tokens")
def decoders_same_tokens(device: torch.device, quick: bool) -> str:
    from rshape.rl.rollout import generate
    from rshape.rl.sampling import sample_keys

    model = tiny("llama_gqa", torch.float32, device)
    ids, mask = prompts(device, repeat=4)
    keys = sample_keys(0, 3, [f"p{i % 3}" for i in range(12)], [i // 3 for i in range(12)]).to(device)
    hf, _ = generate(model, ids, mask, max_new_tokens=12, eos_token_id=-1, pad_token_id=0, keys=keys, decoder="hf")
    eos = int(torch.bincount(hf[:, 1:].flatten().cpu()).argmax())  # a common token as EOS: rows stop at different steps
    out = {d: generate(model, ids, mask, max_new_tokens=16, eos_token_id=eos, pad_token_id=0, keys=keys, decoder=d)[0]
           for d in ("hf", "fast", "compiled")}
    stops = len({int((r == eos).int().argmax()) for r in out["hf"] if (r == eos).any()})
    for d in ("fast", "compiled"):
        assert torch.equal(out[d], out["hf"]), f"{d}: tokens differ from hf at {(out[d] != out['hf']).nonzero()[:3].tolist()}"
    return f"hf = fast = compiled on 12 rows × 16 tokens ({stops} distinct stopping steps)"


@check("lean")
def lean_forward_grads(device: torch.device, quick: bool) -> str:
    from rshape.rl.lean_forward import lean_forward
    from rshape.rl.rollout import positions_from_mask

    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9, 1, 0], [0, 5, 9, 6, 3, 3, 4, 2, 1], [5, 6, 7, 8, 4, 1, 0, 0, 0]],
                       device=device)
    mask = (ids != 0).long()
    mask[0, 2:8] = 1
    weights = torch.randn(3, 6, 97, device=device)  # a loss that touches every kept logit

    def grads(model: torch.nn.Module, forward) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        logits = forward(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                         logits_to_keep=6).logits
        (logits.float() * weights * mask[:, -6:, None]).sum().backward()
        return [p.grad.float().clone() for n, p in model.named_parameters() if "lora_" in n]

    notes = []
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        model = tiny("qwen3", dtype, device).train()
        want = grads(model, lambda **kw: model(**kw, use_cache=False))  # noqa: B023 (called at once)
        lean = lean_forward(model)
        assert lean is not None, "the lean forward does not apply"
        got = grads(model, lean)
        diff = max(((g - w).abs().max() / w.abs().max().clamp_min(1e-12)).item() for g, w in zip(got, want))
        notes.append(f"{str(dtype)[6:]} {diff:.1e}")
        assert diff < tolerance, f"{dtype}: max relative LoRA-gradient difference {diff:.2e} ≥ {tolerance}"
    return "max |Δgrad| / max |grad| per LoRA tensor: " + ", ".join(notes)


def saved_model(root: Path, hidden: int = 64) -> str:
    """A random 2-layer tiny-world Llama saved under root (64 wide: bitsandbytes' 4-bit blocks want 64)."""
    from transformers import LlamaForCausalLM

    from rshape.tasks.tokenizer import build_char_tokenizer
    from rshape.tasks.warmstart import tiny_llama_config

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                       num_hidden_layers=2)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return str(root / "model")


def recipe_dict(model: str, out: Path, device: torch.device, **model_keys) -> dict:
    return {"seed": 0, "output_dir": str(out), "device": str(device), "dtype": "float32", "threads": 1,
            "model": {"name": model, "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}, **model_keys},
            "task": {"name": "addition", "eval_per_difficulty": 2},
            "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 12},
            "rewards": {"correctness": {"weight": 1.0}, "length": {"weight": 0.4}},  # lengths differ: advantages ≠ 0
            "optim": {"lr": 1e-3}, "train": {"steps": 2, "checkpoint_every": 0, "progress": False},
            "eval": {"every": 0}}


@check("qlora")
def qlora(device: torch.device, quick: bool) -> str:
    from rshape.recipe import Recipe
    from rshape.rl.loop import train
    from rshape.runs import read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = Recipe.model_validate(recipe_dict(saved_model(root), root / "run", device, load_in_4bit=True))
        train(recipe)
        rows = [r for r in read_jsonl(root / "run" / "metrics.jsonl") if "loss/total" in r]
        assert len(rows) == 2 and all(abs(r["loss/total"]) < 1e6 for r in rows), rows
        state = torch.load(root / "run" / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
        moved = sum(float(v.abs().sum()) for k, v in state["trainable"].items() if "lora_B" in k)
        assert moved > 0, "the LoRA B factors did not move"
    return f"2 steps on a 4-bit NF4 base: loss {rows[-1]['loss/total']:.3g}, |lora_B| sum {moved:.3g}"


@check("masters")
def bf16_full_fine_tuning(device: torch.device, quick: bool) -> str:
    from rshape.recipe import Recipe
    from rshape.rl.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = recipe_dict(saved_model(root), root / "run", device)
        data.update(dtype="bfloat16", optim={"lr": 1e-6})
        data["model"]["lora"]["enabled"] = False
        train(Recipe.model_validate(data))
        state = torch.load(root / "run" / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
        masters, weights = state["masters"], list(state["trainable"].values())
        assert masters and all(m.dtype == torch.float32 for m in masters), "no float32 masters were saved"
        finer = sum(int((m != w.float()).sum()) for m, w in zip(masters, weights))
        total = sum(m.numel() for m in masters)
    return f"2 bf16 full-fine-tuning steps at lr 1e-6: {finer:,} of {total:,} master values hold steps bf16 rounds away"


@check("ranks")
def data_parallel(device: torch.device, quick: bool) -> str:
    import yaml

    from rshape.runs import read_jsonl

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    nproc = 2 if device.type == "cpu" else min(2, gpus)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = saved_model(root)
        finals = {}
        for name, n in (("one", 0), ("ranks", nproc)):
            data = recipe_dict(model, root / name, device)
            data["rollout"]["prompts_per_step"] = 4
            (root / f"{name}.yaml").write_text(yaml.safe_dump(data))
            launcher = [sys.executable] if n == 0 else [shutil.which("torchrun") or str(Path(sys.executable).with_name(
                "torchrun")), "--standalone", f"--nproc-per-node={n}"]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run([*launcher, "-m", "rshape.cli", "rl", str(root / f"{name}.yaml")], env=env,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-1500:]
            finals[name] = read_jsonl(root / name / "eval.jsonl")[-1]
        keys = [k for k in finals["one"] if isinstance(finals["one"][k], float)]
        worst = max(abs(finals["one"][k] - finals["ranks"][k]) for k in keys)
        assert worst < 1e-4, f"final evaluation differs by up to {worst:.2e}"
    backend = "gloo" if device.type == "cpu" else "nccl"
    note = "" if nproc == 2 else " (one GPU: NCCL untested, 2 ranks need 2 GPUs)"
    return f"{nproc} {backend} rank(s) under torchrun = 1 process: final eval equal to {worst:.1e}{note}"


@check("speed")
def speed(device: torch.device, quick: bool) -> str:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from rshape.rl.lean_forward import lean_forward
    from rshape.rl.rollout import generate
    from rshape.rl.sampling import sample_keys

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if quick:
        base = AutoModelForCausalLM.from_pretrained(REPO / "rshape" / "assets" / "tiny-addition", dtype=dtype).to(device)
        vocab = base.config.vocab_size
    else:  # ~100M parameters, random
        vocab = 32000
        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=768, intermediate_size=2048,
                                            num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                                            max_position_embeddings=512, pad_token_id=0, eos_token_id=1,
                                            bos_token_id=None)).to(device=device, dtype=dtype)
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    rows, new = 64, 64
    ids = torch.randint(2, vocab, (rows, 24), device=device)
    mask = torch.ones_like(ids)
    keys = sample_keys(0, 1, [str(i // 8) for i in range(rows)], [i % 8 for i in range(rows)]).to(device)

    def timed(fn, repeats=3):
        fn()
        best = float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best

    times = {}
    for d in ("hf", "fast", "compiled"):
        times[d] = timed(lambda d=d: generate(model, ids, mask, max_new_tokens=new, eos_token_id=-1, pad_token_id=0,
                                              keys=keys, decoder=d))
    model.train()
    batch = torch.cat([ids, torch.randint(2, vocab, (rows, new), device=device)], 1)
    full = torch.ones_like(batch)
    pos = torch.arange(batch.shape[1], device=device).expand_as(batch)

    def update(forward):
        def run():
            model.zero_grad(set_to_none=True)
            for part in range(0, rows, 16):
                logits = forward(input_ids=batch[part:part + 16], attention_mask=full[part:part + 16],
                                 position_ids=pos[part:part + 16], logits_to_keep=new + 1).logits
                logits.float().logsumexp(-1).mean().backward()
        return run

    times["update peft"] = timed(update(lambda **kw: model(**kw, use_cache=False)))
    times["update lean"] = timed(update(lean_forward(model)))
    per_token = ", ".join(f"{d} {1e3 * times[d] / new:.2f}" for d in ("hf", "fast", "compiled"))
    return (f"{str(dtype)[6:]}, {sum(p.numel() for p in base.parameters()) / 1e6:.0f}M params, {rows} rows: rollout ms "
            f"per token {per_token}; update s: peft {times['update peft']:.3f}, lean {times['update lean']:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated: {','.join(CHECKS)}")
    parser.add_argument("--quick", action="store_true", help="the speed check on the built-in tiny policy")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rshape.models import quiet_libraries

    quiet_libraries()
    device = torch.device(args.device)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check(s) {', '.join(unknown)}; valid: {', '.join(CHECKS)}")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, device {device} ({gpu})", flush=True)
    results = {}
    for name in names:
        t = time.perf_counter()
        try:
            detail, ok = CHECKS[name](device, args.quick), True
        except Exception as e:  # a failed check is reported and the others still run
            detail, ok = f"{type(e).__name__}: {e}".splitlines()[0][:400], False
            traceback.print_exc(limit=3, file=sys.stderr)
        results[name] = {"ok": ok, "detail": detail, "seconds": round(time.perf_counter() - t, 1)}
        print(f"{'PASS' if ok else 'FAIL'}  {name:7s} {results[name]['seconds']:6.1f}s  {detail}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "gpu": gpu, "torch": torch.__version__,
                                               "results": results}, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
