"""torch.distributed set-up from the torchrun environment, and the few collectives the loops use.

Owns: process-group initialisation (gloo on CPU, nccl on CUDA), the single-process fallback when
no torchrun environment is present, and helpers (``is_main``, ``barrier``, ``all_reduce_mean``,
``all_reduce_max``, ``all_gather_objects``). Nothing here assumes localhost: the rendezvous comes
from ``MASTER_ADDR`` / ``MASTER_PORT`` as set by torchrun (or any launcher that sets them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class WorldInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_is_distributed() -> bool:
    """True when the torchrun variables are set (even for a world of one)."""
    return all(k in os.environ for k in _ENV_KEYS)


def _pick_device(device: str | None, local_rank: int) -> torch.device:
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return dev


def init_distributed(device: str | None = None) -> WorldInfo:
    """Initialise from the torchrun environment, or return a single-process world without it.

    ``device``: "cpu", "cuda", "auto"/None (CUDA when available). Backend: nccl on CUDA, gloo on
    CPU. Idempotent: a second call returns the existing world.
    """
    if not env_is_distributed():
        dev = _pick_device(device, 0)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return WorldInfo(0, 1, 0, dev, None, False)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    dev = _pick_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RuntimeError(
                f"rank {rank}/{world}: MASTER_ADDR and MASTER_PORT must be set for a distributed run"
            )
        kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return WorldInfo(rank, world, local_rank, dev, backend, True)


def cleanup() -> None:
    """Destroy the process group if one is up."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single-process run)."""
    return get_rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a new tensor; the input is left alone)."""
    out = tensor.detach().clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks (a new tensor)."""
    out = tensor.detach().clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), indexed by rank."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
