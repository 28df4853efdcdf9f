"""Data-parallel ranks on one node, launched by `torchrun` (or `accelerate launch`): gloo on a CPU, NCCL on GPUs.

How a step is shared (rshape.rl.step): every rank draws the same prompts; rank r generates the r-th contiguous
share of them (whole groups: a group never spans ranks; sampling noise is keyed by seed, step, prompt and sample,
so a completion does not depend on the rank that draws it); the shares are gathered, so every rank verifies,
scores and computes advantages on the whole batch, exactly as one process would (batch statistics, dynamic
sampling, curriculum trackers and metrics need no separate reduction); each rank then back-propagates its share of
every minibatch's row chunks with the minibatch's normalisers, the gradients are summed across ranks, and every
rank takes the same optimizer step. Only rank 0 writes the run directory. With one process every call here is a
no-op.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from rshape.batch import ROW_FIELDS, Batch


@dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel ranks (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run directory, logs and checkpoints."""
        return self.rank == 0

    def share(self, n: int, rank: int | None = None) -> slice:
        """The contiguous share of n items of `rank` (this one by default): sizes differ by at most one."""
        r = self.rank if rank is None else rank
        base, extra = divmod(n, self.world)
        start = r * base + min(r, extra)
        return slice(start, start + base + (1 if r < extra else 0))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (picklable; tensors on the CPU)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on some rank (so that every rank takes the same branch)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device_for_collectives())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` over the ranks, as one flat buffer (None gradients count as 0)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.sum_(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset: offset + n].view_as(g).clone()
            offset += n

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def device_for_collectives(self) -> torch.device:
        if self.world > 1 and torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


SINGLE = Ranks()


def ranks_from_env(device: torch.device) -> Ranks:
    """The ranks `torchrun` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), with the process group
    started (NCCL for CUDA devices, gloo otherwise); one rank when there is no launcher."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
    return Ranks(rank, world, local_rank)


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """A CUDA device without an index becomes this rank's GPU (LOCAL_RANK); anything else is kept."""
    if device.type == "cuda" and ranks.world > 1 and device.index is None:
        return torch.device("cuda", ranks.local_rank)
    return device


def gather_batch(batch: Batch, ranks: Ranks, pad_token_id: int) -> Batch:
    """Every rank's rows in rank order as one batch (each rank's share is a contiguous run of whole groups, so the
    result is laid out as one process's batch); tensors stay on the devices they were on."""
    if ranks.world == 1:
        return batch
    devices = {f: v.device for f in ROW_FIELDS if isinstance(v := getattr(batch, f), torch.Tensor)}
    rows = {f: (v.cpu() if isinstance(v := getattr(batch, f), torch.Tensor) else v) for f in ROW_FIELDS}
    parts = [dataclasses.replace(batch, **p) for p in ranks.gather(rows)]
    full = Batch.concat(parts, pad_token_id)
    return dataclasses.replace(full, **{f: getattr(full, f).to(d) for f, d in devices.items()})


def shut_down() -> None:
    """Leave the process group at the end of a run (every rank waits for the others first), so that no rank exits
    while gloo still holds a connection to it (`terminate called without an active exception`)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.barrier()
        finally:
            torch.distributed.destroy_process_group()
