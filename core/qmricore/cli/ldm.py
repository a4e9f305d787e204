"""``qmricore ldm``: the guided latent-diffusion mask generator (SPEC §14, seed 002; docs/ldm.md).

    qmricore ldm train-masks --config cfg.json --out runs/ae     [--resume] [--iterations N] [--device cuda]
    qmricore ldm train-images --config cfg.json --out runs/img   [--resume] [--iterations N] [--device cuda]
    qmricore ldm sample --model MASKS.pt --ventricle-ml 40 -n 8 --seed 0 --out DIR [--guidance 4]
                        [--render PRESET | --images IMAGES.pt]

``train-masks`` trains one stage (``loss.stage`` of the config: ``autoencoder``, then ``diffusion`` with
``data.autoencoder`` naming the first stage's model) through the shared loop; ``train-images`` the same for the
SPADE image generator.  ``sample`` writes per sample ``sample_XXXX_labels.nii.gz`` (the class table's label values),
with ``--render`` ``sample_XXXX_image.nii.gz`` (a qSynth subject painted on the labels and the preset simulated,
noise-free) or with ``--images`` the SPADE generator's image of the labels, and ``sample_XXXX.json`` (classes, the
requested condition, the measured ventricle volume in mL, seeds).  Everything is checked before anything is
written.
"""

from __future__ import annotations

import argparse
import os

from ..training.cli_args import add_arguments, read_config
from . import progress_lines
from .progress_lines import ProgressLines

ENDINGS = ("_labels.nii.gz", "_image.nii.gz", ".json")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..ldm.sample import DEFAULT_GUIDANCE, DEFAULT_STEPS

    parser = subparsers.add_parser(
        "ldm", help="latent diffusion: labelled brains with a chosen ventricle volume (train-masks, sample)",
        description="Guided latent diffusion of brain label maps conditioned on ventricle volume (docs/ldm.md).")
    sub = parser.add_subparsers(dest="ldm_command", required=True, metavar="ACTION")
    train = sub.add_parser(
        "train-masks", help="train one stage of the mask generator (autoencoder, then diffusion)",
        description="Train one stage (config loss.stage) of the mask generator on label maps with derived "
                    "ventricles; writes OUT/config.json, OUT/train_log.jsonl, OUT/checkpoint.pt (atomic, resumable) "
                    "and OUT/model.pt.")
    add_arguments(train)
    train.set_defaults(run=run_train, task="ldm_masks")
    images = sub.add_parser(
        "train-images", help="train one stage of the SPADE image generator (autoencoder, then diffusion)",
        description="Train one stage (config loss.stage) of the SPADE image generator on qSynth renderings of "
                    "label maps; writes OUT/config.json, OUT/train_log.jsonl, OUT/checkpoint.pt and OUT/model.pt.")
    add_arguments(images)
    images.set_defaults(run=run_train, task="ldm_images")
    sample = sub.add_parser(
        "sample", help="generate label maps with a requested ventricle volume",
        description="Generate N label maps with a requested ventricle volume (classifier-free guided DDIM), "
                    "optionally rendered as a qSynth image of a preset.")
    sample.add_argument("--model", required=True, metavar="MASKS.pt", help="mask generator model (diffusion stage)")
    sample.add_argument("--ventricle-ml", required=True, type=float, metavar="V", help="ventricle volume in mL")
    sample.add_argument("-n", type=int, default=1, metavar="N", help="number of samples (default 1)")
    sample.add_argument("--seed", type=int, default=0, metavar="S", help="base seed (default 0)")
    sample.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    sample.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                        help="classifier-free guidance scale (default %(default)s; 0: unconditional)")
    sample.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps (default %(default)s)")
    image = sample.add_mutually_exclusive_group()
    image.add_argument("--render", metavar="PRESET", help="also write a qSynth image of this preset per sample")
    image.add_argument("--images", metavar="IMAGES.pt", help="also write the SPADE image generator's image per sample")
    sample.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    sample.add_argument("--replace", action="store_true", help="remove an earlier run's samples in --out first")
    progress_lines.add_argument(sample)
    sample.set_defaults(run=run_sample)


def run_train(args: argparse.Namespace) -> int:
    from ..training.ldm import train_ldm_images, train_ldm_masks

    config = read_config(args, args.task)
    train = train_ldm_masks if args.task == "ldm_masks" else train_ldm_images
    path = train(config, args.out, resume=args.resume, device=args.device, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        print(f"model: {path}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    import numpy as np

    from ..datasets import sample_seed
    from ..devices import resolve_device
    from ..errors import InputError
    from ..generators.priors import load_priors
    from ..io import Volume, atomic_file, check_outputs, write_nifti
    from ..ldm.labels import grid_affine
    from ..ldm.sample import SampleRequest, denoising_steps, labels_of, render, sample_classes, sidecar
    from ..models.model_file import load_model
    from ..protocols import preset
    from .synth import clear_older_samples

    request = SampleRequest(ventricle_ml=args.ventricle_ml, n=args.n, seed=args.seed, guidance=args.guidance,
                            steps=args.steps)
    if args.render is not None:
        preset(args.render)  # an unknown preset fails before the model is read
    device = resolve_device(args.device)
    meta = _generator_meta(args.model, "ldm_masks", "a mask generator")
    config = meta.network
    if args.images:
        image_meta = _generator_meta(args.images, "ldm_images", "an image generator")
        if image_meta.network.shape != config.shape or image_meta.network.spacing_mm != config.spacing_mm:
            raise InputError(f"image generator's grid {list(image_meta.network.shape)} x "
                             f"{image_meta.network.spacing_mm:g} mm differs from the mask generator's "
                             f"{list(config.shape)} x {config.spacing_mm:g} mm", args.images)
    inputs = [args.model, args.images]
    out = Path(args.out)
    outputs = [out / f"sample_{i:04d}{e}" for i in range(args.n) for e in ENDINGS
               if args.render or args.images or e != "_image.nii.gz"]
    check_outputs(outputs, inputs, folders=[out])
    clear_older_samples(out, [p for p in inputs if p], args.replace, ENDINGS)

    lines = ProgressLines(args.progress_lines)
    lines.line(0.0, "loading the generator")
    model = load_model(args.model, device=device).network
    images = load_model(args.images, device=device).network if args.images else None
    priors = load_priors()
    affine = grid_affine(config.shape, config.spacing_mm)
    like = Volume(np.zeros(config.shape, np.float32), affine)
    step = lines.counting(lambda count: None, args.n * denoising_steps(model, request), "denoising step", "running",
                          stop=0.95)
    written = []
    for index in range(args.n):
        classes = sample_classes(model, dataclasses.replace(request, n=1), first=index, progress=step)[0]
        labels = labels_of(classes, priors)
        info = sidecar(classes, affine, request, index, priors, args.model, config.reference_ml)
        write_nifti(out / f"sample_{index:04d}_labels.nii.gz", labels, like)
        if args.render:
            image, drawn = render(labels, args.render, sample_seed(args.seed, index) % 2**31, priors)
            write_nifti(out / f"sample_{index:04d}_image.nii.gz", image, like)
            info["render"] = drawn
        if images is not None:
            import torch

            from ..ldm.images import sample_image

            onehot = torch.nn.functional.one_hot(torch.from_numpy(classes), len(config.classes))
            image = sample_image(images, onehot.permute(3, 0, 1, 2)[None].float(), args.seed, index, args.steps)
            write_nifti(out / f"sample_{index:04d}_image.nii.gz", image, like)
            info["image"] = {"model": str(args.images), "preset": images.config.preset, "steps": args.steps}
        with atomic_file(out / f"sample_{index:04d}.json", "w") as stream:
            stream.write(json.dumps(info, indent=2) + "\n")
        stem = out / f"sample_{index:04d}"
        written.append({"labels": f"{stem}_labels.nii.gz", "sidecar": f"{stem}.json",
                        "measured_ventricle_ml": info["measured_ventricle_ml"],
                        **({"image": f"{stem}_image.nii.gz"} if args.render or images else {})})
        print(f"sample {index}: ventricles {info['measured_ventricle_ml']:.1f} mL (requested {args.ventricle_ml:g})")
    print(f"wrote {args.n} sample(s) to {out}")
    lines.result({"samples": written})
    return 0


def _generator_meta(path: str, kind: str, what: str) -> object:
    """The metadata of a generator model file of ``kind`` trained through its diffusion stage (else InputError)."""
    from ..errors import InputError
    from ..models.model_file import read_meta

    meta = read_meta(path)
    if meta.kind != kind:
        raise InputError(f"a model of kind {meta.kind!r}, not {what} ({kind!r})", path)
    if meta.training.get("stage") == "autoencoder":
        raise InputError("holds the autoencoder stage only; sample with the diffusion stage's model", path)
    return meta
