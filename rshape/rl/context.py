"""What the loop lends to rewards that need the policy: log-probs of given texts, and fresh samples."""

from __future__ import annotations

from typing import Any

import torch

from rshape.batch import Batch, verify
from rshape.rl.loss import token_logprobs
from rshape.rl.rollout import encode_prompts, render_prompt, rollout
from rshape.rl.sampling import sample_keys
from rshape.tasks.base import Problem, Task


class LoopContext:
    """Implements rewards.base.RewardContext for one step of the loop."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, task: Task, recipe: Any, step: int,
                 monitor: list[Problem], device: torch.device) -> None:
        self.model, self.tokenizer, self.task, self.recipe = model, tokenizer, task, recipe
        self.step, self.monitor, self.device = step, monitor, device

    @torch.no_grad()
    def logprobs(self, prompts: list[Any], completion_ids: list[list[int]]) -> list[torch.Tensor]:
        tok = self.tokenizer
        # an empty prompt (SAR's question-free view) starts from BOS, or EOS when there is none
        start = tok.bos_token or tok.eos_token
        texts = [render_prompt(p, tok, self.task.system_prompt) or start for p in prompts]
        ids, mask = encode_prompts(texts, tok, self.device)
        width = max(1, max(len(c) for c in completion_ids))
        comp = torch.full((len(completion_ids), width), tok.pad_token_id, dtype=torch.long)
        cmask = torch.zeros((len(completion_ids), width), dtype=torch.bool)
        for i, c in enumerate(completion_ids):
            comp[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            cmask[i, : len(c)] = True
        ro = Batch(prompts=list(prompts), completions=[""] * len(prompts), completion_ids=list(completion_ids),
                   lengths=cmask.sum(1), truncated=torch.zeros(len(prompts), dtype=torch.bool), correct=None,
                   problems=[None] * len(prompts), group_size=1, prompt_ids=ids, prompt_mask=mask,  # type: ignore[list-item]
                   token_ids=comp.to(self.device), token_mask=cmask.to(self.device))
        was_training = self.model.training
        self.model.eval()
        try:
            lp, _ = token_logprobs(self.model, ro, 1.0, self.recipe.algorithm.logprob_chunk)  # the model's own distribution
        finally:
            self.model.train(was_training)
        return [lp[i, : len(c)].cpu() for i, c in enumerate(completion_ids)]

    def generate(self, problems: list[Problem], group_size: int) -> Batch:
        cfg = self.recipe.rollout
        keys = sample_keys(self.recipe.seed, self.step, [f"monitor:{p.id}" for p in problems for _ in range(group_size)],
                           [g for _ in problems for g in range(group_size)])
        batch = rollout(self.model, self.tokenizer, problems, group_size=group_size, max_new_tokens=cfg.max_new_tokens,
                        keys=keys, temperature=cfg.temperature, top_p=cfg.top_p, system_prompt=self.task.system_prompt,
                        device=self.device, decoder=cfg.decoder)
        verify(batch, self.task)
        batch.step = self.step
        return batch.counting_eos() if self.recipe.reward_lengths == "with_eos" else batch
