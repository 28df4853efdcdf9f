"""Reproducible token sampling: counter-based Gumbel noise keyed by (seed, step, prompt, sample).

Every random number is a hash of integers, not a draw from a stateful generator, so a completion
depends only on its own key: the same (seed, step, prompt, sample) gives the same tokens whatever
else is in the batch, in whatever order, and after a resume. Sampling is exact: adding Gumbel(0, 1)
noise to the (temperature-scaled, top-p filtered) logits and taking the argmax draws from the
renormalised softmax distribution (the Gumbel-max trick).
"""

from __future__ import annotations

import hashlib

import torch

_C1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64 constants, as signed int64
_C2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


def _wrap(x: int) -> int:
    """A Python int as the signed int64 with the same low 64 bits."""
    return ((x + (1 << 63)) % (1 << 64)) - (1 << 63)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping arithmetic)."""
    x = x ^ _srl(x, 30)
    x = x * _C1
    x = x ^ _srl(x, 27)
    x = x * _C2
    return x ^ _srl(x, 31)


def stable_hash(text: str) -> int:
    """A 63-bit hash of a string that does not change between processes (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def sample_keys(seed: int, step: int, prompt_ids: list[str], sample_index: list[int]) -> torch.Tensor:
    """One int64 key per completion from (seed, step, prompt id, sample index)."""
    key = torch.tensor([stable_hash(p) for p in prompt_ids], dtype=torch.int64)
    for part in (seed, step):
        key = mix64(key ^ mix64(torch.full_like(key, _wrap(part))))
    return mix64(key ^ torch.tensor(sample_index, dtype=torch.int64) * _GOLDEN)


_VOCAB_KEYS: dict[tuple[int, str], torch.Tensor] = {}


def vocab_keys(vocab_size: int, device: torch.device) -> torch.Tensor:
    """mix64(token id + golden) for every token id [V]: the same for every position, computed once per device."""
    key = (vocab_size, str(device))
    if key not in _VOCAB_KEYS:
        _VOCAB_KEYS[key] = mix64(torch.arange(vocab_size, dtype=torch.int64, device=device) + _GOLDEN)
    return _VOCAB_KEYS[key]


def uniform_noise(keys: torch.Tensor, position: int, vocab_size: int) -> torch.Tensor:
    """U(0,1) of shape [R, V] for token `position` of each row; never exactly 0 or 1."""
    pos_key = mix64(keys + _wrap((position + 1) * _GOLDEN))  # [R]
    bits = mix64(pos_key[:, None] ^ vocab_keys(vocab_size, keys.device)[None, :])  # [R, V]
    mantissa = _srl(bits, 11).to(torch.float64)  # 53 random bits
    return ((mantissa + 0.5) / float(1 << 53)).to(torch.float32)


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean [R, V]: the smallest set of most likely tokens whose probability reaches top_p."""
    if top_p >= 1.0:
        return torch.ones_like(logits, dtype=torch.bool)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass strictly before each token
    keep_sorted = before < top_p  # the first token is always kept
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def pick_tokens(logits: torch.Tensor, keys: torch.Tensor | None, position: int,
                temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Next token per row: greedy when keys is None, else a Gumbel-max sample.  logits [R, V] → [R]."""
    if keys is None:
        return logits.argmax(-1)
    scaled = logits.float() / temperature
    if top_p < 1.0:
        scaled = scaled.masked_fill(~top_p_mask(scaled, top_p), float("-inf"))
    u = uniform_noise(keys.to(logits.device), position, logits.shape[-1])
    gumbel = -torch.log(-torch.log(u))
    return (scaled + gumbel).argmax(-1)
