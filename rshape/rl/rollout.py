"""Batched generation with a KV cache and left padding, into a `rshape.batch.Batch` of groups."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from rshape.batch import Batch
from rshape.rl.fast_decode import FastDecoder, fast_decoder, fast_decoder_problem
from rshape.rl.sampling import pick_tokens
from rshape.tasks.base import Problem

_warned_no_template = False


def render_prompt(prompt: str | list[dict[str, str]], tokenizer: PreTrainedTokenizerBase,
                  system_prompt: str | None = None, chat: str = "never") -> str:
    """The text the model is given. A chat (a list of messages, or a text prompt as the user turn when `chat` is
    `always`, or `auto` and the tokenizer has a template) goes through the tokenizer's chat template with the
    generation prompt, after `system_prompt`; without a template it becomes `role: content` lines (warned once).
    Plain text stays as it is, after `system_prompt` and a blank line."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt, str):
        if not (chat == "always" or (chat == "auto" and has_template)):
            return f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
        prompt = [{"role": "user", "content": prompt}]
    messages = list(prompt)
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if has_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    global _warned_no_template
    if not _warned_no_template:
        _warned_no_template = True
        print("warning: chat-shaped prompts but the tokenizer has no chat template: each message is written as "
              "'role: content' lines ending in 'assistant: '; give a model whose tokenizer has a template, or "
              "plain-text prompts (task.chat: never)", file=sys.stderr)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant: "


def encode_prompts(texts: list[str], tokenizer: PreTrainedTokenizerBase,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, [R, P]."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not has_template)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def cache_argument(model: torch.nn.Module) -> str:
    """The forward keyword that takes the KV cache: `cache` in newer transformers, else `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


DECODERS = ("auto", "fast", "compiled", "hf")


class DecoderError(ValueError):
    """`rollout.decoder: fast` asked for a model the fast decoder cannot run (the message says why)."""


class _ModelStepper:
    """Prefill + one-token steps through the model's own forward and a DynamicCache (any causal LM)."""

    drops_rows = True  # finished rows leave the batch and the cache

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.cache = {cache_argument(model): DynamicCache()}

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                max_new_tokens: int) -> torch.Tensor:
        self.mask = attention_mask
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **self.cache)
        return out.logits[:, -1, :]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (indices into the current batch) in the cache and mask."""
        next(iter(self.cache.values())).batch_select_indices(rows)
        self.mask = self.mask[rows]

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=positions[:, None],
                         use_cache=True, **self.cache)
        return out.logits[:, -1, :]


def _check_choice(decoder: str, problem: str | None) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; valid: {', '.join(DECODERS)}")
    if decoder in ("fast", "compiled") and problem is not None:
        raise DecoderError(f"rollout.decoder: {decoder} cannot run this model: {problem}; use auto or hf")


def check_decoder(model: torch.nn.Module, decoder: str) -> None:
    """Raise DecoderError when `decoder` is `fast` or `compiled` and the fast decoder cannot run this model
    (builds nothing)."""
    _check_choice(decoder, fast_decoder_problem(model) if decoder in ("fast", "compiled") else None)


def stepper(model: torch.nn.Module, decoder: str = "auto") -> FastDecoder | _ModelStepper:
    """The decoder `generate` runs: `fast` (rshape.rl.fast_decode; an error if the model is not supported),
    `compiled` (the fast decoder with its static one-token step compiled), `hf` (the model's own forward), or
    `auto` (fast when supported, else hf)."""
    fast = fast_decoder(model, compiled=decoder == "compiled") if decoder in ("auto", "fast", "compiled") else None
    _check_choice(decoder, fast if isinstance(fast, str) else None)
    return fast if isinstance(fast, FastDecoder) else _ModelStepper(model)


@torch.no_grad()
def generate(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
             max_new_tokens: int, eos_token_id: int, pad_token_id: int, keys: torch.Tensor | None = None,
             temperature: float = 1.0, top_p: float = 1.0, with_entropies: bool = False, decoder: str = "auto"
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode up to max_new_tokens per row with a KV cache; greedy when `keys` is None.

    input_ids, attention_mask: [R, P] left-padded.  Returns tokens [R, T] (T ≤ max_new_tokens) with
    EOS kept and pad after it, and, if asked, the entropy of the temperature-scaled sampling
    distribution at each generated token [R, T] (0 after EOS). Finished rows leave the batch and the KV cache
    once a quarter of the live rows are done (not with the static `compiled` decoder, whose shapes are fixed);
    generation stops when every row has produced EOS.
    A row's tokens depend only on its own prompt and key. `decoder`: see `stepper`.
    """
    rows, device = input_ids.shape[0], input_ids.device
    run = stepper(model, decoder)
    pos = positions_from_mask(attention_mask)  # [R, P]
    logits = run.prefill(input_ids, attention_mask, pos, max_new_tokens)  # [r, V] for the r live rows
    next_pos = pos[:, -1] + 1  # [r]
    live = torch.arange(rows, device=device)  # original row of each live row
    done = torch.zeros(rows, dtype=torch.bool, device=device)  # [r]
    tokens = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    entropies = torch.zeros(rows, max_new_tokens, device=device) if with_entropies else None
    steps = 0
    for t in range(max_new_tokens):
        steps = t + 1
        if entropies is not None:
            logp = torch.log_softmax(logits.float() / temperature, dim=-1)
            entropies[live, t] = (-(logp.exp() * logp).sum(-1)).masked_fill(done, 0.0)
        tok = pick_tokens(logits, keys[live.to(keys.device)] if keys is not None else None, t, temperature, top_p)  # [r]
        tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
        tokens[live, t] = tok
        done |= tok == eos_token_id
        n_done = int(done.sum())
        if n_done == len(live) or t == max_new_tokens - 1:
            break
        if run.drops_rows and 4 * n_done >= len(live):  # drop finished rows from batch and cache once a quarter are done
            keep = (~done).nonzero().squeeze(1)
            run.keep_rows(keep)
            live, next_pos, tok, done = live[keep], next_pos[keep], tok[keep], done[keep]
        logits = run.step(tok, next_pos)
        next_pos = next_pos + 1
    return tokens[:, :steps], (entropies[:, :steps] if entropies is not None else None)


def completion_mask(tokens: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From [R, T] generated tokens: (mask of tokens up to and including EOS [R, T] bool,
    lengths without EOS [R] long, truncated = no EOS [R] bool)."""
    is_eos = tokens == eos_token_id
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, tokens.shape[1], dtype=torch.long))
    idx = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    mask = idx <= first_eos[:, None]
    return mask, first_eos.long(), ~has_eos


def decode_completions(tokens: torch.Tensor, lengths: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    return tokenizer.batch_decode([row[: int(n)].tolist() for row, n in zip(tokens, lengths)],
                                  skip_special_tokens=False)


def rollout(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, problems: list[Problem], *,
            group_size: int, max_new_tokens: int, keys: torch.Tensor | None, temperature: float = 1.0,
            top_p: float = 1.0, system_prompt: str | None = None, chat: str = "never", device: torch.device | None = None,
            with_entropies: bool = False, decoder: str = "auto", **_: Any) -> Batch:
    """Generate `group_size` completions for each problem in one batch (not yet verified: `correct` is None).
    keys: [B·G] sampling keys; decoder: `auto` / `fast` / `compiled` / `hf` (see `stepper`)."""
    device = device or next(model.parameters()).device
    rows = [p for p in problems for _ in range(group_size)]
    texts = [render_prompt(p.prompt, tokenizer, system_prompt, chat) for p in rows]
    ids, mask = encode_prompts(texts, tokenizer, device)
    was_training = model.training
    model.eval()
    try:
        tokens, entropies = generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id, keys=keys, temperature=temperature, top_p=top_p,
                                     with_entropies=with_entropies, decoder=decoder)
    finally:
        model.train(was_training)
    cmask, lengths, truncated = completion_mask(tokens, tokenizer.eos_token_id)
    tokens = tokens.masked_fill(~cmask, tokenizer.pad_token_id)
    lengths, cpu_tokens = lengths.cpu(), tokens.cpu()
    return Batch(prompts=[p.prompt for p in rows], completions=decode_completions(cpu_tokens, lengths, tokenizer),
                 completion_ids=[row[:n].tolist() for row, n in zip(cpu_tokens, lengths.tolist())], lengths=lengths,
                 truncated=truncated.cpu(), correct=None, problems=rows, group_size=group_size,
                 max_new_tokens=max_new_tokens,
                 token_entropies=entropies.masked_fill(~cmask, 0.0).cpu() if entropies is not None else None,
                 prompt_ids=ids, prompt_mask=mask, token_ids=tokens, token_mask=cmask)
