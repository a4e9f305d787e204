"""A real ``qmricore train-seg`` process killed with SIGKILL mid-run resumes to bit-identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_helpers import QMRICORE

ITERATIONS, EVERY = 24, 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _write_pairs(root: Path) -> None:
    """Three 18^3 image/lesion-mask pairs (a bright ball in noise), fully seeded."""
    rng = np.random.default_rng(7)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    grid = np.indices((18, 18, 18))
    for i in range(3):
        centre = rng.integers(6, 12, 3)
        mask = ((grid - centre[:, None, None, None]) ** 2).sum(0) <= rng.integers(3, 5) ** 2
        image = (1.0 + 2.0 * mask + 0.3 * rng.standard_normal(mask.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "images" / f"s{i}.nii.gz")
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), root / "labels" / f"s{i}.nii.gz")


def _config(root: Path) -> Path:
    config = {
        "task": "seg",
        "network": {"classes": "binary", "channels": [4, 8], "dropout": 0.1},
        "data": {"mode": "real", "real_images": "images", "real_labels": "labels", "patch_size": [16, 16, 16],
                 "generator": {"augment": {"elastic_max_voxels": 1.0, "lowres_prob": 0.0}}},
        "optimizer": {"lr": 0.003},
        "loop": {"iterations": ITERATIONS, "checkpoint_every": EVERY, "log_every": 1, "seed": 11},
    }
    path = root / "cfg.json"
    path.write_text(json.dumps(config))
    return path


def _train(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*QMRICORE, "train-seg", "--config", str(config), "--out", str(out), "--device", "cpu",
                             "--no-progress", *extra], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_gives_identical_weights(tmp_path: Path) -> None:
    _write_pairs(tmp_path)
    config = _config(tmp_path)
    reference = _train(config, tmp_path / "full")
    victim = _train(config, tmp_path / "cut")
    checkpoint = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)  # a real kill, right after its first checkpoint
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "cut" / "model.pt").exists()
    done_before_kill = torch.load(checkpoint, weights_only=True)["iteration"]
    assert EVERY <= done_before_kill < ITERATIONS

    out, err = _train(config, tmp_path / "cut", "--resume").communicate(timeout=300)
    assert "model:" in out, err
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err

    a, b = _weights(tmp_path / "full" / "model.pt"), _weights(tmp_path / "cut" / "model.pt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    log = [json.loads(line) for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log if "loss" in e] == list(range(1, ITERATIONS + 1))
    full_log = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [e["loss"] for e in log if "loss" in e] == [e["loss"] for e in full_log if "loss" in e]


def test_resume_without_config_reads_the_run_folder_and_refuses_an_empty_one(tmp_path: Path) -> None:
    result = subprocess.run([*QMRICORE, "train-seg", "--out", str(tmp_path / "nothing"), "--resume"], env=ENV,
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "train-seg: error:" in result.stderr and "config.json: config file not found" in result.stderr
