"""A lean KV-cached decoder for Llama-family models: LoRA merged, projections fused, a static cache.

For small and mid-sized policies the cost of sampling is not arithmetic but the number of tensor
operations per generated token: a Hugging Face layer under peft runs every LoRA linear as four or
five separate ops and grows its cache with `torch.cat`. This decoder runs the same network from plain
tensors taken from the model at the start of each rollout:

    W_eff = W + Σ_adapters scale·B·A        (the weight peft would merge; the model is not touched)
    qkv = x·[W_q; W_k; W_v]ᵀ                (one matmul instead of three, likewise gate/up)
    K, V written in place into preallocated [R, H_kv, L, d] buffers (L grows 256 slots at a time up to
    P + T_max); attention by SDPA over the filled prefix

Merging and fusing copies the projection weights, so it is done while the copy stays under
FUSE_BUDGET_BYTES (1 GiB); a larger model, where matmuls dominate anyway, runs each projection from its
own weight with the LoRA factors applied to the activations, as peft does, and copies nothing.

and computes, op for op, what the model's own forward computes (RMSNorm in float32, rotary tables from
the model's own rotary module, the same scaling), so its logits match the model's to float rounding
(tests/test_fast_decode.py checks logits and sampled tokens against the model's forward).

`rollout.decoder: compiled` runs the same network with a static-shape one-token step compiled by
`torch.compile`: the cache is allocated once per rollout at a bucketed capacity (a multiple of STATIC_BUCKET
slots), each token's K/V is written at a slot given as a tensor, attention runs over every slot with the unwritten
ones masked, and finished rows stay in the batch (their tokens are replaced by padding). Nothing in the step
depends on the host, which is the structure CUDA graphs capture (compiled in inductor's default mode; capturing
it is the next step and needs a GPU to test). The compile costs 10–30 s per process (inductor's cache keeps it
across runs), once per distinct (rows, capacity). On a 2-core CPU it is slower than `fast`: 4.5 against 3.5 ms per
generated position in the benchmark's RL loop (rows finish early and `fast` drops them), 5.7 against 4.8 ms with
every row running to the limit (benchmarks/device_check.py); a GPU, where per-op launch cost dominates, is what it
is for, and it is untested there.

Supported: `llama`, `mistral`, `qwen2`, `qwen3` (q/k norms) without sliding-window layers and with a
static RoPE, plain `nn.Linear` weights with or without peft LoRA adapters (no DoRA). Anything else — a
4-bit base (merging would dequantise the whole model), other architectures — returns a reason and
`rollout.generate` falls back to the model's own forward. Device and dtype follow the model's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


CACHE_GROWTH = 256  # KV-cache slots added at a time: memory follows the longest live row, not the limit
STATIC_BUCKET = 64  # the static step's cache capacity is P + max_new_tokens rounded up to this (fewer recompiles)
FUSE_BUDGET_BYTES = 1 << 30  # merge LoRA and fuse projections (a copy of the weights) up to this many bytes


class Unsupported(Exception):
    """The model cannot run on the fast decoder; the message says why."""


def layer_projections(layer: torch.nn.Module) -> list[torch.nn.Module]:
    """A decoder layer's linear maps: q, k, v, o, gate, up, down (each nn.Linear or a peft LoRA layer over one)."""
    attn, mlp = layer.self_attn, layer.mlp
    return [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]


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


@dataclass
class Projection:
    """y = x·Wᵀ + b + Σ_adapters s·(x·Aᵀ)·Bᵀ, the outputs of several such maps concatenated.

    Fused (small models, where the count of ops per token is the cost): one merged weight, W_eff = [W₁ + s·B₁A₁;
    W₂ + …], and no LoRA terms — one matmul. Low-rank (large models, where a merged copy of the weights would
    cost memory): each part's own W (no copy) and its LoRA factors applied to the activations."""

    parts: list[tuple[torch.Tensor, torch.Tensor | None, list[tuple[torch.Tensor, torch.Tensor, float]]]]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for weight, bias, loras in self.parts:
            y = F.linear(x, weight, bias)
            for lora_a, lora_b, scale in loras:  # as peft: in the adapters' dtype, cast back
                y = y + (F.linear(F.linear(x.to(lora_a.dtype), lora_a), lora_b) * scale).to(y.dtype)
            outs.append(y)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    @classmethod
    def of(cls, modules: list[torch.nn.Module], fuse: bool) -> Projection:
        if fuse:
            merged = [effective_weight(m) for m in modules]
            weights = [w for w, _ in merged]
            biases = [b for _, b in merged]
            bias = None if all(b is None for b in biases) else torch.cat(
                [b if b is not None else w.new_zeros(w.shape[0]) for b, w in zip(biases, weights)])
            return cls([(weights[0] if len(weights) == 1 else torch.cat(weights), bias, [])])
        parts = []
        for m in modules:
            linear = getattr(m, "base_layer", m)
            loras = [(m.lora_A[n].weight.detach(), m.lora_B[n].weight.detach(), float(m.scaling[n]))
                     for n in _active_adapters(m)]
            parts.append((linear.weight.detach(), linear.bias.detach() if linear.bias is not None else None, loras))
        return cls(parts)


@dataclass
class FastLayer:
    input_norm: torch.Tensor  # [hidden]
    qkv: Projection  # hidden → (H + 2·H_kv)·d
    q_norm: torch.Tensor | None  # [d] (qwen3)
    k_norm: torch.Tensor | None
    o: Projection  # H·d → hidden
    post_norm: torch.Tensor  # [hidden]
    gate_up: Projection  # hidden → 2·I
    down: Projection  # I → hidden


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: w · (x / sqrt(mean(x²) + ε)) with the statistics in float32."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
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
    for module in [base.lm_head, *(m for layer in decoder.layers for m in layer_projections(layer))]:
        _active_adapters(module)
    return base


class FastDecoder:
    """Prefill + one-token steps over a static KV cache for `rows` sequences of up to `max_len` tokens.

    `static`: one cache of bucketed capacity for the whole rollout, rows never dropped (`drops_rows` is False),
    each step run by `step_fn(decoder, tokens, positions, slot)` — `static_token_step`, or its compiled form."""

    def __init__(self, model: torch.nn.Module, fuse: bool | None = None, static: bool = False,
                 step_fn: Any = None) -> None:
        base = check_supported(model)
        self.static, self.drops_rows = static, not static
        self.step_fn = step_fn or static_token_step
        cfg = base.config
        decoder = base.model
        self.rotary = decoder.rotary_emb
        self.embed = effective_weight_embedding(decoder.embed_tokens)
        self.norm = decoder.norm.weight.detach()
        self.eps = float(decoder.norm.variance_epsilon)
        if fuse is None:  # merge and fuse while the copy is small; larger models keep their weights and LoRA factors
            fuse = projection_bytes(decoder) <= FUSE_BUDGET_BYTES
        self.fused = fuse
        self.lm_head = Projection.of([base.lm_head], fuse)
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = decoder.layers[0].self_attn.scaling
        self.gqa = self.num_heads != self.num_kv_heads  # a Python bool (a compiled step would see a SymBool)
        self.layers = [self._layer(layer, fuse) for layer in decoder.layers]
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.key_valid = torch.empty(0)
        self.length = 0

    @staticmethod
    def _layer(layer: torch.nn.Module, fuse: bool) -> FastLayer:
        attn, mlp = layer.self_attn, layer.mlp
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        return FastLayer(
            input_norm=layer.input_layernorm.weight.detach(),
            qkv=Projection.of([attn.q_proj, attn.k_proj, attn.v_proj], fuse),
            q_norm=q_norm.weight.detach() if q_norm is not None else None,
            k_norm=k_norm.weight.detach() if k_norm is not None else None,
            o=Projection.of([attn.o_proj], fuse), post_norm=layer.post_attention_layernorm.weight.detach(),
            gate_up=Projection.of([mlp.gate_proj, mlp.up_proj], fuse), down=Projection.of([mlp.down_proj], fuse))

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor,
                 start: int | torch.Tensor) -> torch.Tensor:
        """Hidden states of the last position after writing K/V of ids [R, T] at cache slots start..start+T-1.

        `start` a tensor [1] (the static step, T = 1): K/V written in place at that slot and attention over the whole
        cache, the mask hiding the slots not yet written; no shape depends on the step."""
        R, T = ids.shape
        H, Hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        x = F.embedding(ids, self.embed)  # [R, T, hidden]
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]  # [R, T, 1, d]
        static = isinstance(start, torch.Tensor)
        end = None if static else start + T
        for layer, (k_cache, v_cache) in zip(self.layers, self.cache):
            h = rms_norm(x, layer.input_norm, self.eps)
            qkv = layer.qkv(h).view(R, T, H + 2 * Hkv, d)
            qk, v = qkv[:, :, : H + Hkv], qkv[:, :, H + Hkv:]
            if layer.q_norm is not None:
                qk = torch.cat([rms_norm(qk[:, :, :H], layer.q_norm, self.eps),
                                rms_norm(qk[:, :, H:], layer.k_norm, self.eps)], dim=2)
            qk = rotate(qk, cos, sin).transpose(1, 2)  # [R, H + H_kv, T, d]: queries and keys rotated at once
            if static:
                k_cache.index_copy_(2, start, qk[:, H:])
                v_cache.index_copy_(2, start, v.transpose(1, 2))
            else:
                k_cache[:, :, start:end] = qk[:, H:]
                v_cache[:, :, start:end] = v.transpose(1, 2)
            attn = F.scaled_dot_product_attention(qk[:, :H], k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=attn_mask,
                                                  scale=self.scaling, enable_gqa=self.gqa)  # [:None] is the whole cache
            x = x + layer.o(attn.transpose(1, 2).reshape(R, T, H * d))
            h = rms_norm(x, layer.post_norm, self.eps)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        return rms_norm(x[:, -1], self.norm, self.eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                max_new_tokens: int) -> torch.Tensor:
        """Allocate the cache, run the left-padded prompts [R, P]; → next-token logits [R, V].

        Identical prompts (the G samples of a group) are run once and their cache rows copied."""
        R, P = input_ids.shape
        total = P + max_new_tokens
        device = self.embed.device
        unique, row_of = torch.unique(torch.cat([input_ids, attention_mask.long()], 1), dim=0, return_inverse=True)
        ids, mask, pos = unique[:, :P], unique[:, P:].bool(), positions[_first_row(row_of, len(unique))]
        if self.static:
            total = -(-total // STATIC_BUCKET) * STATIC_BUCKET
        self.cache = self._allocate(len(unique), total if self.static else min(total, P + CACHE_GROWTH))
        table = torch.arange(total, device=device)[None]
        cos, sin = self.rotary(self.embed[:1], table)  # [1, total, d], the model's own RoPE (incl. scaling)
        self.cos, self.sin = cos[0], sin[0]
        self.key_valid = torch.ones(len(unique), total, dtype=torch.bool, device=device)
        self.key_valid[:, :P] = mask
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=device)  # a padding query attends to itself (never read)
        self.length = P
        self.slots = table[0]  # [total]: the static step's mask shows slot s once s ≤ the slot being written
        hidden = self._forward(ids, pos, ((causal & mask[:, None, :]) | eye)[:, None], 0)  # [u, hidden]
        self.keep_rows(row_of)  # one cache row per input row
        return self.logits(hidden)[row_of]

    def _allocate(self, rows: int, capacity: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (rows, self.num_kv_heads, capacity, self.head_dim)
        dtype, device = self.embed.dtype, self.embed.device
        return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                for _ in self.layers]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indices into the current batch) in the cache, e.g. drop finished ones. Only the
        written slots are copied; the slots after them are never read before they are written (the static step
        reads every slot, masked: they are zeros there, as uninitialised memory may hold NaN, and NaN·0 is NaN)."""
        used = self.length

        def pick(x: torch.Tensor) -> torch.Tensor:
            out = (x.new_zeros if self.static else x.new_empty)((len(rows), *x.shape[1:]))
            out[:, :, :used] = x[:, :, :used].index_select(0, rows)
            return out

        self.cache = [(pick(k), pick(v)) for k, v in self.cache]
        self.key_valid = self.key_valid.index_select(0, rows)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append one token per row (tokens [R], positions [R]); → next-token logits [R, V]."""
        start = self.length
        self.length += 1
        if self.static:
            return self.step_fn(self, tokens, positions, torch.full((1,), start, device=tokens.device))
        capacity = self.cache[0][0].shape[2]
        if self.length > capacity:  # grow by CACHE_GROWTH slots at a time, up to P + max_new_tokens
            grown = self._allocate(len(tokens), min(self.key_valid.shape[1], capacity + CACHE_GROWTH))
            for (k_new, v_new), (k, v) in zip(grown, self.cache):
                k_new[:, :, :start] = k[:, :, :start]
                v_new[:, :, :start] = v[:, :, :start]
            self.cache = grown
        mask = self.key_valid[:, None, None, : self.length]  # [R, 1, 1, L]
        return self.logits(self._forward(tokens[:, None], positions[:, None], mask, start))


def static_token_step(decoder: FastDecoder, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor
                      ) -> torch.Tensor:
    """One token per row through a static decoder: K/V written at `slot` [1], attention over every written slot.
    tokens, positions [R] → next-token logits [R, V]. The shapes are the rollout's (rows, capacity), not the step's."""
    mask = (decoder.key_valid & (decoder.slots <= slot))[:, None, None, :]  # [R, 1, 1, capacity]
    return decoder.logits(decoder._forward(tokens[:, None], positions[:, None], mask, slot))


_COMPILED: dict[str, Any] = {}


def compiled_token_step() -> Any:
    """`static_token_step` compiled by torch.compile (inductor), once per process; later rollouts reuse it while
    their shapes and dtypes match, and a new shape recompiles with dynamic sizes."""
    if "step" not in _COMPILED:
        _COMPILED["step"] = torch.compile(static_token_step, fullgraph=True, dynamic=False)
    return _COMPILED["step"]


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


def projection_bytes(decoder: torch.nn.Module) -> int:
    """Bytes of the attention and MLP projection weights: the size of the copy a fused decoder makes."""
    weights = [getattr(m, "base_layer", m).weight for layer in decoder.layers for m in layer_projections(layer)]
    return sum(w.numel() * w.element_size() for w in weights)


def fast_decoder_problem(model: torch.nn.Module) -> str | None:
    """Why the fast decoder cannot run this model, or None; checks only, builds nothing."""
    try:
        check_supported(model)
    except Unsupported as e:
        return str(e)
    return None


def fast_decoder(model: torch.nn.Module, fuse: bool | None = None, compiled: bool = False) -> FastDecoder | str:
    """A FastDecoder over the model's current weights (`compiled`: the static, compiled one-token step), or the
    reason it cannot run this model."""
    try:
        return FastDecoder(model, fuse, static=compiled, step_fn=compiled_token_step() if compiled else None)
    except Unsupported as e:
        return str(e)
