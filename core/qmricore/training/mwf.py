"""CNN MWF estimator training (SPEC §14, SynthMap): multi-echo series in, myelin water fraction out.

Sample ``k`` (a pure function of ``(loop.seed, k)``): a label map of ``data.labels`` is chosen and a
``data.patch_size`` block of it is cut, centred on a random brain voxel (:data:`~qmricore.training.estimator.
BRAIN`); a SynthMap subject is drawn (:func:`qmricore.generators.synthmap.draw_synthmap`) with the network's
protocol (echo count and spacing), its SNR replaced by one drawn log-uniformly in ``data.snr_range`` (so
SNR 20 and 200 are trained alike), and painted on the block (:func:`~qmricore.generators.synthmap.apply_synthmap`:
pools, texture, B1, Rician noise).  Painting a block costs what a block costs, and a block's statistics are
those of a whole head (the texture and B1 fields are smooth on the block's scale either way).

Input: the series normalised per voxel (:func:`qmricore.mwf.cnn.normalise_echoes`).  Target: the true myelin
pool fraction.  Loss: L1 over brain voxels (outside the brain the tissue model has one pool, so its MWF of 0
says nothing about myelin).
"""

from __future__ import annotations

import dataclasses
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets import sample_seed
from ..models.networks import build_mwf_net
from .config import MWFTrainConfig
from .estimator import BRAIN
from .loop import Sampler


def mwf_loss(outputs: torch.Tensor, targets: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 between ``outputs`` (B, 1, ...) and ``targets[:, :1]`` over the brain mask ``targets[:, 1:]``."""
    mask = targets[:, 1:2]
    l1 = ((outputs - targets[:, :1]).abs() * mask).sum() / mask.sum().clamp(min=1.0)
    return l1, {"l1": float(l1.detach())}


class MWFSampler(Sampler):
    """Training samples: ``sample(k) -> (normalised echoes (E, X, Y, Z), targets (2, X, Y, Z))`` (MWF, brain)."""

    def __init__(self, config: MWFTrainConfig) -> None:
        from ..generators.synthmap import SynthMapConfig
        from ..inference.preprocess import PreprocessConfig

        self.config = config
        self.synthmap = SynthMapConfig(te=config.network.te, n_echoes=config.network.n_echoes)
        self.preprocessing = PreprocessConfig(normalisation="none")

    @cached_property
    def priors(self) -> Any:
        from ..generators.synthmap import load_synthmap_priors

        return load_synthmap_priors()

    @cached_property
    def label_maps(self) -> list[np.ndarray]:
        from ..datasets import label_files, read_label_map

        return [np.asarray(read_label_map(f, self.priors.tissue).labels) for f in label_files(self.config.data.labels)]

    @cached_property
    def _brain_labels(self) -> list[int]:
        return [self.priors.tissue.label_of(n) for n in BRAIN if n in self.priors.names]

    @cached_property
    def _brain_voxels(self) -> list[np.ndarray]:
        return [np.argwhere(np.isin(labels, self._brain_labels)) for labels in self.label_maps]

    def check_data(self) -> None:
        """Read and check every label map (errors name the file) before a run writes anything."""
        _ = self._brain_voxels

    def _block(self, rng: np.random.Generator) -> np.ndarray:
        index = int(rng.integers(len(self.label_maps)))
        labels, brain = self.label_maps[index], self._brain_voxels[index]
        centre = brain[int(rng.integers(len(brain)))]
        size = np.array(self.config.data.patch_size)
        start = np.clip(centre - size // 2, 0, np.maximum(np.array(labels.shape) - size, 0))
        block = labels[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))]
        pad = [(0, n - b) for n, b in zip(size, block.shape, strict=True)]
        return np.pad(block, pad, constant_values=self.priors.tissue.background_label) if any(p for _, p in pad) \
            else block

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..generators.synthmap import apply_synthmap, draw_synthmap
        from ..mwf.cnn import normalise_echoes

        rng = np.random.default_rng(sample_seed(self.config.loop.seed, index))
        block = self._block(rng)
        draw = draw_synthmap(self.priors, torch.Generator().manual_seed(int(rng.integers(0, 2**62))), self.synthmap)
        lo, hi = self.config.data.snr_range
        draw = dataclasses.replace(draw, snr=float(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        sample = apply_synthmap(block, draw, self.priors, self.synthmap)
        echoes = normalise_echoes(torch.from_numpy(np.moveaxis(sample.echoes, 3, 0).copy()))
        brain = torch.from_numpy(np.isin(block, self._brain_labels).astype(np.float32))
        return echoes, torch.stack([torch.from_numpy(sample.mwf), brain])


def train_mwf(
    config: MWFTrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) a CNN MWF estimator; returns the exported model file ``out_dir/model.pt``."""
    from .loop import resolve_device, train_with_config

    device = resolve_device(device)
    return train_with_config(config, out_dir, MWFSampler(config), build_model=lambda: build_mwf_net(config.network),
                             loss=mwf_loss, classes=("mwf",), resume=resume, device=device, progress=progress)
