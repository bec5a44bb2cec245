"""Many processes: torchrun's environment, a shard per rank without duplicates, and reductions to rank 0.

Under ``torchrun --nproc_per_node N`` every process runs the same audit on its own contiguous
slice of the images (rank ``r`` of ``W`` takes ``[r*n//W, (r+1)*n//W)``: every image exactly
once, no padding). Dense aggregates are summed with ``all_reduce``; the bounded lists are
gathered to rank 0 and merged there. Every collective here is called by every rank, in the
same order. Without torchrun (no ``WORLD_SIZE`` in the environment) this is one process and
every function is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["World", "init_world", "shard", "all_reduce_sum", "gather_to_zero", "broadcast", "barrier"]


@dataclass(frozen=True)
class World:
    """Who this process is among how many, and the device it should use."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    started: bool = False  # whether init_world started the process group (and should end it)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes TensorBoard and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    def close(self) -> None:
        """End the process group if :func:`init_world` started it."""
        if self.started and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_world(device: str | torch.device | None = None) -> World:
    """The process group from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    gloo on CPU, nccl on CUDA (one GPU per process: ``cuda:LOCAL_RANK``). Without those variables,
    or with WORLD_SIZE=1: a single process on ``device``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = torch.device(device) if device is not None else torch.device("cpu")
    if size <= 1:
        return World(device=wanted)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        wanted = torch.device("cuda", local)
        torch.cuda.set_device(wanted)
    started = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if wanted.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": wanted} if wanted.type == "cuda" else {}
        torch.distributed.init_process_group(backend=backend, **kwargs)
        started = True
    return World(rank=rank, size=size, local_rank=local, device=wanted, started=started)


def shard(total: int, world: World) -> range:
    """This rank's contiguous slice of ``range(total)``; the slices of all ranks cover it exactly once."""
    return range(world.rank * total // world.size, (world.rank + 1) * total // world.size)


def _collective_device(world: World) -> torch.device:
    backend = torch.distributed.get_backend()
    return world.device if backend == "nccl" else torch.device("cpu")


def all_reduce_sum(tensors: dict[str, torch.Tensor], world: World) -> None:
    """Sum every tensor over all ranks, in place (every rank gets the sums)."""
    if not world.distributed:
        return
    device = _collective_device(world)
    for name in sorted(tensors):
        tensor = tensors[name]
        moved = tensor.to(device)
        torch.distributed.all_reduce(moved, op=torch.distributed.ReduceOp.SUM)
        tensor.copy_(moved.cpu() if moved is not tensor else moved)


def gather_to_zero(obj: Any, world: World) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere. Picklable objects only."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size if world.is_main else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait for every rank."""
    if world.distributed:
        torch.distributed.barrier()
