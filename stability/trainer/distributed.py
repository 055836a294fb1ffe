"""Multi-process runs: rank/world from the environment, process group set-up, collectives.

A run is distributed when launched with ``WORLD_SIZE > 1`` in the environment: by ``torchrun``,
or by a Slurm job with several tasks (the grid's ``RunJob`` exports the variables with
``submitit.helpers.TorchDistributedEnvironment``). NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (a rendezvous port for a local multi-process run)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def from_env() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup_device(name: str, d: Dist) -> torch.device:
    """The run's device: ``auto`` is CUDA when present; a distributed CUDA run takes its local
    rank's GPU. TF32 matmuls on CUDA (the bf16 autocast covers the rest)."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from ..errors import ConfigError

        raise ConfigError(f"device: {name!r} asks for a GPU and this machine has none that torch can use "
                          f"(allowed here: auto, cpu)")
    if device.type == "cuda":
        if d.enabled:
            device = torch.device("cuda", d.local_rank)
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``: bf16 on CUDA (fp32 master weights), None on CPU (fp32)."""
    return torch.bfloat16 if device.type == "cuda" else None


def autocast_for(device: torch.device):
    """A context factory: autocast to :func:`amp_dtype` on CUDA, nothing on CPU."""
    if (dtype := amp_dtype(device)) is not None:
        return lambda: torch.autocast(device.type, dtype=dtype)
    return nullcontext


def init(d: Dist, device_type: str) -> bool:
    """Start the process group if ``d`` is distributed and none runs; True if this call started it."""
    if not d.enabled or tdist.is_initialized():
        return False
    tdist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=d.rank, world_size=d.world_size)
    return True


def all_reduce(t: torch.Tensor, d: Dist, op: str = "sum") -> torch.Tensor:
    """In place across ranks (no-op for one process)."""
    if d.enabled:
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX if op == "max" else tdist.ReduceOp.SUM)
    return t


def barrier(d: Dist) -> None:
    if d.enabled:
        tdist.barrier()
