"""``Scripts/lesion_visibility.py``: the oracle threshold Dice is 1 for a lesion brighter than everything around
it, near the lesion's share for one lost in noise, and the script runs on a real training config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Scripts"))
from lesion_visibility import oracle_dice  # noqa: E402


def test_oracle_dice_separates_visible_from_invisible_lesions() -> None:
    rng = np.random.default_rng(0)
    brain = np.ones((20, 20, 20), bool)
    lesion = np.zeros_like(brain)
    lesion[5:11, 5:11, 5:11] = True  # 2.7 % of the voxels
    noise = rng.normal(0, 1, brain.shape)
    assert oracle_dice(noise + 10 * lesion, lesion, brain) == 1.0
    assert oracle_dice(noise - 10 * lesion, lesion, brain) == 1.0  # darker works too
    assert oracle_dice(noise, lesion, brain) < 0.1  # lost in the noise: the best threshold finds ~nothing


def test_script_runs_on_a_training_config(tmp_path: Path) -> None:
    config = {"task": "seg", "network": {"classes": "binary", "channels": [4, 8]},
              "data": {"mode": "qsynth",
                       "labels": str(ROOT / "Resources" / "TrainingAnatomy" / "head_0000_labels.nii.gz"),
                       "sequences": ["flair"], "patch_size": [32, 32, 32],
                       "generator": {"lesion_prob": 1.0, "lesion_focus_prob": 1.0}},
              "loop": {"iterations": 1}}
    (tmp_path / "c.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, str(ROOT / "Scripts" / "lesion_visibility.py"), str(tmp_path / "c.json"),
                           "-n", "3", "--set", "generator.clinical_prob=1.0"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("oracle threshold Dice over ")
