"""Distributed data parallel helpers for the training loop (``torchrun``).

``torchrun`` starts one process per device and sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them (``WORLD_SIZE``
absent or 1) everything here is a no-op and training runs in one process.

Division of labour under DDP:

* every rank builds the same model from the same seed; `DistributedDataParallel`
  broadcasts rank 0's weights at wrap time and all-reduces (averages) gradients in
  ``backward``, so parameters stay bit-identical across ranks;
* `pose.train.data.CurriculumBatchSampler` gives each rank its own slice of every
  global batch (same input size on all ranks at a step);
* BatchNorm running statistics are per-rank (DDP broadcasts rank 0's buffers at the
  start of each forward); `sync_buffers` makes them equal once training ends;
* only rank 0 prints and writes files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world``; ``created`` when `setup` started the group."""

    rank: int = 0
    world: int = 1
    created: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU (the only CPU backend in stock PyTorch)."""
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: torch.device) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (if any).

    Idempotent: reuses a group somebody else initialised (``created`` false then, so
    `teardown` leaves it alone).
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return DistInfo()
    created = False
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend_for(device), **kwargs)
        created = True
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), created=created)


def teardown(info: DistInfo) -> None:
    """Wait for every rank, then destroy the process group if `setup` created it."""
    if info.distributed:
        dist.barrier()
        if info.created:
            dist.destroy_process_group()


def mean_across_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise mean of a (detached, small) tensor over all ranks; identity in one process."""
    if not info.distributed:
        return values
    values = values.detach().clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank; identity in one process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sync_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running mean/var, counters) to every rank."""
    if not info.distributed:
        return
    with torch.no_grad():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``module.state_dict()`` (in key order).

    Two models have equal digests exactly when all their parameters and buffers are
    bit-identical (barring hash collisions).
    """
    return state_dict_digest(module.state_dict())


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """`state_digest` of a plain state dict (e.g. the ``model`` entry of a checkpoint)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_replicas(module: torch.nn.Module, info: DistInfo) -> str:
    """Digest of this rank's model; raises RuntimeError on every rank when replicas differ."""
    digest = state_digest(module)
    if not info.distributed:
        return digest
    digests: list[str | None] = [None] * info.world
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError("DDP replicas diverged: model digests per rank "
                           + ", ".join(f"{r}: {d[:12]}" for r, d in enumerate(digests)))
    return digest
