"""This process's place in a dataset job: torch.distributed under torchrun, or nothing (one process).

    with process_group() as ranks:      # Ranks: rank, world, local_rank, device, and the few collectives
        plan = ranks.broadcast(plan)    # the identity when world == 1
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .errors import DatasetError

# A rank whose shard is done waits at the final barrier for the slowest one; with one long video in
# a shard that can take hours, so the collective timeout is generous (a crashed rank is detected by
# torchrun, not by this timeout).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=24)



@dataclass(frozen=True)
class Ranks:
    """This process's place in the job and the few collectives it needs. world == 1 without torchrun,
    where every collective is the identity."""

    rank: int
    world: int
    local_rank: int
    distributed: bool
    device: torch.device  # where collective tensors live: cuda:<local_rank> for NCCL, cpu for gloo

    @property
    def tag(self) -> str:
        return f"[rank {self.rank}/{self.world}]"

    def broadcast(self, obj: Any) -> Any:
        """rank 0's `obj`, on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def total(self, count: int) -> int:
        """Sum of `count` over ranks, on every rank."""
        if not self.distributed:
            return count
        value = torch.tensor([count], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
        return int(value.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


@contextlib.contextmanager
def process_group() -> Iterator[Ranks]:
    """Join torchrun's process group (nccl with CUDA, else gloo) for the block, and leave it after.

    Without torchrun (no WORLD_SIZE in the environment) this is a world of one. A group that the
    caller already initialised is used as is and left alone.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        yield _ranks(dist.get_rank(), dist.get_world_size(), dist.get_backend())
        return
    if "WORLD_SIZE" not in os.environ:
        yield Ranks(0, 1, 0, False, torch.device("cpu"))
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)  # rank and world from torchrun's env
    try:
        yield _ranks(dist.get_rank(), dist.get_world_size(), backend)
    finally:
        dist.destroy_process_group()


def _ranks(rank: int, world: int, backend: str) -> Ranks:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return Ranks(rank, world, local_rank, True, device)


def agree(ranks: Ranks, error: BaseException | None) -> None:
    """Raise on every rank when any rank hit `error` (so no rank waits forever in a collective)."""
    messages = ranks.all_gather(None if error is None else f"{error}".splitlines()[0])
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        rank, message = failed[0]
        raise DatasetError(f"rank {rank} could not start: {message}")
