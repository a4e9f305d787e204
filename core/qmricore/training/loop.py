"""One small training loop shared by the segmentation and estimator trainers.

A trainer describes its job as a :class:`TrainingJob` (how to build the network, how to make a batch
from sample indices, the loss, what to store with the model) and calls :func:`run_training`, which

1. seeds torch/numpy/Python from ``loop.seed`` and builds the network (identical on every process);
2. with ``resume=True`` and a ``checkpoint.pt`` in the output folder, restores the network,
   optimiser, poly-LR scheduler, random states and step counter from it; otherwise, with ``loop.init``,
   starts the network from that model file's weights (fine-tuning);
3. runs the steps: batch → forward → loss → AdamW step → LR step, with a tqdm progress bar;
4. every ``log_every`` steps appends one JSON line to ``train_log.jsonl`` (step, loss and its parts
   averaged over processes, learning rate, seconds, the sample indices of every process);
5. every ``checkpoint_every`` steps writes ``checkpoint.pt`` atomically (rank 0 only);
6. at the end writes ``model.pt`` with :func:`qmricore.models.model_file.save_model` (rank 0) and logs a
   digest of every replica's weights (they must agree under DDP).

Resuming is exact: sample ``k`` depends on ``(seed, k)`` only and every random state is restored, so a
run killed after step ``k``'s checkpoint and resumed ends with the same weights as one never stopped.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..devices import resolve_device
from ..errors import InputError
from ..io import atomic_file, clear_stale_temps, ensure_folder
from . import distributed as ddp
from .checkpoint import CHECKPOINT_NAME, capture_rng, load_latest_checkpoint, restore_training_state, save_checkpoint
from .config import LoopConfig, OptimizerConfig, poly_factor

LOG_NAME = "train_log.jsonl"
MODEL_NAME = "model.pt"

#: ``loss(outputs, targets, step) -> (loss, {part name: value})``
LossFn = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainingJob:
    """What a trainer hands to :func:`run_training`.

    Attributes
    ----------
    build_model
        Returns a freshly initialised network (called after seeding).
    make_batch
        ``make_batch(indices) -> (inputs (B, C, X, Y, Z), targets)`` on the CPU; a pure function of the
        indices (each sample seeded from ``(seed, index)``).
    loss
        See :data:`LossFn`.
    export
        ``export(model, path)`` writes the final model file.
    config
        The training config in JSON form (stored in checkpoints).
    meta
        ``classes`` and ``preprocessing`` stored in checkpoints.
    loop, optimizer
        Loop and optimiser settings.
    """

    build_model: Callable[[], nn.Module]
    make_batch: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]
    loss: LossFn
    export: Callable[[nn.Module, Path], Path]
    config: Mapping[str, Any]
    loop: LoopConfig
    optimizer: OptimizerConfig
    meta: Mapping[str, Any] = field(default_factory=dict)


def train_with_config(config: Any, out_dir: str | os.PathLike[str], sampler: Any, *,
                      build_model: Callable[[], nn.Module], loss: LossFn, classes: Sequence[str],
                      info: Mapping[str, Any] | None = None, resume: bool, device: torch.device,
                      progress: bool) -> Path:
    """What every trainer shares around :func:`run_training`.

    The output folder is checked first (it must be creatable and writable, and must not already hold a
    checkpoint unless resuming), then ``sampler.check_data()`` reads every data file; only then does rank 0
    write ``out_dir/config.json`` (kept on resume).  Batches come from ``sampler.batch``; the exported model
    file carries ``config.network``, ``sampler.preprocessing``, the training patch as its sliding window and
    what it records about its training: task, iterations, seed and the whole config, plus the trainer's ``info``.
    """
    from ..inference.window import WindowConfig
    from ..io import check_output_location, ensure_folder
    from ..models.model_file import save_model
    from .config import config_to_dict, save_config

    window = WindowConfig(patch=config.data.patch_size) if config.data.patch_size else WindowConfig()
    training = {"task": config.task, "iterations": config.loop.iterations, "seed": config.loop.seed, **(info or {}),
                "config": config_to_dict(config)}
    out = Path(out_dir)
    check_output_location(out, folder=True)
    if (out / CHECKPOINT_NAME).exists() and not resume:
        raise InputError("already holds a training checkpoint; pass --resume to continue it or choose another --out",
                         out)
    sampler.check_data()
    if config.loop.init:
        load_initial_weights(build_model(), config.loop.init)  # a bad init file fails before anything is written
    if os.environ.get("RANK", "0") == "0":
        ensure_folder(out)
        if not (resume and (out / "config.json").exists()):
            save_config(config, out / "config.json")

    def export(model: nn.Module, path: Path) -> Path:
        return save_model(path, model, config.network, preprocessing=sampler.preprocessing, inference=window,
                          training=training)

    job = TrainingJob(build_model=build_model, make_batch=sampler.batch, loss=loss, export=export,
                      config=config_to_dict(config), loop=config.loop, optimizer=config.optimizer,
                      meta={"classes": list(classes), "preprocessing": sampler.preprocessing.to_dict()})
    return run_training(job, out, resume=resume, device=device, progress=progress)


class Sampler:
    """Base of the trainers' samplers: ``sample(k) -> (input, target)`` is a pure function of ``(loop.seed, k)``;
    :meth:`batch` stacks the samples of a step (the ``make_batch`` of a :class:`TrainingJob`)."""

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = zip(*(self.sample(k) for k in indices), strict=True)
        return torch.stack(inputs), torch.stack(targets)


def make_optimizer(model: nn.Module, config: OptimizerConfig, iterations: int) -> tuple[Any, Any]:
    """AdamW and the poly learning-rate scheduler ``lr·(1 − i/N)^power`` stepped once per iteration."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(poly_factor, total=iterations, power=config.poly_power)
    )
    return optimizer, scheduler


def load_initial_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Start ``model`` from the weights of the model file ``path`` (``loop.init``); they must fit exactly."""
    from ..models.model_file import load_model

    source = load_model(path).network
    try:
        model.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:160]
        raise InputError(f"loop.init: its network differs from the config's ({first})", path) from error


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _trim_log(path: Path, iteration: int) -> None:
    """Keep the log lines of steps ≤ ``iteration`` (drops what a killed run wrote after its checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("iteration", 0) <= iteration:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
    with atomic_file(path, "w") as handle:
        handle.write("".join(f"{line}\n" for line in kept))


def _append(path: Path, entry: Mapping[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()


def run_training(
    job: TrainingJob,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """Run (or resume) a training job; returns the path of the exported model (``out_dir/model.pt``).

    Raises
    ------
    InputError
        ``out_dir`` already holds a checkpoint and ``resume`` is False (nothing is overwritten), or
        the checkpoint cannot be read.
    """
    out = Path(out_dir)
    loop = job.loop
    device = resolve_device(device)
    info = ddp.init_from_env(device)
    device = ddp.process_device(device, info)
    ckpt_path, log_path, model_path = out / CHECKPOINT_NAME, out / LOG_NAME, out / MODEL_NAME
    if ckpt_path.exists() and not resume:
        raise InputError("already holds a training checkpoint; pass --resume to continue it or choose another --out",
                         out)
    if info.is_main:
        ensure_folder(out)
        clear_stale_temps(out)  # left by a process killed while saving
    if loop.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    seed_everything(loop.seed)
    model = job.build_model().to(device)
    optimizer, scheduler = make_optimizer(model, job.optimizer, loop.iterations)
    seed_everything(loop.seed + 7919 * info.rank)  # per-process dropout streams
    start = 0
    state = load_latest_checkpoint(out, map_location=device) if resume else None
    if state is not None:
        start = restore_training_state(state, model, optimizer, scheduler, rank=info.rank)
    elif loop.init:
        load_initial_weights(model, loop.init)
    if resume:
        if info.is_main:
            _trim_log(log_path, start)  # no checkpoint yet: the steps a killed run logged are redone from 0
    ddp.barrier(info)
    net = ddp.wrap_model(model, info, device)
    net.train()

    from tqdm.auto import tqdm

    bar = tqdm(total=loop.iterations, initial=start, disable=not (progress and info.is_main), unit="it",
               desc="training", dynamic_ncols=True)
    began = time.monotonic()
    window: list[dict[str, float]] = []
    timing = {"generation": 0.0, "training": 0.0}  # seconds spent making batches / in the step, this log window
    for step in range(start, loop.iterations):
        indices = ddp.sample_indices(step, loop.batch_size, info)
        tick = time.perf_counter()
        inputs, targets = job.make_batch(indices)
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        timing["generation"] += time.perf_counter() - tick
        tick = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        outputs = net(inputs)
        loss, parts = job.loss(outputs, targets, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        timing["training"] += time.perf_counter() - tick
        done = step + 1
        window.append({"loss": float(loss.detach()), **parts})
        bar.update(1)
        if done % loop.log_every == 0 or done == loop.iterations:
            means = {k: ddp.mean_across(float(np.mean([w[k] for w in window])), info) for k in window[0]}
            samples = ddp.all_gather(indices, info)
            rates = {f"{k}_samples_per_s": round(len(window) * loop.batch_size / max(v, 1e-9), 3)
                     for k, v in timing.items()}  # per process
            window, timing = [], dict.fromkeys(timing, 0.0)
            if info.is_main:
                bar.set_postfix(loss=f"{means['loss']:.4f}", gen=f"{rates['generation_samples_per_s']:.1f}/s",
                                train=f"{rates['training_samples_per_s']:.1f}/s")
                _append(log_path, {"iteration": done, **means, "lr": lr, "seconds": round(time.monotonic() - began, 3),
                                   **rates, "samples": samples})
        if done % loop.checkpoint_every == 0 or done == loop.iterations:
            rng = ddp.all_gather(capture_rng(), info)
            if info.is_main:
                save_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, iteration=done,
                                config=job.config, meta=job.meta, rng=rng)
            ddp.barrier(info)
    bar.close()
    digests = ddp.all_gather(ddp.state_digest(model), info)
    if info.is_main:
        job.export(model, model_path)
        _append(log_path, {"iteration": loop.iterations, "event": "finished", "replica_digests": digests,
                           "world_size": info.world_size, "seconds": round(time.monotonic() - began, 3)})
    ddp.barrier(info)
    ddp.shutdown(info)
    return model_path
