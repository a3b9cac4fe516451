"""Multi-process training under `torchrun` (PyTorch DistributedDataParallel).

lstmgen never launches processes itself: `torchrun --nproc-per-node N -m lstmgen train ...` starts
N copies, each of which finds its rank in the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Rank 0 prepares the data, writes every file and prints
progress; the other ranks train on their share of the streams and stay quiet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import LstmgenError


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (keeps stop decisions in step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)

    def broadcast_float(self, value: float) -> float:
        """Rank 0's value, on every rank (so time-based schedules agree)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        torch.distributed.broadcast(tensor, src=0)
        return float(tensor.item())

    def gather_tensors(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of a same-shaped tensor, in rank order (on every rank)."""
        if not self.enabled:
            return [tensor]
        device = _collective_device()
        local = tensor.to(device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        return [p.cpu() for p in parts]


def _collective_device() -> torch.device:
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def setup() -> ProcessGroup:
    """Join the process group torchrun describes in the environment; a group of one otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessGroup()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    group = ProcessGroup(rank=rank, world_size=world_size, local_rank=local_rank)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return group
    use_cuda = torch.cuda.is_available() and os.environ.get("LSTMGEN_DIST_BACKEND", "") != "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    try:
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    except (RuntimeError, ValueError) as error:
        raise LstmgenError(f"could not join the torchrun process group ({str(error).splitlines()[0][:160]})") from None
    return group


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
