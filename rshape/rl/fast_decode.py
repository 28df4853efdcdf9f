"""A lean KV-cached decoder for Llama-family models: LoRA merged, projections fused, a static cache.

For small and mid-sized policies the cost of sampling is not arithmetic but the number of tensor
operations per generated token: a Hugging Face layer under peft runs every LoRA linear as four or
five separate ops and grows its cache with `torch.cat`. This decoder runs the same network from plain
tensors taken from the model at the start of each rollout:

    W_eff = W + Σ_adapters scale·B·A        (the weight peft would merge; the model is not touched)
    qkv = x·[W_q; W_k; W_v]ᵀ                (one matmul instead of three, likewise gate/up)
    K, V written in place into [R, H_kv, P + T_max, d] buffers; attention by SDPA over the filled prefix

and computes, op for op, what the model's own forward computes (RMSNorm in float32, rotary tables from
the model's own rotary module, the same scaling), so its logits match the model's to float rounding
(tests/test_fast_decode.py checks logits and sampled tokens against the model's forward).

Supported: `llama`, `mistral`, `qwen2`, `qwen3` (q/k norms) without sliding-window layers and with a
static RoPE, plain `nn.Linear` weights with or without peft LoRA adapters (no DoRA). Anything else — a
4-bit base (merging would dequantise the whole model), other architectures — returns a reason and
`rollout.generate` falls back to the model's own forward. Device and dtype follow the model's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class Unsupported(Exception):
    """The model cannot run on the fast decoder; the message says why."""


def _active_adapters(module: torch.nn.Module) -> list[str]:
    """The LoRA adapters a peft layer applies now (none when disabled or already merged); raises for a
    projection the fast decoder cannot merge (4-bit base, DoRA, anything but nn.Linear)."""
    base = getattr(module, "base_layer", None)
    if base is None:
        if type(module) is not torch.nn.Linear:
            raise Unsupported(f"{type(module).__name__} is not a plain nn.Linear")
        return []
    if type(base) is not torch.nn.Linear:
        raise Unsupported(f"LoRA over {type(base).__name__} (e.g. a 4-bit base) cannot be merged without dequantising")
    if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return []
    names = [name for name in module.active_adapters if name in module.lora_A]
    if any(module.use_dora.get(name, False) for name in names):
        raise Unsupported("DoRA adapters are not supported")
    return names


def effective_weight(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) that `module(x)` applies in eval mode: an nn.Linear's own, or a peft LoRA layer's
    base weight plus the delta of each active adapter (scale·B·A, peft's `get_delta_weight`)."""
    names = _active_adapters(module)
    linear = getattr(module, "base_layer", module)
    weight = linear.weight.detach()
    for name in names:
        weight = weight + module.get_delta_weight(name).detach().to(weight.dtype)
    return weight, (linear.bias.detach() if linear.bias is not None else None)


def _cat_bias(biases: list[torch.Tensor | None], weights: list[torch.Tensor]) -> torch.Tensor | None:
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for b, w in zip(biases, weights)])


@dataclass
class FastLayer:
    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [(H + 2·H_kv)·d, hidden]
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None  # [d] (qwen3)
    k_norm: torch.Tensor | None
    o: torch.Tensor  # [hidden, H·d]
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2·I, hidden]
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor  # [hidden, I]
    down_bias: torch.Tensor | None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: w · (x / sqrt(mean(x²) + ε)) with the statistics in float32."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin (HF's apply_rotary_pos_emb). x [R, T, heads, d], cos/sin [R, T, 1, d]."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def check_supported(model: torch.nn.Module) -> torch.nn.Module:
    """The model under any peft wrapper, after checking that the fast decoder can run it (raises Unsupported)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        raise Unsupported(f"model type {cfg.model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise Unsupported(f"activation {cfg.hidden_act!r}")
    layer_types = getattr(cfg, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types) or (
            getattr(cfg, "sliding_window", None) and not layer_types and cfg.model_type == "mistral"):
        raise Unsupported("sliding-window attention layers")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") not in STATIC_ROPE_TYPES:
        raise Unsupported(f"rope type {rope.get('rope_type')!r} depends on the sequence length")
    decoder = base.model
    effective_weight_embedding(decoder.embed_tokens)
    _active_adapters(base.lm_head)
    for layer in decoder.layers:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            _active_adapters(getattr(layer.self_attn, name))
        for name in ("gate_proj", "up_proj", "down_proj"):
            _active_adapters(getattr(layer.mlp, name))
    return base


class FastDecoder:
    """Prefill + one-token steps over a static KV cache for `rows` sequences of up to `max_len` tokens."""

    def __init__(self, model: torch.nn.Module) -> None:
        base = check_supported(model)
        cfg = base.config
        decoder = base.model
        self.rotary = decoder.rotary_emb
        self.embed = effective_weight_embedding(decoder.embed_tokens)
        self.norm = decoder.norm.weight.detach()
        self.eps = float(decoder.norm.variance_epsilon)
        self.lm_head, self.lm_head_bias = effective_weight(base.lm_head)
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = decoder.layers[0].self_attn.scaling
        self.layers = [self._layer(layer) for layer in decoder.layers]
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.key_valid = torch.empty(0)
        self.length = 0

    @staticmethod
    def _layer(layer: torch.nn.Module) -> FastLayer:
        attn, mlp = layer.self_attn, layer.mlp
        q, qb = effective_weight(attn.q_proj)
        k, kb = effective_weight(attn.k_proj)
        v, vb = effective_weight(attn.v_proj)
        o, ob = effective_weight(attn.o_proj)
        g, gb = effective_weight(mlp.gate_proj)
        u, ub = effective_weight(mlp.up_proj)
        d, db = effective_weight(mlp.down_proj)
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        return FastLayer(
            input_norm=layer.input_layernorm.weight.detach(),
            qkv=torch.cat([q, k, v]), qkv_bias=_cat_bias([qb, kb, vb], [q, k, v]),
            q_norm=q_norm.weight.detach() if q_norm is not None else None,
            k_norm=k_norm.weight.detach() if k_norm is not None else None,
            o=o, o_bias=ob, post_norm=layer.post_attention_layernorm.weight.detach(),
            gate_up=torch.cat([g, u]), gate_up_bias=_cat_bias([gb, ub], [g, u]), down=d, down_bias=db)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor, start: int) -> torch.Tensor:
        """Hidden states of the last position after writing K/V of ids [R, T] at cache slots start..start+T-1."""
        R, T = ids.shape
        H, Hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        x = F.embedding(ids, self.embed)  # [R, T, hidden]
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]  # [R, T, 1, d]
        end = start + T
        for layer, (k_cache, v_cache) in zip(self.layers, self.cache):
            h = _rms_norm(x, layer.input_norm, self.eps)
            qkv = F.linear(h, layer.qkv, layer.qkv_bias).view(R, T, H + 2 * Hkv, d)
            qk, v = qkv[:, :, : H + Hkv], qkv[:, :, H + Hkv:]
            if layer.q_norm is not None:
                qk = torch.cat([_rms_norm(qk[:, :, :H], layer.q_norm, self.eps),
                                _rms_norm(qk[:, :, H:], layer.k_norm, self.eps)], dim=2)
            qk = _rotate(qk, cos, sin).transpose(1, 2)  # [R, H + H_kv, T, d]: queries and keys rotated at once
            k_cache[:, :, start:end] = qk[:, H:]
            v_cache[:, :, start:end] = v.transpose(1, 2)
            attn = F.scaled_dot_product_attention(qk[:, :H], k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=attn_mask,
                                                  scale=self.scaling, enable_gqa=H != Hkv)
            x = x + F.linear(attn.transpose(1, 2).reshape(R, T, H * d), layer.o, layer.o_bias)
            h = _rms_norm(x, layer.post_norm, self.eps)
            gate, up = F.linear(h, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down, layer.down_bias)
        return _rms_norm(x[:, -1], self.norm, self.eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.lm_head, self.lm_head_bias)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                max_new_tokens: int) -> torch.Tensor:
        """Allocate the cache, run the left-padded prompts [R, P]; → next-token logits [R, V].

        Identical prompts (the G samples of a group) are run once and their cache rows copied."""
        R, P = input_ids.shape
        total = P + max_new_tokens
        dtype, device = self.embed.dtype, self.embed.device
        unique, row_of = torch.unique(torch.cat([input_ids, attention_mask.long()], 1), dim=0, return_inverse=True)
        ids, mask, pos = unique[:, :P], unique[:, P:].bool(), positions[_first_row(row_of, len(unique))]
        self.cache = [(torch.zeros(len(unique), self.num_kv_heads, total, self.head_dim, dtype=dtype, device=device),
                       torch.zeros(len(unique), self.num_kv_heads, total, self.head_dim, dtype=dtype, device=device))
                      for _ in self.layers]
        table = torch.arange(total, device=device)[None]
        cos, sin = self.rotary(self.embed[:1], table)  # [1, total, d], the model's own RoPE (incl. scaling)
        self.cos, self.sin = cos[0], sin[0]
        self.key_valid = torch.ones(len(unique), total, dtype=torch.bool, device=device)
        self.key_valid[:, :P] = mask
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=device)  # a padding query attends to itself (never read)
        self.length = P
        hidden = self._forward(ids, pos, ((causal & mask[:, None, :]) | eye)[:, None], 0)  # [u, hidden]
        self.keep_rows(row_of)  # one cache row per input row
        return self.logits(hidden)[row_of]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indices into the current batch) in the cache, e.g. drop finished ones."""
        self.cache = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cache]
        self.key_valid = self.key_valid.index_select(0, rows)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append one token per row (tokens [R], positions [R]); → next-token logits [R, V]."""
        start = self.length
        self.length += 1
        mask = self.key_valid[:, None, None, : self.length]  # [R, 1, 1, L]
        return self.logits(self._forward(tokens[:, None], positions[:, None], mask, start))


def effective_weight_embedding(module: torch.nn.Module) -> torch.Tensor:
    """The embedding table `module(ids)` looks up: nn.Embedding's own (LoRA on embeddings is not supported)."""
    if type(module) is not torch.nn.Embedding:
        raise Unsupported(f"embedding {type(module).__name__}")
    if module.max_norm is not None:
        raise Unsupported("embedding with max_norm")
    return module.weight.detach()


def _first_row(row_of: torch.Tensor, count: int) -> torch.Tensor:
    """For each of `count` groups, the index of its first member; row_of [R] maps rows to groups."""
    first = torch.full((count,), len(row_of), dtype=torch.long, device=row_of.device)
    return first.scatter_reduce(0, row_of, torch.arange(len(row_of), device=row_of.device), reduce="amin")


def fast_decoder_problem(model: torch.nn.Module) -> str | None:
    """Why the fast decoder cannot run this model, or None; checks only, builds nothing."""
    try:
        check_supported(model)
    except Unsupported as e:
        return str(e)
    return None


def fast_decoder(model: torch.nn.Module) -> FastDecoder | str:
    """A FastDecoder over the model's current weights, or the reason it cannot run this model."""
    try:
        return FastDecoder(model)
    except Unsupported as e:
        return str(e)
