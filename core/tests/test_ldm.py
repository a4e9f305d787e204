"""Mask generator (qmricore.ldm, issue 13): ventricles, training set, autoencoder, conditioning, guidance, DDIM
sampling, sidecars, resume, CLI — all on tiny models and a synthetic brain phantom."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import stats

from qmricore.cli import main
from qmricore.generators.priors import load_priors
from qmricore.ldm.labels import (
    LDM_CLASSES,
    VENTRICLES,
    MaskSet,
    MaskSetConfig,
    change_ventricles,
    grid_affine,
    mode_downsample,
    prepare_anatomy,
    to_classes,
    ventricle_mask,
    ventricle_ml,
)
from qmricore.ldm.models import LDMMasksConfig, build_ldm_masks, null_draw
from qmricore.ldm.sample import SampleRequest, sample_classes, sidecar
from qmricore.models.model_file import load_model, save_model

P = load_priors()
L = {n: P.label_of(n) for n in P.names}
TINY = {"shape": [16, 16, 16], "spacing_mm": 4.0, "reference_ml": 5.0, "ae_channels": [8, 8],
        "unet_channels": [8, 8], "unet_attention": [False, True], "num_head_channels": 8, "norm_num_groups": 4,
        "context_dim": 8}


def phantom(n: int = 32, vent_radius: float = 4.0) -> np.ndarray:
    """A 2 mm brain: CSF shell, GM, WM, two ventricle blobs of CSF in the WM (and a 1-voxel sulcus)."""
    g = np.indices((n, n, n)).astype(float) - (n - 1) / 2
    r = np.sqrt((g**2).sum(0))
    lab = np.zeros((n, n, n), np.int16)
    lab[r <= 14] = L["csf"]
    lab[r <= 13] = L["gm"]
    lab[r <= 10] = L["wm"]
    for side in (-4.5, 4.5):
        lab[np.sqrt((g[0] - side) ** 2 + g[1] ** 2 + g[2] ** 2) <= vent_radius] = L["csf"]
    lab[(np.abs(g[0]) < 0.6) & (g[2] > 8) & (r <= 14)] = L["csf"]  # a thin midline sulcus reaching in from the top
    return lab


def _affine(mm: float = 2.0) -> np.ndarray:
    return np.diag([mm, mm, mm, 1.0])


def _tiny_model(**changes: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_ldm_masks(LDMMasksConfig.from_dict({**TINY, **changes}))


# -- labels ----------------------------------------------------------------------------------------------------

def test_ventricles_are_the_deep_thick_csf_not_the_outer_csf_or_a_thin_sulcus() -> None:
    lab = phantom()
    vent = ventricle_mask(lab, P)
    g = np.indices(lab.shape) - (lab.shape[0] - 1) / 2
    blobs = np.zeros(lab.shape, bool)
    for side in (-4.5, 4.5):
        blobs |= np.sqrt((g[0] - side) ** 2 + g[1] ** 2 + g[2] ** 2) <= 4.0
    truth = blobs & (lab == L["csf"])
    assert not np.any(vent & ~truth)  # neither the outer CSF nor the thin sulcus
    assert (vent & truth).sum() >= 0.9 * truth.sum()  # the opening loses the corners of a digital ball (6 % here)


def test_to_classes_maps_head_tissue_to_background_and_lesion_to_wm() -> None:
    lab = np.array([L["gm"], L["skull"], L["lesion"], L["ventricles"], L["csf"], 0])
    assert to_classes(lab, P).tolist() == [1, 0, 2, 5, 4, 0]


def test_ventricle_change_reaches_the_target_volume_exactly_both_ways() -> None:
    anatomy = prepare_anatomy(phantom(), _affine(), P)
    start = len(anatomy.shrink) * anatomy.voxel_ml
    for target in (0.5 * start, start, 3.0 * start):
        out = change_ventricles(anatomy, target)
        assert ventricle_ml(out, _affine()) == pytest.approx(target, abs=anatomy.voxel_ml / 2)
        assert np.array_equal(out > 0, anatomy.classes > 0)  # only WM <-> ventricle changes
    grown = change_ventricles(anatomy, 3.0 * start)
    assert np.all(grown[anatomy.classes == VENTRICLES] == VENTRICLES)


def test_mode_downsample_takes_the_most_frequent_class_of_each_block() -> None:
    x = np.zeros((4, 2, 2), np.int64)
    x[:2] = 3
    x[0, 0, 0] = 1
    x[2:] = 2
    x[2, 0, 0] = x[2, 0, 1] = x[2, 1, 0] = x[2, 1, 1] = 5  # 4 of 8: tie with 2 -> the lower index
    assert mode_downsample(x, 2).ravel().tolist() == [3, 2]


def test_training_set_spans_the_requested_volumes_and_is_a_pure_function_of_seed_and_index() -> None:
    mask_set = MaskSet([], MaskSetConfig(ventricle_ml_range=(2.0, 20.0), scale=(1.0, 1.0), rotation_deg=0.0),
                       (16, 16, 16), 4.0)
    mask_set.__dict__["anatomies"] = [prepare_anatomy(phantom(), _affine(), P)]
    mask_set.files = ["phantom"]
    a, draw = mask_set.sample(3, seed=7)
    b, _ = mask_set.sample(3, seed=7)
    np.testing.assert_array_equal(a, b)
    volumes = [mask_set.sample(k, seed=1)[0] for k in range(12)]
    measured = [ventricle_ml(v, grid_affine((16, 16, 16), 4.0)) for v in volumes]
    targets = [mask_set.sample(k, seed=1)[1].ventricle_ml for k in range(12)]
    assert all(2.0 <= t <= 20.0 for t in targets)
    assert stats.spearmanr(targets, measured).statistic > 0.9  # the 4 mm grid keeps the order of the volumes


# -- networks ----------------------------------------------------------------------------------------------------

def _onehot(classes: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(classes).long()
    return torch.nn.functional.one_hot(t, len(LDM_CLASSES)).permute(0, 4, 1, 2, 3).float()


def test_autoencoder_round_trip_shapes_and_a_one_hot_decode() -> None:
    model = _tiny_model()
    x = _onehot(np.random.default_rng(0).integers(0, 6, (2, 16, 16, 16)))
    z = model.encode(x)
    assert z.shape == (2, *model.config.latent_shape) == (2, 3, 8, 8, 8)
    logits = model.decode(z)
    assert logits.shape == x.shape
    classes = logits.argmax(1)
    decoded = torch.nn.functional.one_hot(classes, 6).permute(0, 4, 1, 2, 3)
    assert torch.all(decoded.sum(1) == 1) and classes.min() >= 0 and classes.max() < 6
    model.freeze_for("autoencoder")
    packed = model(x)
    assert packed.shape == (2, 6 * 16**3 + 1) and torch.all(packed[:, -1] >= 0)  # logits, then KL >= 0


def test_null_condition_is_drawn_in_20_percent_of_training_samples() -> None:
    n, p = 4000, 0.2
    count = int(null_draw(n, p, generator=torch.Generator().manual_seed(0)).sum())
    lo, hi = stats.binom.ppf([0.0005, 0.9995], n, p)  # a 99.9 % interval
    assert lo <= count <= hi
    model = _tiny_model()
    model.freeze_for("diffusion")
    x = _onehot(np.full((50, 16, 16, 16), 5))
    torch.manual_seed(1)
    model(x)
    used = int(model.last_null.sum())
    lo, hi = stats.binom.ppf([0.0005, 0.9995], 50, p)
    assert lo <= used <= hi


def test_condition_vector_is_relative_volume_and_flag_and_zero_when_null() -> None:
    model = _tiny_model()
    cond = model.condition_vector(torch.tensor([5.0, 10.0]), torch.tensor([False, True]))
    assert cond.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    x = _onehot(np.full((1, 16, 16, 16), 5))
    assert float(model.ventricle_ml(x)) == pytest.approx(16**3 * 64 / 1000)


def test_guidance_0_is_the_unconditional_and_1_the_conditional_prediction() -> None:
    model = _tiny_model().eval()
    for p in model.unet.parameters():  # a random, non-trivial UNet (MONAI zero-initialises some output layers)
        torch.nn.init.normal_(p, std=0.2)
    z = torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500])
    cond = model.condition_vector(torch.tensor([3.0, 9.0]))
    with torch.no_grad():
        eps_null = model.eps(z, t, torch.zeros_like(cond))
        eps_cond = model.eps(z, t, cond)
        assert (eps_cond - eps_null).abs().max() > 1e-3  # the condition matters
        torch.testing.assert_close(model.guided_eps(z, t, cond, 0.0), eps_null, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.guided_eps(z, t, cond, 1.0), eps_cond, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.guided_eps(z, t, cond, 4.0), eps_null + 4 * (eps_cond - eps_null),
                                   rtol=1e-4, atol=1e-4)


def test_ddim_sampling_shapes_and_determinism_per_seed() -> None:
    model = _tiny_model().eval()
    request = SampleRequest(ventricle_ml=5.0, n=2, seed=3, steps=4)
    a = sample_classes(model, request)
    assert a.shape == (2, 16, 16, 16) and a.dtype == np.int64 and a.min() >= 0 and a.max() < 6
    np.testing.assert_array_equal(a, sample_classes(model, request))
    one = sample_classes(model, SampleRequest(ventricle_ml=5.0, n=1, seed=3, steps=4), first=1)
    np.testing.assert_array_equal(one[0], a[1])  # sample i does not depend on n


def test_sample_request_refuses_bad_values_by_message() -> None:
    from qmricore.errors import ParameterError

    for kwargs, message in (({"ventricle_ml": 0.0}, "--ventricle-ml must be > 0"),
                            ({"ventricle_ml": 1.0, "n": 0}, "-n must be >= 1"),
                            ({"ventricle_ml": 1.0, "guidance": -1.0}, "--guidance must be >= 0")):
        with pytest.raises(ParameterError, match=message):
            SampleRequest(**kwargs)


def test_sidecar_lists_classes_request_and_the_volume_measured_from_the_affine() -> None:
    classes = np.zeros((4, 4, 4), np.int64)
    classes[:2, :2, :2] = VENTRICLES  # 8 voxels
    affine = grid_affine((4, 4, 4), 3.0)  # 27 mm³
    info = sidecar(classes, affine, SampleRequest(ventricle_ml=40.0), 2, P, "m.pt", 50.0)
    assert info["classes"]["ventricles"] == L["ventricles"] and set(info["classes"]) == set(LDM_CLASSES)
    assert info["condition"] == {"ventricle_ml": 40.0, "relative": 0.8}
    assert info["measured_ventricle_ml"] == pytest.approx(8 * 27 / 1000)
    assert info["index"] == 2 and info["guidance"] == 4.0


def test_model_file_round_trip_keeps_weights_and_scale_factor(tmp_path: Path) -> None:
    model = _tiny_model()
    model.scale_factor.fill_(0.37)
    save_model(tmp_path / "m.pt", model, model.config)
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.meta.kind == "ldm_masks" and loaded.meta.classes == LDM_CLASSES
    assert float(loaded.network.scale_factor) == pytest.approx(0.37)


# -- training through the shared loop, and the CLI ------------------------------------------------------------

@pytest.fixture(scope="module")
def anatomy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ldm")
    (root / "labels").mkdir()
    for i, radius in enumerate((3.5, 4.5)):
        nib.save(nib.Nifti1Image(phantom(vent_radius=radius), _affine()), str(root / "labels" / f"b{i}.nii.gz"))
    return root


def _config(root: Path, stage: str, iterations: int, **data: object) -> Path:
    config = {"task": "ldm_masks", "network": TINY,
              "data": {"labels": str(root / "labels"), "ventricle_ml_range": [2.0, 20.0], **data},
              "loss": {"stage": stage}, "optimizer": {"lr": 1e-3},
              "loop": {"iterations": iterations, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "seed": 4}}
    path = root / f"{stage}_{iterations}.json"
    path.write_text(json.dumps(config))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_two_stages_train_resume_exactly_and_sample_through_the_cli(anatomy: Path, capsys) -> None:
    from qmricore.training.config import load_config
    from qmricore.training.ldm import train_ldm_masks

    ae = train_ldm_masks(load_config(_config(anatomy, "autoencoder", 2)), anatomy / "ae", device="cpu",
                         progress=False)
    assert load_model(ae).meta.training["stage"] == "autoencoder"
    diff_cfg = load_config(_config(anatomy, "diffusion", 4, autoencoder=str(ae)))
    straight = train_ldm_masks(diff_cfg, anatomy / "straight", device="cpu", progress=False)
    # a run stopped after step 2 (its checkpoint), then resumed to step 4, ends with the same weights
    short = load_config(_config(anatomy, "diffusion", 4, autoencoder=str(ae)))
    import dataclasses

    first = dataclasses.replace(short, loop=dataclasses.replace(short.loop, iterations=4))
    from qmricore.training import loop as loop_module

    calls = {"n": 0}
    real = loop_module.save_checkpoint

    def stop_after_first(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    loop_module.save_checkpoint = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            train_ldm_masks(first, anatomy / "resumed", device="cpu", progress=False)
    finally:
        loop_module.save_checkpoint = real
    resumed = train_ldm_masks(first, anatomy / "resumed", resume=True, device="cpu", progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ae_weights = _weights(ae)
    assert all(torch.equal(a[k], ae_weights[k]) for k in a if k.startswith("autoencoder."))  # frozen
    assert float(a["scale_factor"]) != 1.0  # set from the calibration latents

    out = anatomy / "samples"
    status = main(["ldm", "sample", "--model", str(straight), "--ventricle-ml", "6", "-n", "2", "--seed", "1",
                   "--steps", "3", "--out", str(out), "--render", "T1 SPGR"])
    assert status == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["sample_0000.json", "sample_0000_image.nii.gz", "sample_0000_labels.nii.gz",
                     "sample_0001.json", "sample_0001_image.nii.gz", "sample_0001_labels.nii.gz"]
    info = json.loads((out / "sample_0001.json").read_text())
    labels = nib.load(str(out / "sample_0001_labels.nii.gz"))
    data = np.asarray(labels.dataobj)
    assert data.shape == (16, 16, 16) and set(np.unique(data)) <= set(info["classes"].values())
    voxel_ml = abs(np.linalg.det(labels.affine[:3, :3])) / 1000
    assert info["measured_ventricle_ml"] == pytest.approx((data == L["ventricles"]).sum() * voxel_ml)
    assert info["condition"]["ventricle_ml"] == 6.0 and info["render"]["preset"] == "T1 SPGR"
    image = np.asarray(nib.load(str(out / "sample_0001_image.nii.gz")).dataobj)
    assert image.shape == (16, 16, 16) and np.isfinite(image).all()
    assert math.isfinite(info["measured_ventricle_ml"])

    # --progress-lines (what QMRISynth's "Generate brain" follows): a line per denoising step, then RESULT
    capsys.readouterr()
    assert main(["ldm", "sample", "--model", str(straight), "--ventricle-ml", "6", "-n", "2", "--seed", "1",
                 "--steps", "3", "--out", str(anatomy / "followed"), "--progress-lines"]) == 0
    printed = capsys.readouterr().out.splitlines()
    fractions = [float(line.split()[1]) for line in printed if line.startswith("PROGRESS ")]
    assert len(fractions) == 1 + 1 + 2 * 3 + 1 and fractions == sorted(fractions) and fractions[-1] == 1.0
    result = json.loads(next(line for line in printed if line.startswith("RESULT "))[len("RESULT "):])
    assert [Path(s["labels"]).name for s in result["samples"]] == ["sample_0000_labels.nii.gz",
                                                                    "sample_0001_labels.nii.gz"]
    again = json.loads((anatomy / "followed" / "sample_0001.json").read_text())
    assert result["samples"][1]["measured_ventricle_ml"] == again["measured_ventricle_ml"] == \
        info["measured_ventricle_ml"]  # the same seed draws the same brain, followed or not


# -- the SPADE image generator (item 3) --------------------------------------------------------------------------

TINY_IMAGES = {"shape": [16, 16, 16], "spacing_mm": 4.0, "preset": "T1 SPGR", "ae_channels": [8, 8],
               "unet_channels": [8, 8], "unet_attention": [False, True], "num_head_channels": 8, "norm_num_groups": 4,
               "spade_channels": 8}


def test_image_autoencoder_round_trip_and_spade_unet_shapes() -> None:
    from qmricore.ldm.images import LDMImagesConfig, build_ldm_images, sample_image

    torch.manual_seed(0)
    model = build_ldm_images(LDMImagesConfig.from_dict(TINY_IMAGES))
    onehot = _onehot(np.random.default_rng(0).integers(0, 6, (2, 16, 16, 16)))
    image = torch.rand(2, 1, 16, 16, 16)
    z = model.encode(image)
    assert z.shape == (2, 3, 8, 8, 8) and model.decode(z, onehot).shape == image.shape
    assert model.eps(z, torch.tensor([1, 2]), onehot).shape == z.shape
    model.freeze_for("autoencoder")
    assert model(torch.cat([image, onehot], 1)).shape == (2, 16**3 + 1)
    a = sample_image(model.eval(), onehot[:1], seed=2, index=0, steps=3)
    assert a.shape == (16, 16, 16) and np.array_equal(a, sample_image(model, onehot[:1], seed=2, index=0, steps=3))
    other = onehot[:1].roll(3, dims=2)  # the label map conditions the image
    assert not np.allclose(a, sample_image(model, other, seed=2, index=0, steps=3))


def test_image_generator_trains_both_stages_and_sample_writes_its_images(anatomy: Path, capsys) -> None:
    from qmricore.training.config import load_config
    from qmricore.training.ldm import train_ldm_images, train_ldm_masks

    def config(stage: str, **data: object) -> Path:
        path = anatomy / f"img_{stage}.json"
        path.write_text(json.dumps({"task": "ldm_images", "network": TINY_IMAGES,
                                    "data": {"labels": str(anatomy / "labels"), **data}, "loss": {"stage": stage},
                                    "loop": {"iterations": 2, "checkpoint_every": 2, "log_every": 1, "seed": 2}}))
        return path

    ae = train_ldm_images(load_config(config("autoencoder")), anatomy / "img_ae", device="cpu", progress=False)
    images = train_ldm_images(load_config(config("diffusion", autoencoder=str(ae))), anatomy / "img", device="cpu",
                              progress=False)
    masks = anatomy / "masks_for_images"
    train_ldm_masks(load_config(_config(anatomy, "autoencoder", 1)), masks / "ae", device="cpu", progress=False)
    diff = train_ldm_masks(load_config(_config(anatomy, "diffusion", 1, autoencoder=str(masks / "ae" / "model.pt"))),
                           masks / "diff", device="cpu", progress=False)
    out = anatomy / "with_images"
    status = main(["ldm", "sample", "--model", str(diff), "--images", str(images), "--ventricle-ml", "5",
                   "--steps", "2", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    info = json.loads((out / "sample_0000.json").read_text())
    assert info["image"]["preset"] == "T1 SPGR"
    image = np.asarray(nib.load(str(out / "sample_0000_image.nii.gz")).dataobj)
    assert image.shape == (16, 16, 16) and np.isfinite(image).all()


# -- the mask generator's goals (qmricore check-model on an ldm_masks model, item 5) ------------------------------

def test_mask_validity_counts_stray_pieces_and_ventricles_at_the_outside() -> None:
    from qmricore.checks import mask_validity

    classes = np.zeros((12, 12, 12), np.int64)
    classes[2:10, 2:10, 2:10] = LDM_CLASSES.index("wm")  # 512 brain voxels
    classes[4:6, 4:6, 4:6] = LDM_CLASSES.index("ventricles")  # 8 inside
    classes[11, 11, 11] = LDM_CLASSES.index("gm")  # a stray voxel
    v = mask_validity(classes)
    assert v["stray_fraction"] == pytest.approx(1 / 513) and v["ventricle_components"] == 1
    assert v["ventricle_outside_fraction"] == 0.0
    classes[2, 5, 5] = LDM_CLASSES.index("ventricles")  # a second piece, on the brain's surface
    v = mask_validity(classes)
    assert v["ventricle_components"] == 2 and v["ventricle_outside_fraction"] == pytest.approx(1 / 9)


def test_check_model_reports_a_mask_generator_against_its_goals(anatomy: Path, tmp_path: Path, capsys) -> None:
    from qmricore.checks import check_ldm_masks, markdown_report

    model = _tiny_model(timesteps=3)  # a 3-step schedule: the CLI's default 50 DDIM steps become 3
    model.scale_factor.fill_(1.0)
    path = save_model(tmp_path / "g.pt", model, model.config)
    report = check_ldm_masks(path, anatomy / "labels", requests=(3.0, 6.0), per_request=2, steps=3)
    assert [r["requested_ml"] for r in report["ldm_requests"]] == [3.0, 6.0] and len(report["ldm_samples"]) == 4
    for sample in report["ldm_samples"]:
        assert 0 <= sample["nearest_training_dice"] <= 1 and 0 <= sample["stray_fraction"] <= 1
        assert sample["measured_ml"] == pytest.approx(sample["measured_ml"])  # finite
    summary = report["ldm_summary"]
    assert isinstance(summary["monotonic"], bool) and 0 <= summary["training_draws_nearest_dice_median"] <= 1
    # a training draw of the anatomy itself sits close to its undeformed version (the copy detector works)
    assert summary["training_draws_nearest_dice_median"] > 0.5
    text = markdown_report(report)
    assert "median relative volume error ≤ 0.20" in text and "Dice to the nearest training mask" in text
    status = main(["check-model", "--model", str(path), "--out", str(tmp_path / "checks"), "--heldout", "1",
                   "--training-labels", str(anatomy / "labels")])
    assert status == 0 and json.loads((tmp_path / "checks" / "checks.json").read_text())["ldm_summary"]["samples"] == 6
