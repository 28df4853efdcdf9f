"""The training forward of a LoRA policy without peft's per-module wrappers (Llama, Mistral, Qwen2, Qwen3: the
architectures rshape's fast decoder runs).

peft wraps every linear layer in a module that runs the base layer, then dropout, A, B and a scale as separate
modules; on a CPU with small matrices those ~10 calls per projection cost as much as the matmuls. Here each
layer's frozen q/k/v (and gate/up) base weights are concatenated once into one matrix, and their LoRA factors
applied as two matmuls: x·[A_q; A_k; A_v]ᵀ, then a block-diagonal [s_q·B_q, s_k·B_k, s_v·B_v] built from the live
factors, so gradients reach peft's own `lora_A` / `lora_B` parameters (peft still builds, saves and loads the
adapters). The arithmetic is the model's forward (tests/test_lean_forward.py: logits and gradients equal peft's).
Anything else (full fine-tuning, 4-bit bases, LoRA or attention dropout, DoRA, gradient checkpointing, other
architectures) keeps the model's own forward. (Full fine-tuning through this forward was measured: no gain, as its
update is spent in the weight-gradient matmuls.)
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

from rshape.rl.fast_decode import FUSE_BUDGET_BYTES, Unsupported, check_supported, layer_projections, rms_norm, rotate


class LoraProjection:
    """y = x·Wᵀ + b + (x·Aᵀ)·blockdiag(s_i·B_i)ᵀ over the concatenated outputs of several LoRA linear layers."""

    def __init__(self, modules: list[torch.nn.Module], fuse: bool) -> None:
        self.parts = []
        for m in modules:
            base = getattr(m, "base_layer", None)
            if base is None or type(base) is not torch.nn.Linear or getattr(m, "merged", False):
                raise Unsupported("a projection without an unmerged LoRA adapter over nn.Linear")
            names = [n for n in m.active_adapters if n in m.lora_A]
            if len(names) != 1 or m.use_dora.get(names[0], False):
                raise Unsupported("one plain LoRA adapter per projection is needed")
            if not isinstance(m.lora_dropout[names[0]], torch.nn.Identity):
                raise Unsupported("LoRA dropout")
            self.parts.append((base, m.lora_A[names[0]].weight, m.lora_B[names[0]].weight, float(m.scaling[names[0]])))
        weights = [base.weight.detach() for base, *_ in self.parts]
        biases = [base.bias.detach() if base.bias is not None else None for base, *_ in self.parts]
        self.fused = fuse
        self.weight = torch.cat(weights) if fuse and len(weights) > 1 else (weights[0] if fuse else None)
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else w.new_zeros(w.shape[0]) for b, w in zip(biases, weights)])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            y = F.linear(x, self.weight, self.bias)
        else:  # large models: the base weights as they are, no concatenated copy
            y = torch.cat([F.linear(x, base.weight, base.bias) for base, *_ in self.parts], dim=-1)
        a = torch.cat([lora_a for _, lora_a, _, _ in self.parts]) if len(self.parts) > 1 else self.parts[0][1]
        xa = F.linear(x.to(a.dtype), a)  # [..., Σr]
        b = torch.block_diag(*[lora_b * scale for _, _, lora_b, scale in self.parts])  # [Σout, Σr]
        return y + F.linear(xa, b).to(y.dtype)


class LeanForward:
    """`model(input_ids, attention_mask, position_ids, logits_to_keep).logits` for a supported LoRA policy."""

    def __init__(self, model: torch.nn.Module) -> None:
        base = check_supported(model)
        decoder = base.model
        if getattr(base, "is_gradient_checkpointing", False) or any(
                getattr(m, "gradient_checkpointing", False) for m in (base, decoder)):
            raise Unsupported("gradient checkpointing")
        if not all(hasattr(m, "lora_A") for layer in decoder.layers for m in layer_projections(layer)):
            raise Unsupported("LoRA on every projection is needed (target_modules: all-linear)")
        cfg = base.config
        if getattr(cfg, "attention_dropout", 0.0):
            raise Unsupported("attention dropout")
        weight_bytes = sum(m.base_layer.weight.numel() * m.base_layer.weight.element_size()
                           for layer in decoder.layers for m in layer_projections(layer))
        fuse = weight_bytes <= FUSE_BUDGET_BYTES
        self.base, self.decoder = base, decoder
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = decoder.layers[0].self_attn.scaling
        self.eps = float(decoder.norm.variance_epsilon)
        self.layers = []
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((layer.input_layernorm.weight, LoraProjection([attn.q_proj, attn.k_proj, attn.v_proj], fuse),
                                getattr(attn, "q_norm", None), getattr(attn, "k_norm", None),
                                LoraProjection([attn.o_proj], fuse), layer.post_attention_layernorm.weight,
                                LoraProjection([mlp.gate_proj, mlp.up_proj], fuse), LoraProjection([mlp.down_proj], fuse)))

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 logits_to_keep: int, **_: Any) -> Any:
        R, L = input_ids.shape
        H, Hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        x = self.decoder.embed_tokens(input_ids)  # [R, L, hidden]
        cos, sin = self.decoder.rotary_emb(x, position_ids)  # [R, L, d]
        cos, sin = cos[:, :, None], sin[:, :, None]
        keys = attention_mask.bool()
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(L, dtype=torch.bool, device=x.device)  # a padding query attends to itself (never read)
        mask = ((causal & keys[:, None, :]) | eye)[:, None]  # [R, 1, L, L]
        for input_norm, qkv_proj, q_norm, k_norm, o_proj, post_norm, gate_up, down in self.layers:
            h = rms_norm(x, input_norm, self.eps)
            qkv = qkv_proj(h).view(R, L, H + 2 * Hkv, d)
            q, k, v = qkv[:, :, :H], qkv[:, :, H: H + Hkv], qkv[:, :, H + Hkv:]
            if q_norm is not None:
                q, k = q_norm(q), k_norm(k)
            q, k = rotate(q, cos, sin).transpose(1, 2), rotate(k, cos, sin).transpose(1, 2)  # [R, heads, L, d]
            attn = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), attn_mask=mask, scale=self.scaling,
                                                  enable_gqa=H != Hkv)
            x = x + o_proj(attn.transpose(1, 2).reshape(R, L, H * d))
            h = rms_norm(x, post_norm, self.eps)
            gate, up = gate_up(h).chunk(2, dim=-1)
            x = x + down(F.silu(gate) * up)
        x = rms_norm(x[:, -logits_to_keep:], self.decoder.norm.weight, self.eps)
        return _Output(self.base.lm_head(x))


class _Output:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


_BUILT: weakref.WeakKeyDictionary[torch.nn.Module, LeanForward | None] = weakref.WeakKeyDictionary()


def lean_forward(model: torch.nn.Module) -> LeanForward | None:
    """A LeanForward for this model, or None when the model's own forward must run (see the module docstring).
    Built once per model: the base weights it concatenates are frozen, and the LoRA factors it reads are live."""
    if model not in _BUILT:
        try:
            _BUILT[model] = LeanForward(model)
        except Unsupported:
            _BUILT[model] = None
    return _BUILT[model]
