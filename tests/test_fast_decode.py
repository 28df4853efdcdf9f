"""The fast decoder computes what the model's own forward computes: logits, sampled and greedy tokens,
entropies, with LoRA adapters (on and off), left padding, grouped K/V heads, qkv biases and q/k norms,
and with finished rows dropped mid-generation. Unsupported models fall back or fail clearly."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from rshape.rl.fast_decode import FastDecoder, Unsupported, effective_weight, fast_decoder
from rshape.rl.rollout import generate, positions_from_mask, stepper
from rshape.rl.sampling import sample_keys

V = 40


def tiny(kind: str, seed: int = 0) -> torch.nn.Module:
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(seed)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=4)).eval()
    if kind == "llama_gqa":
        return LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True)).eval()
    if kind == "qwen2":  # q/k/v biases
        return Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2)).eval()
    if kind == "qwen3":  # q/k RMSNorm on the head dimension
        return Qwen3ForCausalLM(Qwen3Config(**common, num_key_value_heads=2, head_dim=8)).eval()
    raise ValueError(kind)


def with_lora(model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0; make the adapters matter
                p.normal_(0, 0.3)
    return peft_model.eval()


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded prompts of lengths 5, 2 and 4."""
    ids = torch.tensor([[5, 9, 12, 7, 3], [0, 0, 0, 8, 4], [0, 6, 6, 2, 11]])
    return ids, (ids != 0).long()


def reference_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits at every position from one full forward without a cache. → [R, L, V]"""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits


@pytest.mark.parametrize("kind", ["llama", "llama_gqa", "qwen2", "qwen3"])
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("fuse", [True, False])
def test_logits_match_the_model_forward_step_by_step(kind, lora, fuse):
    model = tiny(kind)
    if kind == "qwen2":
        with torch.no_grad():  # Qwen2 inits biases at 0; make them matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    model = with_lora(model) if lora else model
    ids, mask = prompts()
    dec = fast_decoder(model, fuse=fuse)
    assert isinstance(dec, FastDecoder) and dec.fused == fuse, dec
    appended = torch.tensor([[13, 14, 15, 16], [17, 18, 19, 20], [21, 22, 23, 24]])
    with torch.no_grad():
        got = [dec.prefill(ids, mask, positions_from_mask(mask), max_new_tokens=appended.shape[1])]
        pos = positions_from_mask(mask)[:, -1] + 1
        for t in range(appended.shape[1] - 1):
            got.append(dec.step(appended[:, t], pos + t))
    full_ids = torch.cat([ids, appended], 1)
    want = reference_logits(model, full_ids, torch.cat([mask, torch.ones_like(appended)], 1))
    P = ids.shape[1]
    for t, logits in enumerate(got):
        torch.testing.assert_close(logits, want[:, P - 1 + t], atol=2e-5, rtol=1e-4)


def test_adapters_disabled_gives_the_base_weights():
    base = tiny("llama")
    ids, mask = prompts()
    want = reference_logits(base, ids, mask)[:, -1]
    model = with_lora(base)
    with torch.no_grad(), model.disable_adapter():
        got = fast_decoder(model).prefill(ids, mask, positions_from_mask(mask), max_new_tokens=1)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    with torch.no_grad():
        adapted = fast_decoder(model).prefill(ids, mask, positions_from_mask(mask), max_new_tokens=1)
    assert (adapted - want).abs().max() > 1e-2  # the adapters do change the logits


def test_effective_weight_is_base_plus_scaled_lora_product():
    model = with_lora(tiny("llama"))
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    weight, bias = effective_weight(q)
    scale = 8 / 4  # lora_alpha / r
    want = q.base_layer.weight + scale * q.lora_B["default"].weight @ q.lora_A["default"].weight
    torch.testing.assert_close(weight, want)
    assert bias is None


def common_eos(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor) -> int:
    """A token the model samples often, used as EOS so rows stop at different steps."""
    toks, _ = generate(model, ids, mask, max_new_tokens=12, eos_token_id=-1, pad_token_id=0, keys=keys, decoder="hf")
    counts = torch.bincount(toks[:, 1:].flatten(), minlength=V)
    return int(counts.argmax())


@pytest.mark.parametrize("sampled", [True, False])
def test_fast_and_hf_decoders_give_the_same_tokens(sampled, monkeypatch):
    from rshape.rl.rollout import _ModelStepper

    kept: dict[str, list[int]] = {"fast": [], "hf": []}
    for cls, name in ((FastDecoder, "fast"), (_ModelStepper, "hf")):
        original = cls.keep_rows
        monkeypatch.setattr(cls, "keep_rows", lambda self, rows, o=original, n=name: (kept[n].append(len(rows)), o(self, rows)))
    model = with_lora(tiny("llama_gqa"))
    ids, mask = prompts()
    ids, mask = ids.repeat(4, 1), mask.repeat(4, 1)  # 12 rows
    keys = sample_keys(0, 3, [f"p{i % 3}" for i in range(12)], [i // 3 for i in range(12)]) if sampled else None
    eos = common_eos(model, ids, mask, keys if keys is not None else sample_keys(0, 0, ["x"] * 12, list(range(12))))
    out = {}
    for decoder in ("hf", "fast"):
        toks, ent = generate(model, ids, mask, max_new_tokens=16, eos_token_id=eos, pad_token_id=0, keys=keys,
                             decoder=decoder, with_entropies=True)
        out[decoder] = (toks, ent)
    assert torch.equal(out["hf"][0], out["fast"][0])
    torch.testing.assert_close(out["hf"][1], out["fast"][1], atol=1e-5, rtol=1e-4)
    if sampled:  # rows really stopped at different steps, and the fast decoder dropped them on the way
        stops = {int((row == eos).int().argmax()) for row in out["fast"][0] if (row == eos).any()}
        assert len(stops) >= 3
        assert kept["fast"][0] == 12  # the prefill copies the cache rows of identical prompts (3 prompts, 12 rows)
        dropped = kept["fast"][1:]
        assert dropped and dropped == sorted(dropped, reverse=True) and dropped[-1] < 12
        assert kept["hf"] == dropped  # both decoders drop the same finished rows


def test_finished_rows_are_padded_and_entropy_zero():
    model = tiny("llama")
    ids, mask = prompts()
    keys = sample_keys(0, 0, ["a", "b", "c"], [0, 0, 0])
    eos = common_eos(model, ids, mask, keys)
    toks, ent = generate(model, ids, mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=0, keys=keys, decoder="fast",
                         with_entropies=True)
    for row, e in zip(toks, ent):
        if (row == eos).any():
            stop = int((row == eos).int().argmax())
            assert (row[stop + 1:] == 0).all() and (e[stop + 1:] == 0).all() and (e[: stop + 1] > 0).all()


def test_unsupported_models_fall_back_or_fail_clearly():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=64)).eval()
    reason = fast_decoder(gpt2)
    assert isinstance(reason, str) and "gpt2" in reason
    assert not isinstance(stepper(gpt2, "auto"), FastDecoder)
    with pytest.raises(ValueError, match="rollout.decoder: fast cannot run this model"):
        stepper(gpt2, "fast")
    with pytest.raises(ValueError, match="rollout.decoder: compiled cannot run this model"):
        stepper(gpt2, "compiled")
    with pytest.raises(ValueError, match="unknown decoder"):
        stepper(gpt2, "turbo")
    ids, mask = prompts()
    toks, _ = generate(gpt2, ids, mask, max_new_tokens=3, eos_token_id=1, pad_token_id=0)  # auto → the model's forward
    assert toks.shape == (3, 3)
    sliding = tiny("llama")
    sliding.config.layer_types = ["sliding_attention", "full_attention"]
    assert "sliding" in fast_decoder(sliding)
    with pytest.raises(Unsupported, match="not a plain nn.Linear"):
        effective_weight(torch.nn.Conv1d(2, 2, 1))


def test_cli_fast_decoder_on_an_unsupported_model_is_one_line(tmp_path):
    import subprocess
    import sys

    from transformers import GPT2Config, GPT2LMHeadModel

    from rshape.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=4, n_positions=64,
                               eos_token_id=1, pad_token_id=0, bos_token_id=None)).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: {tmp_path / 'gpt2'}}}\nrollout: {{decoder: fast, max_new_tokens: 8}}\n"
                      f"output_dir: {tmp_path / 'run'}\nthreads: 1\n")
    out = subprocess.run([sys.executable, "-m", "rshape.cli", "rl", str(recipe)], capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: rollout.decoder: fast cannot run this model: model type 'gpt2' "
                      "(supported: llama, mistral, qwen2, qwen3); use auto or hf"]
    assert not any((tmp_path / "run").glob("*"))  # nothing was written


def test_fusing_follows_the_memory_budget(monkeypatch):
    import rshape.rl.fast_decode as fd

    model = with_lora(tiny("llama"))
    assert fast_decoder(model).fused  # a tiny model: merge LoRA and fuse the projections
    monkeypatch.setattr(fd, "FUSE_BUDGET_BYTES", 0)
    assert not fast_decoder(model).fused  # too big to copy: the model's weights and LoRA factors as they are


@pytest.mark.parametrize("fuse", [True, False])
def test_bfloat16_model_with_float32_adapters(fuse):
    """peft keeps adapters in float32 on a bfloat16 base; both decoder modes follow the model's forward."""
    model = with_lora(tiny("llama").to(torch.bfloat16))
    lora_a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    assert lora_a.dtype == torch.float32 and model.base_model.model.model.embed_tokens.weight.dtype == torch.bfloat16
    ids, mask = prompts()
    want = reference_logits(model, ids, mask)[:, -1].float()
    with torch.no_grad():
        got = fast_decoder(model, fuse=fuse).prefill(ids, mask, positions_from_mask(mask), max_new_tokens=1).float()
    assert (got - want).abs().max() < 0.03 * want.abs().max()  # bfloat16 rounding (adapters off: 1.3x the max)


def test_cache_grows_past_its_first_allocation(monkeypatch):
    import rshape.rl.fast_decode as fd

    monkeypatch.setattr(fd, "CACHE_GROWTH", 5)  # prompts of 5 tokens + 5 slots, then +5 at a time
    model = with_lora(tiny("llama_gqa"))
    ids, mask = prompts()
    keys = sample_keys(0, 1, ["a", "b", "c"], [0, 0, 0])
    out = {d: generate(model, ids, mask, max_new_tokens=23, eos_token_id=-1, pad_token_id=0, keys=keys, decoder=d)[0]
           for d in ("hf", "fast")}
    assert out["fast"].shape == (3, 23) and torch.equal(out["hf"], out["fast"])


def static_decoder(monkeypatch) -> None:
    """`decoder: compiled` with its static step run uncompiled (the same arithmetic; no compile in the test), and
    uninitialised memory made NaN, so that a masked cache slot left unwritten would show (NaN·0 is NaN)."""
    import rshape.rl.fast_decode as fd

    monkeypatch.setattr(fd, "compiled_token_step", lambda: fd.static_token_step)
    new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: new_empty(self, *a, **k).fill_(float("nan")))


@pytest.mark.parametrize("kind", ["llama_gqa", "qwen3"])
def test_static_step_logits_match_the_model_forward(kind, monkeypatch):
    import rshape.rl.fast_decode as fd

    static_decoder(monkeypatch)
    model = with_lora(tiny(kind))
    ids, mask = prompts()
    dec = FastDecoder(model, static=True)
    appended = torch.tensor([[13, 14, 15, 16], [17, 18, 19, 20], [21, 22, 23, 24]])
    with torch.no_grad():
        got = [dec.prefill(ids, mask, positions_from_mask(mask), max_new_tokens=appended.shape[1])]
        assert dec.cache[0][0].shape[2] == fd.STATIC_BUCKET  # 5 + 4 slots rounded up to the bucket
        pos = positions_from_mask(mask)[:, -1] + 1
        for t in range(appended.shape[1] - 1):
            got.append(dec.step(appended[:, t], pos + t))
    want = reference_logits(model, torch.cat([ids, appended], 1), torch.cat([mask, torch.ones_like(appended)], 1))
    for t, logits in enumerate(got):
        torch.testing.assert_close(logits, want[:, ids.shape[1] - 1 + t], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("sampled", [True, False])
def test_static_decoder_gives_the_fast_decoders_tokens_without_dropping_rows(sampled, monkeypatch):
    static_decoder(monkeypatch)
    kept: list[int] = []
    original = FastDecoder.keep_rows
    monkeypatch.setattr(FastDecoder, "keep_rows", lambda self, rows: (kept.append(len(rows)), original(self, rows)))
    model = with_lora(tiny("llama_gqa"))
    ids, mask = prompts()
    ids, mask = ids.repeat(4, 1), mask.repeat(4, 1)
    keys = sample_keys(0, 3, [f"p{i % 3}" for i in range(12)], [i // 3 for i in range(12)]) if sampled else None
    eos = common_eos(model, ids, mask, keys if keys is not None else sample_keys(0, 0, ["x"] * 12, list(range(12))))
    out = {d: generate(model, ids, mask, max_new_tokens=16, eos_token_id=eos, pad_token_id=0, keys=keys, decoder=d,
                       with_entropies=True) for d in ("fast", "compiled")}
    assert torch.equal(out["fast"][0], out["compiled"][0])
    torch.testing.assert_close(out["fast"][1], out["compiled"][1], atol=1e-5, rtol=1e-4)
    if sampled:
        assert len({int((row == eos).int().argmax()) for row in out["fast"][0] if (row == eos).any()}) >= 3
        fast_calls = kept.index(12, 1)  # the fast decoder's calls, then the static decoder's prefill copy only
        assert kept[fast_calls:] == [12]


def test_compiled_decoder_gives_the_same_tokens():
    """The real torch.compile of the static step (one compile, ~10–30 s on a CPU): the same tokens as `fast`."""
    model = with_lora(tiny("llama_gqa"))
    ids, mask = prompts()
    ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
    keys = sample_keys(0, 5, [f"p{i % 3}" for i in range(6)], [i // 3 for i in range(6)])
    eos = common_eos(model, ids, mask, keys)
    out = {d: generate(model, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0, keys=keys, decoder=d)[0]
           for d in ("fast", "compiled")}
    assert torch.equal(out["fast"], out["compiled"])
