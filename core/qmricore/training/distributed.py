"""Multi-process training under ``torchrun`` (PyTorch DDP, SPEC §8).

``torchrun --nproc-per-node G --no-python qmricore train-seg --config cfg.json --out DIR`` starts G
processes with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`init_from_env` joins them into one process group (``nccl`` on CUDA, ``gloo`` on CPU) and
pins each process to ``cuda:LOCAL_RANK``.  Without those variables everything here is a no-op for
a single process.

Data sharding works like ``DistributedSampler`` but on the per-sample seeds: at step ``i`` process
``r`` of ``W`` trains on the sample indices ``(i·W + r)·B + b`` for ``b < B`` (:func:`sample_indices`),
each sample being a pure function of ``(seed, index)``.  So processes never see the same sample, and
the data-sampler position is just the step number (nothing extra to checkpoint).  Gradients are
averaged by DDP, so the replicas stay identical; only rank 0 writes checkpoints, logs and the model.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device) -> DistInfo:
    """Join the ``torchrun`` process group described by the environment (single process: no-op).

    ``device`` decides the backend: ``nccl`` for CUDA, ``gloo`` otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=world)
    return info


def process_device(device: torch.device, info: DistInfo) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for a CUDA job, ``device`` otherwise."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def sample_indices(iteration: int, batch_size: int, info: DistInfo) -> list[int]:
    """Global sample indices that process ``info.rank`` trains on at step ``iteration`` (0-based)."""
    first = (iteration * info.world_size + info.rank) * batch_size
    return list(range(first, first + batch_size))


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` in a multi-process job, ``model`` itself otherwise."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare network inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one process)."""
    if info.enabled:
        dist.barrier()


def all_gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj`` in rank order (``[obj]`` for one process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_across(value: float, info: DistInfo) -> float:
    """Mean of a number over all processes."""
    if not info.enabled:
        return float(value)
    return sum(all_gather(float(value), info)) / info.world_size


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (equal digests = bit-identical replicas)."""
    digest = hashlib.sha256()
    for name, tensor in unwrap(model).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def shutdown(info: DistInfo) -> None:
    """Leave the process group (no-op for one process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
