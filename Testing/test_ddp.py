"""``torchrun`` with 2 CPU processes (gloo): DDP training shards the samples, rank 0 writes, replicas agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from qmricore.training.distributed import DistInfo, sample_indices, state_digest

TORCHRUN = Path(sys.executable).with_name("torchrun")
QMRICORE = Path(sys.executable).with_name("qmricore")


def test_sample_indices_shard_like_a_distributed_sampler() -> None:
    world = [DistInfo(rank=r, world_size=3) for r in range(3)]
    seen = [k for step in range(4) for info in world for k in sample_indices(step, 2, info)]
    assert sorted(seen) == list(range(24))  # every index once, none twice
    assert sample_indices(1, 2, world[2]) == [10, 11]
    assert sample_indices(5, 1, DistInfo()) == [5]


@pytest.mark.slow
@pytest.mark.skipif(not (TORCHRUN.exists() and QMRICORE.exists()), reason="needs the torchrun and qmricore scripts")
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    grid = np.indices((16, 16, 16))
    for i in range(4):
        mask = ((grid - rng.integers(5, 11, 3)[:, None, None, None]) ** 2).sum(0) <= 9
        image = (1.0 + 2.0 * mask + 0.3 * rng.standard_normal(mask.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "images" / f"s{i}.nii.gz")
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), tmp_path / "labels" / f"s{i}.nii.gz")
    config = {
        "task": "seg",
        "network": {"classes": "binary", "channels": [4, 8], "dropout": 0.1},
        "data": {"mode": "real", "real_images": "images", "real_labels": "labels", "patch_size": [16, 16, 16]},
        "optimizer": {"lr": 0.003},
        "loop": {"iterations": 6, "checkpoint_every": 3, "log_every": 1, "seed": 2},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--no-python", str(QMRICORE), "train-seg",
         "--config", str(tmp_path / "cfg.json"), "--out", str(out), "--device", "cpu", "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model:") == 1  # only rank 0 reports (and writes)

    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt", "config.json", "model.pt",
                                                  "train_log.jsonl"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert [e["iteration"] for e in steps] == [1, 2, 3, 4, 5, 6]  # one line per step: rank 0 alone logs
    assert [e["samples"] for e in steps[:2]] == [[[0], [1]], [[2], [3]]]  # rank r trains on 2i + r
    finished = log[-1]
    assert finished["event"] == "finished" and finished["world_size"] == 2
    rank0, rank1 = finished["replica_digests"]
    assert rank0 == rank1  # gradients were averaged: bit-identical replicas

    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 6 and len(state["rng"]) == 2  # both processes' random states
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # separate dropout streams

    from qmricore.models.model_file import load_model

    model = load_model(out / "model.pt").network
    assert state_digest(model) == rank0


@pytest.mark.slow
@pytest.mark.skipif(not (TORCHRUN.exists() and QMRICORE.exists()), reason="needs the torchrun and qmricore scripts")
def test_torchrun_trains_the_mwf_cnn_on_two_cpu_processes(tmp_path: Path) -> None:
    """train-mwf through the same loop under DDP: samples sharded, rank 0 writes, replicas bit-identical."""
    labels = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
    config = {"task": "mwf", "network": {"n_echoes": 8, "width": 4, "context_layers": 1, "voxel_layers": 0},
              "data": {"labels": str(next(labels.glob("*labels.nii.gz"))), "patch_size": [8, 8, 8]},
              "loop": {"iterations": 2, "batch_size": 1, "checkpoint_every": 2, "log_every": 1, "seed": 4}}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--no-python", str(QMRICORE), "train-mwf",
         "--config", str(tmp_path / "cfg.json"), "--out", str(out), "--device", "cpu", "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model:") == 1
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["samples"] for e in log if "loss" in e] == [[[0], [1]], [[2], [3]]]
    rank0, rank1 = log[-1]["replica_digests"]
    assert rank0 == rank1 and log[-1]["world_size"] == 2
