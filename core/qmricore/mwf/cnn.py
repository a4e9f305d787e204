"""CNN myelin water fraction: a multi-echo series through a trained :class:`~qmricore.models.networks.MWFNet`.

The network sees every voxel's echo train divided by that train's mean (:func:`normalise_echoes`): MWF is a
ratio of pools, so the proton density and the receive gain carry no information and are removed, and the
network needs no intensity statistics of the whole image.  Training (:mod:`qmricore.training.mwf`) and
inference share that one function.

A model serves the protocol it was trained for: :func:`estimate_mwf` refuses a series whose echo count or
echo spacing differs from the model's (:func:`check_protocol`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import InputError

#: Relative tolerance of the echo spacing against the model's.
TE_TOLERANCE = 0.01
#: Slices (along the last spatial axis) evaluated at once.
SLAB = 16


def normalise_echoes(echoes: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Each voxel's echo train divided by its mean over echoes (axis ``dim``); voxels without signal stay 0."""
    mean = echoes.mean(dim=dim, keepdim=True)
    return torch.where(mean > 0, echoes / mean.clamp(min=torch.finfo(echoes.dtype).tiny), torch.zeros_like(echoes))


def check_protocol(n_echoes: int, te: float, network: Any, path: object = None) -> None:
    """The series' echo count and spacing must be the model's (``network``: its MWFNetConfig)."""
    if n_echoes != network.n_echoes:
        raise InputError(f"the CNN model serves {network.n_echoes} echoes; the series has {n_echoes}", path)
    if abs(te - network.te) > TE_TOLERANCE * network.te:
        raise InputError(f"the CNN model serves an echo spacing of {network.te:g} s; --te is {te:g} s", path)


def estimate_mwf(echoes: np.ndarray, te: float, model: Any, *, mask: np.ndarray | None = None,
                 device: str | torch.device = "cpu", progress: Callable[[int], None] | None = None) -> np.ndarray:
    """MWF (0-1) of every voxel of a ``(X, Y, Z, n_echoes)`` series with a loaded ``"mwf"`` model.

    Voxels outside ``mask`` and voxels whose first echo is not > 0 get 0 (as :func:`~qmricore.mwf.nnls.fit_nnls`).
    The volume is processed in slabs of :data:`SLAB` slices, each padded by the network's receptive radius
    from its neighbours, so the result equals one pass over the whole volume.  ``progress`` is called with
    the number of slices done after each slab.
    """
    if model.meta.kind != "mwf":
        raise InputError(f"holds a {model.meta.kind!r} network, not an MWF estimator", model.path)
    if echoes.ndim != 4:
        raise InputError(f"mwf: the echo data must be 4D (x, y, z, echoes), got {echoes.ndim}D")
    check_protocol(echoes.shape[3], te, model.meta.network, model.path)
    network = model.network.to(device).eval()
    halo = model.meta.network.context_layers
    series = torch.from_numpy(np.ascontiguousarray(np.moveaxis(echoes, 3, 0), dtype=np.float32))
    depth = series.shape[3]
    out = np.zeros(echoes.shape[:3], dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, depth, SLAB):
            stop = min(start + SLAB, depth)
            lo, hi = max(start - halo, 0), min(stop + halo, depth)
            x = normalise_echoes(series[..., lo:hi].to(device))
            mwf = network(x[None])[0, 0, ..., start - lo:stop - lo]
            out[..., start:stop] = mwf.float().cpu().numpy()
            if progress is not None:
                progress(stop - start)
    keep = echoes[..., 0] > 0
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    out[~keep] = 0.0
    return out
