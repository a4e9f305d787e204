"""Array plumbing for the physics: numpy-or-torch in, the same kind out, chunked evaluation.

Signal equations are written as plain element-wise torch expressions.  Evaluated naively over a
1 mm brain (~9 M voxels) each operator is a separate pass through main memory, so a formula with
twenty operators costs twenty passes.  :func:`evaluate_chunked` runs the same expression on
cache-sized slices instead, so the maps are read once and the output written once; on a GPU the
whole volume is one slice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

#: Voxels per slice on the CPU.  At 2**15 float32 voxels (128 KiB) a formula's ~10 temporaries stay in the
#: L2 cache, and torch runs each operator single-threaded (its intra-op grain size is 32768), so the
#: slices are spread over worker threads instead: no OpenMP fork/join per operator, which under load
#: (other processes on the cores) can cost more than the arithmetic.
CPU_CHUNK_VOXELS = 1 << 15

_POOL: ThreadPoolExecutor | None = None


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers != workers:  # noqa: SLF001 - resize when torch's thread count changes
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qmricore-physics")
    return _POOL


ArrayLike = Any  # numpy.ndarray | torch.Tensor | float


def is_numpy(x: object) -> bool:
    return isinstance(x, np.ndarray) or isinstance(x, np.generic)


def to_tensor(x: ArrayLike, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    """Convert without copying when possible (the caller must never write into the result)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device if device is not None else x.device)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def compute_dtype(*arrays: ArrayLike) -> torch.dtype:
    """float64 when any input is float64, float32 otherwise (integers and float16 compute in float32)."""
    for a in arrays:
        dt = a.dtype if isinstance(a, (np.ndarray, np.generic, torch.Tensor)) else None
        if dt in (np.float64, torch.float64):
            return torch.float64
    return torch.float32


def like_input(result: torch.Tensor, template: ArrayLike) -> ArrayLike:
    """Return ``result`` as numpy when ``template`` was numpy (or a scalar), else as a tensor."""
    if isinstance(template, torch.Tensor):
        return result
    return result.detach().cpu().numpy()


def evaluate_chunked(
    fn: Callable[..., torch.Tensor],
    volumes: Mapping[str, torch.Tensor | None],
    out: torch.Tensor,
    **constants: Any,
) -> torch.Tensor:
    """Evaluate ``fn(**volumes, **constants)`` element-wise into ``out`` slice by slice.

    Parameters
    ----------
    fn
        An element-wise function of the volumes (tensors, scalars or ``None``).
    volumes
        Full-size tensors of ``out.shape`` on ``out.device``; 0-d tensors and ``None`` pass through.
    out
        Preallocated contiguous output.
    """
    flat_out = out.view(-1)
    flat = {k: (v.reshape(-1) if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in volumes.items()}
    total = flat_out.numel()

    def run(start: int, stop: int, step: int) -> None:
        with torch.no_grad():
            for lo in range(start, stop, step):
                hi = min(lo + step, stop)
                part = {k: (v[lo:hi] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in flat.items()}
                flat_out[lo:hi] = fn(**part, **constants)

    if out.device.type != "cpu":
        run(0, total, total)
        return out
    step = CPU_CHUNK_VOXELS
    workers = max(1, min(torch.get_num_threads(), -(-total // step)))
    if workers == 1:
        run(0, total, step)
        return out
    # Contiguous blocks of whole chunks, one per worker (static split: the work per voxel is uniform).
    bounds = [min(total, -(-total * i // workers // step) * step) for i in range(workers + 1)]
    jobs = [_pool(workers).submit(run, lo, hi, step) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]
    for job in jobs:
        job.result()
    return out
