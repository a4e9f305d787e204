"""``qmricore demo``: every preset simulated from the shipped sample map set, plus one montage PNG.

For each preset of :func:`qmricore.protocols.preset_names` the demo writes the noise-free image
``<preset>.nii.gz`` and a noisy one ``<preset>_snr<SNR>.nii.gz`` (Rician noise, SNR relative to the
mean white-matter signal, seeded), all on the grid of the sample maps, then ``montage.png`` (the mid
axial slice of every noise-free image and of the PD, R1, R2* and MT maps) and ``demo.json`` (what was
simulated with which parameters, seeds and timings, so any image can be reproduced).

The montage is in the radiological convention: anterior up, the patient's right on the image's left.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..devices import DEVICE_CHOICES

DEFAULT_SNR = 30.0
DEFAULT_SEED = 0
MONTAGE = "montage.png"
MANIFEST = "demo.json"
PERCENTILES = (1.0, 99.5)  # display window of each montage panel
MAP_PANELS = (("pd", "PD (percent water)"), ("r1", "R1 (1/s)"), ("r2s", "R2* (1/s)"), ("mt", "MT (p.u.)"))



def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="simulate every preset from the shipped sample maps and draw a montage",
        description="Load the shipped sample map set (Resources/SampleData, or $QMRI_SAMPLE_DATA), simulate every "
                    "preset noise-free and with Rician noise, and write one NIfTI per image, montage.png and "
                    "demo.json into --out.")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--snr", type=float, default=DEFAULT_SNR,
                        help="SNR of the noisy images, relative to the mean white-matter signal (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="noise seed of the first preset; preset i uses seed + i (default: %(default)s)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="where to compute; auto = cuda when available (default: %(default)s)")
    parser.set_defaults(run=run)


def format_parameters(params: dict[str, Any]) -> str:
    """Sequence parameters as a short title line: times in ms, angles in degrees."""
    parts = []
    for key, label in (("tr", "TR"), ("te", "TE"), ("ti", "TI"), ("ti2", "TI2")):
        if key in params:
            parts.append(f"{label} {params[key] * 1000:g}")
    text = "/".join(p.split()[0] for p in parts) + " " + "/".join(p.split()[1] for p in parts) + " ms"
    flips = [f"{params[k]:g}°" for k in ("flip", "flip2") if k in params]
    return text + (f", {'/'.join(flips)}" if flips else "")


def add_noise(clean: np.ndarray, snr: float, seed: int, reference: np.ndarray, device: str) -> np.ndarray:
    """Rician noise on a noise-free image, exactly as ``simulate(..., snr=snr, seed=seed, reference=reference)``
    adds it (sigma from the mean signal in ``reference``, a generator on ``device`` seeded with ``seed``),
    without computing the signal a second time.
    """
    import torch

    from ..physics import noise_sigma, rician_noise

    signal = torch.as_tensor(np.asarray(clean), device=device)
    sigma = noise_sigma(signal, snr, torch.as_tensor(reference, dtype=torch.bool, device=device))
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return rician_noise(signal, sigma, generator).cpu().numpy()


def display_slice(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The mid axial slice as a 2D array ready for ``imshow(origin="upper")`` in radiological convention.

    The volume is first reoriented to RAS+ (so this works for any voxel order), then rows run from
    anterior (top) to posterior and columns from the patient's right (left of the image) to left.
    """
    import nibabel as nib

    ras = nib.orientations.apply_orientation(volume, nib.orientations.io_orientation(affine))
    axial = ras[:, :, ras.shape[2] // 2]
    # axial[i, j]: i grows towards the patient's right (RAS: +x), j towards anterior (+y).
    # Rows: anterior first -> reverse j; columns: the patient's right first -> reverse i.
    return axial[::-1, ::-1].T


def _window(panel: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(panel, PERCENTILES)
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


def draw_montage(panels: list[tuple[str, np.ndarray]], affine: np.ndarray, path: Path) -> Path:
    """Save a grid of mid-axial slices, each windowed to its own 1st-99.5th percentile, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), facecolor="black")
    for ax in np.ravel(axes):
        ax.set_axis_off()
    for ax, (title, volume) in zip(np.ravel(axes), panels, strict=False):
        image = display_slice(volume, affine)
        low, high = _window(image)
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest", origin="upper")
        ax.set_title(title, color="white", fontsize=9)
        ax.text(0.02, 0.5, "R", color="yellow", fontsize=8, transform=ax.transAxes, va="center")
        ax.text(0.98, 0.5, "L", color="yellow", fontsize=8, transform=ax.transAxes, va="center", ha="right")
    fig.suptitle("qmricore demo: mid axial slice, anterior up, radiological (patient's right on the left)",
                 color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    from ..io import atomic_file, ensure_folder

    ensure_folder(path.parent)
    try:
        with atomic_file(path) as stream:
            fig.savefig(stream, format="png", dpi=100, facecolor="black")
    finally:
        plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    import nibabel as nib

    from ..devices import resolve_device
    from ..errors import ParameterError
    from ..io import atomic_file, check_outputs, load_map_set, write_nifti
    from ..physics import simulate
    from ..protocols import preset, preset_names
    from ..sample_data import LABEL_FILE, LABELS, sample_dir
    from .simulate import slugify

    if not args.snr > 0:
        raise ParameterError(f"--snr must be > 0, got {args.snr:g}")
    device = str(resolve_device(args.device))
    folder = sample_dir()
    map_set = load_map_set(folder=folder)
    labels = np.asarray(nib.load(str(folder / LABEL_FILE)).dataobj)
    reference = labels == LABELS["wm"]
    # Every sequence gives 0 where PD is 0, so only the head's voxels are simulated (a quarter of the grid).
    head = map_set.maps["pd"] > 0
    inside = {key: value[head] for key, value in map_set.maps.items()}
    out = Path(args.out)
    names = [slugify(name) for name in preset_names()]
    outputs = [out / f"{stem}{tail}.nii.gz" for stem in names for tail in ("", f"_snr{args.snr:g}")]
    check_outputs([*outputs, out / MONTAGE, out / MANIFEST], [*map_set.files.values(), folder / LABEL_FILE],
                  folders=[out])
    print(f"sample maps: {folder} ({' x '.join(map(str, map_set.reference.shape))}); device {device}")

    manifest: dict[str, Any] = {"sample": str(folder), "snr": args.snr, "snr_reference": "white matter (label 2)",
                                "device": device, "images": []}
    panels = []
    total = time.perf_counter()
    for index, name in enumerate(preset_names()):
        sequence, params = preset(name)
        seed = args.seed + index
        start = time.perf_counter()
        clean = np.zeros(head.shape, dtype=np.float32)
        clean[head] = simulate(sequence, inside, device=device, **params)
        noisy = add_noise(clean, args.snr, seed, reference, device)
        seconds = time.perf_counter() - start
        stem = slugify(name)
        clean_path = write_nifti(out / f"{stem}.nii.gz", clean, map_set.reference)
        noisy_path = write_nifti(out / f"{stem}_snr{args.snr:g}.nii.gz", noisy, map_set.reference)
        print(f"{name} ({sequence}, {format_parameters(params)}): {seconds:.2f} s")
        print(f"  {clean_path}")
        print(f"  {noisy_path}")
        manifest["images"].append({"preset": name, "sequence": sequence, "parameters": params,
                                   "file": clean_path.name, "noisy_file": noisy_path.name, "seed": seed,
                                   "seconds": round(seconds, 4)})
        panels.append((f"{name}\n{format_parameters(params)}", np.asarray(clean)))
    for key, title in MAP_PANELS:
        if key in map_set.maps:
            panels.append((title, map_set.maps[key]))
    montage = draw_montage(panels, map_set.reference.affine, out / MONTAGE)
    print(f"montage {montage}")
    manifest["montage"] = montage.name
    manifest_path = out / MANIFEST
    with atomic_file(manifest_path, "w") as stream:
        stream.write(json.dumps(manifest, indent=2) + "\n")
    print(f"manifest {manifest_path}")
    print(f"done in {time.perf_counter() - total:.1f} s")
    return 0
