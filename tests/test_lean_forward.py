"""rshape's lean training forward (rshape.rl.lean_forward) against peft's: the same logits and the same gradients
on every LoRA parameter, for Llama, Qwen2 (q/k/v biases, grouped-query heads) and Qwen3 (q/k norms)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rshape.rl.lean_forward import lean_forward


def tiny(kind: str, lora_dropout: float | None = 0.0) -> torch.nn.Module:
    """A random 2-layer model of `kind` with LoRA r 4 on every linear layer (`lora_dropout=None`: no LoRA)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=4, **common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **common))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=8, **common))
    if lora_dropout is None:
        return model
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=lora_dropout, target_modules="all-linear"))
    with torch.no_grad():  # B starts at 0 in peft: give both factors values so that every gradient is non-zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model.float()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three rows: left-padded prompts, right-padded completions, as the update sees them."""
    from rshape.rl.rollout import positions_from_mask

    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9, 1, 0], [0, 5, 9, 6, 3, 3, 4, 2, 1], [5, 6, 7, 8, 4, 1, 0, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0, 0]])
    return ids, mask, positions_from_mask(mask)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_logits_and_lora_gradients_equal_peft(kind):
    model = tiny(kind)
    ids, mask, pos = padded_batch()
    keep = 6
    weights = torch.randn(3, keep, 61)  # a loss that touches every kept logit
    lora = [p for n, p in model.named_parameters() if "lora_" in n]

    def grads(forward):
        model.zero_grad(set_to_none=True)
        logits = forward(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
        valid = mask[:, -keep:].bool()[..., None]  # padding positions are never read by the loss
        (logits * weights * valid).sum().backward()
        return logits.detach() * valid, [p.grad.clone() for p in lora]

    want_logits, want = grads(lambda **kw: model(**kw, use_cache=False))
    lean = lean_forward(model)
    assert lean is not None
    got_logits, got = grads(lean)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=2e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=5e-6)  # float32 summation order


def test_unsupported_models_keep_their_own_forward():
    assert lean_forward(tiny("llama", lora_dropout=None)) is None  # no LoRA: full fine-tuning
    assert lean_forward(tiny("llama", lora_dropout=0.1)) is None
    dropping = tiny("llama")
    dropping.base_model.model.config.attention_dropout = 0.1  # the model's forward drops attention weights in training
    assert lean_forward(dropping) is None
    model = tiny("llama")
    model.gradient_checkpointing_enable()
    assert lean_forward(model) is None
