"""Float32 master weights for a policy trained in 16 bits (`optim.float32_master`).

AdamW's step is about lr in size. Written straight into bfloat16 weights, a step smaller than half the spacing of
representable values (about |w|/256) rounds away: at lr 1e-6 most weights never move (1.9% had changed after 10
steps, measured on bfloat16 weights of typical size). Mixed-precision training keeps a float32 copy of each trained
weight for the optimizer instead (Micikevicius et al. 2018, arXiv 1710.03740):

    forward and backward on the 16-bit weights w16  →  g16
    g32 = float(g16);  the optimizer steps the float32 master w32 with g32 (moments in float32 too)
    w16 = round(w32)

so small steps accumulate in w32 until they show in w16. LoRA adapters are float32 already (peft) and need none.
"""

from __future__ import annotations

import torch

SIXTEEN_BIT = (torch.bfloat16, torch.float16)


class Float32Masters:
    """A float32 master for each trained 16-bit parameter; the optimizer is built over `params`."""

    def __init__(self, model_params: list[torch.nn.Parameter]) -> None:
        self.model_params = model_params
        self.params = [torch.nn.Parameter(p.detach().float().clone()) for p in model_params]

    @staticmethod
    def needed(params: list[torch.nn.Parameter], enabled: bool) -> bool:
        """Masters are kept when the recipe allows them and some trained parameter is 16-bit."""
        return enabled and any(p.dtype in SIXTEEN_BIT for p in params)

    def take_gradients(self) -> None:
        """Move each 16-bit gradient onto its master as float32 (the 16-bit one is dropped)."""
        for p, m in zip(self.model_params, self.params):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def write_back(self) -> None:
        """Round the masters into the model's weights."""
        for p, m in zip(self.model_params, self.params):
            p.copy_(m)

    def state_dict(self) -> list[torch.Tensor]:
        return [m.detach().cpu().clone() for m in self.params]

    @torch.no_grad()
    def load_state_dict(self, state: list[torch.Tensor] | None) -> None:
        """The masters of a checkpoint; without them (a checkpoint from before masters), the model's weights."""
        for i, m in enumerate(self.params):
            m.copy_(state[i] if state is not None else self.model_params[i])
        self.write_back()
