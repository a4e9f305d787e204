"""Training: config defaults and files, poly LR, loss schedules, atomic checkpoints, learning, exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qmricore.errors import InputError
from qmricore.models.networks import SegmenterConfig, build_segmenter
from qmricore.training import checkpoint as ckpt
from qmricore.training.config import (
    EstimatorLossConfig,
    LoopConfig,
    OptimizerConfig,
    SegTrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from qmricore.training.estimator import estimator_loss, loss_phase
from qmricore.training.loop import TrainingJob, make_optimizer, run_training
from qmricore.training.seg import fit_shape, to_classes

TINY = SegmenterConfig(classes="binary", channels=(4, 8), dropout=0.2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread on a shared machine (and results do not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- configuration --------------------------------------------------------------------------------

def test_defaults_live_in_the_config_classes(tmp_path: Path) -> None:
    cfg = config_from_dict({"task": "seg", "data": {"mode": "qsynth", "labels": "labels"}}, base=tmp_path)
    assert (cfg.optimizer.lr, cfg.optimizer.betas, cfg.optimizer.weight_decay) == (1e-4, (0.9, 0.999), 0.01)
    assert cfg.optimizer.poly_power == 0.9 and cfg.loop.batch_size == 1
    assert EstimatorLossConfig().warmup_fraction == 0.1
    assert cfg.data.labels == str(tmp_path / "labels")  # relative paths resolve against the config folder
    path = save_config(cfg, tmp_path / "cfg.json")
    assert config_to_dict(load_config(path)) == config_to_dict(cfg)
    assert not list(tmp_path.glob(".*tmp*"))


def test_bad_configs_are_refused_with_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"task": "seg", "data": {"mode": "qsynth", "labels": "x", "lables": "y"}}))
    with pytest.raises(InputError, match=r"cfg\.json: .*unknown keys \['lables'\]"):
        load_config(path)
    path.write_text(json.dumps({"task": "seg", "data": {"mode": "real"}}))
    with pytest.raises(InputError, match="mode 'real'.*need real_images and real_labels"):
        load_config(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not a readable JSON config"):
        load_config(path)
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.json")


# -- learning-rate and loss schedules -------------------------------------------------------------

def test_poly_learning_rate_follows_the_formula() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer, scheduler = make_optimizer(model, OptimizerConfig(lr=0.5), iterations=10)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.5 * (1 - i / 10) ** 0.9 for i in range(10)]  # eta (1 - i/N)^0.9
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    assert seen[0] == 0.5 and optimizer.param_groups[0]["lr"] == 0.0
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.01


@pytest.mark.parametrize("classes, n", [("binary", 2), ("tissue", 6)])
def test_seg_loss_is_monai_dice_ce_and_lesion_weight_weighs_the_lesion_class(classes: str, n: int) -> None:
    from monai.losses import DiceCELoss

    from qmricore.training.seg import seg_loss

    torch.manual_seed(0)
    logits, targets = torch.randn(2, n, 6, 6, 6), torch.randint(0, n, (2, 1, 6, 6, 6))
    plain = config_from_dict({"task": "seg", "network": {"classes": classes}, "data": {"labels": "x"}})
    reference = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5,
                           smooth_dr=1e-5)(logits, targets)
    torch.testing.assert_close(seg_loss(plain)(logits, targets, 0)[0], reference)
    # weight w on the lesion (last) class: Dice = weighted mean of per-class Dice, CE with class weights
    w = 4.0
    weighted = config_from_dict({"task": "seg", "network": {"classes": classes}, "data": {"labels": "x"},
                                 "loss": {"lesion_weight": w}})
    value, parts = seg_loss(weighted)(logits, targets, 0)
    from monai.losses import DiceLoss

    per_class = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5, smooth_dr=1e-5,
                         reduction="none")(logits, targets).reshape(2, -1).mean(0)
    weights = torch.ones(n - 1)
    weights[-1] = w
    assert parts["dice_loss"] == pytest.approx(float((per_class * weights).sum() / weights.sum()), rel=1e-6)
    class_weight = torch.ones(n)
    class_weight[-1] = w
    ce = torch.nn.functional.cross_entropy(logits, targets[:, 0], weight=class_weight)
    assert parts["ce_loss"] == pytest.approx(float(ce), rel=1e-6)
    assert float(value) == pytest.approx(parts["dice_loss"] + parts["ce_loss"], rel=1e-6)
    with pytest.raises(Exception, match="lesion_weight must be > 0"):
        config_from_dict({"task": "seg", "data": {"labels": "x"}, "loss": {"lesion_weight": 0}})


def test_estimator_loss_is_l2_for_the_first_tenth_then_l1_l2_and_gradients() -> None:
    assert [loss_phase(i, 50, 0.1) for i in (0, 4, 5, 49)] == ["l2", "l2", "l1+l2+gradient", "l1+l2+gradient"]
    config = EstimatorLossConfig(map_scales={"pd": 1.0, "r1": 1.0, "r2s": 1.0, "mt": 1.0})
    loss = estimator_loss(config, iterations=50)
    target = torch.zeros(1, 5, 2, 2, 2)
    target[:, 4] = 1.0  # everything counts
    pred = torch.zeros(1, 4, 2, 2, 2)
    pred[0, 0, 0] = 2.0  # error 2 on the x=0 half of the PD channel: 4 of 32 values
    l2, l1 = 4 * 2.0**2 / 32, 4 * 2.0 / 32
    # forward differences along x: 4 channels x 1 x 2 x 2 = 16 values, 4 of them -2; along y and z all 0
    g2, g1 = (4 * 2.0**2 / 16) / 3, (4 * 2.0 / 16) / 3  # mean over the three axes
    warm, parts = loss(pred, target, 4)
    assert warm.item() == pytest.approx(l2) and parts["phase"] == 0.0
    main, parts = loss(pred, target, 5)
    assert main.item() == pytest.approx(l1 + l2 + g1 + g2) and parts["phase"] == 1.0
    assert (parts["l2"], parts["l1"], parts["grad_l2"], parts["grad_l1"]) == pytest.approx((l2, l1, g2, g1))


# -- data helpers ----------------------------------------------------------------------------------

def test_label_convention_to_classes_and_fit_shape() -> None:
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    assert to_classes(labels, "binary").tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert to_classes(labels, "tissue").tolist() == [0, 1, 2, 3, 4, 0, 5]
    assert to_classes(torch.tensor([0, 1]), "binary", mask=True).tolist() == [0, 1]
    x = torch.arange(4 * 6 * 2).reshape(1, 4, 6, 2)
    out = fit_shape(x, (2, 4, 4), (1, 2, 0))
    assert out.shape == (1, 2, 4, 4)
    assert torch.equal(out[:, :, :, 1:3], x[:, 1:3, 2:6, :]) and out[..., 0].abs().sum() == 0


# -- checkpoints -----------------------------------------------------------------------------------

def _save(path: Path, iteration: int, meta: dict) -> Path:
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = make_optimizer(model, OptimizerConfig(), iterations=10)
    return ckpt.save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, iteration=iteration,
                                config={"task": "seg"}, meta=meta)


def test_a_failing_save_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    path = _save(tmp_path / "checkpoint.pt", 3, {"classes": ["background", "lesion"]})
    before = path.read_bytes()
    # a real failure half-way through torch.save: an object pickle cannot write, after the tensors
    with pytest.raises(Exception, match="pickle|lambda"):
        _save(path, 4, {"classes": ["background", "lesion"], "preprocessing": {"bad": lambda: 0}})
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path)["iteration"] == 3
    # no temporary file left behind; the checkpoint before a save is kept as checkpoint.prev.pt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_a_kill_during_saves_never_leaves_a_torn_checkpoint(tmp_path: Path) -> None:
    script = (
        "import sys, torch\n"
        "from qmricore.training.checkpoint import atomic_torch_save\n"
        "big = torch.arange(4_000_000, dtype=torch.float32)\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    atomic_torch_save({'format': 'x', 'iteration': i, 'w': big + i}, sys.argv[1])\n"
    )
    target = tmp_path / "checkpoint.pt"
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.3)  # several saves in, very likely during one
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9
    state = torch.load(target, weights_only=True)  # a torn zip archive would not load
    assert state["iteration"] >= 1
    assert torch.equal(state["w"], torch.arange(4_000_000, dtype=torch.float32) + state["iteration"])


def test_load_checkpoint_refuses_foreign_files(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(InputError, match="other.pt: not a qmricore training checkpoint"):
        ckpt.load_checkpoint(other)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.pt: not a readable checkpoint"):
        ckpt.load_checkpoint(tmp_path / "junk.pt")


# -- the loop ----------------------------------------------------------------------------------------

class Interrupt(Exception):
    pass


def _toy_job(iterations: int, *, fail_at: int | None = None, lr: float = 1e-2) -> TrainingJob:
    """A trivially learnable task: the lesion is the bright blob; every sample seeded by its index."""
    from monai.losses import DiceCELoss

    from qmricore.models.model_file import save_model

    def make_batch(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if fail_at is not None and indices[0] == fail_at:
            raise Interrupt("stopped")
        images, labels = [], []
        for k in indices:
            g = torch.Generator().manual_seed(1000 + k)
            centre = torch.randint(5, 11, (3,), generator=g)
            grid = torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij"))
            label = ((grid - centre.view(3, 1, 1, 1)) ** 2).sum(0) <= 9
            images.append((label.float() * 2 + 0.3 * torch.randn(16, 16, 16, generator=g))[None])
            labels.append(label.long()[None])
        return torch.stack(images), torch.stack(labels)

    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    return TrainingJob(
        build_model=lambda: build_segmenter(TINY),
        make_batch=make_batch,
        loss=lambda out, target, step: (dice_ce(out, target), {}),
        export=lambda model, path: save_model(path, model, TINY),
        config={"task": "seg"},
        loop=LoopConfig(iterations=iterations, checkpoint_every=4, log_every=1, seed=5),
        optimizer=OptimizerConfig(lr=lr),
        meta={"classes": list(TINY.class_names)},
    )


def test_loss_decreases_on_a_learnable_task_and_the_loop_writes_its_files(tmp_path: Path) -> None:
    model_path = run_training(_toy_job(24), tmp_path, device="cpu", progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) == 24 and np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    assert [e["samples"] for e in log[:3]] == [[[0]], [[1]], [[2]]]
    assert log[-1]["event"] == "finished"
    state = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["iteration"] == 24 and state["classes"] == ["background", "lesion"]
    from qmricore.models.model_file import load_model

    assert load_model(model_path).meta.classes == ("background", "lesion")
    with pytest.raises(InputError, match="already holds a training checkpoint"):
        run_training(_toy_job(24), tmp_path, device="cpu", progress=False)


def test_an_interrupted_run_resumes_to_bit_identical_weights(tmp_path: Path) -> None:
    full = run_training(_toy_job(10), tmp_path / "full", device="cpu", progress=False)
    with pytest.raises(Interrupt):  # fails at step 6, after the checkpoint of step 4 (dropout is on)
        run_training(_toy_job(10, fail_at=6), tmp_path / "cut", device="cpu", progress=False)
    assert ckpt.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["iteration"] == 4
    resumed = run_training(_toy_job(10), tmp_path / "cut", resume=True, device="cpu", progress=False)
    a = torch.load(full, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log if "loss" in e] == list(range(1, 11))  # no step lost or repeated


def test_loop_init_starts_from_a_model_files_weights_and_a_misfit_is_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    from qmricore.models.model_file import load_model, save_model

    first = run_training(_toy_job(4), tmp_path / "first", device="cpu", progress=False)
    job = _toy_job(1, lr=1e-12)  # one step that cannot move the weights measurably
    job = replace(job, loop=replace(job.loop, init=str(first)))
    again = run_training(job, tmp_path / "again", device="cpu", progress=False)
    a, b = load_model(first).network.state_dict(), load_model(again).network.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    fresh = run_training(_toy_job(1, lr=1e-12), tmp_path / "fresh", device="cpu", progress=False)
    c = load_model(fresh).network.state_dict()
    assert not all(torch.allclose(a[k].float(), c[k].float(), atol=1e-6) for k in a)  # init did something
    other = SegmenterConfig(classes="binary", channels=(4, 8, 16))
    wrong = save_model(tmp_path / "wrong.pt", build_segmenter(other), other)
    job = _toy_job(1)
    with pytest.raises(InputError, match="loop.init: its network differs"):
        run_training(replace(job, loop=replace(job.loop, init=str(wrong))), tmp_path / "bad", device="cpu",
                     progress=False)


def test_config_resolves_loop_init_against_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "train.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"task": "seg", "data": {"mode": "qsynth", "labels": "labels.nii.gz"},
                                "loop": {"init": "start.pt"}}))
    assert load_config(path).loop.init == str(path.parent.resolve() / "start.pt")


def test_seg_config_defaults_build_the_spec_network() -> None:
    cfg = SegTrainConfig()
    assert cfg.network.num_res_units == 1 and cfg.network.act == "PRELU" and cfg.network.norm == "INSTANCE"


# -- the data modes and the estimator, on the shipped 2 mm sample anatomy --------------------------

SAMPLE = Path(__file__).resolve().parents[2] / "Resources" / "SampleData"
needs_sample = pytest.mark.skipif(not (SAMPLE / "sample_labels.nii.gz").exists(), reason="needs Resources/SampleData")


@needs_sample
@pytest.mark.parametrize("mode", ["qsynth", "synth", "qatlas"])
def test_synthetic_modes_give_seeded_normalised_patches(mode: str) -> None:
    from qmricore.training.seg import SegSampler

    cfg = config_from_dict({"task": "seg", "network": {"classes": "tissue", "channels": [4, 8]},
                            "data": {"mode": mode, "labels": str(SAMPLE / "sample_labels.nii.gz"),
                                     "map_sets": str(SAMPLE), "patch_size": [24, 20, 16],
                                     "generator": {"lesion_prob": 1.0}, "preprocessing": {"spacing": 2.0}}})
    sampler = SegSampler(cfg)
    image, classes = sampler.sample(5)
    assert image.shape == classes.shape == (1, 24, 20, 16) and classes.dtype == torch.int64
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1) < 1e-3  # z-scored as at inference
    assert set(classes.unique().tolist()) <= set(range(6))
    again, _ = sampler.sample(5)
    other, _ = sampler.sample(6)
    assert torch.equal(image, again) and not torch.equal(image, other)


@needs_sample
def test_min_lesion_contrast_redraws_samples_whose_lesion_is_too_faint() -> None:
    from qmricore.generators.lesions import lesion_contrast
    from qmricore.training.seg import BRAIN_LABELS, LESION_LABEL, SegSampler

    def sampler(threshold: float) -> SegSampler:
        return SegSampler(config_from_dict({
            "task": "seg", "network": {"classes": "tissue", "channels": [4, 8]},
            "data": {"mode": "qsynth", "labels": str(SAMPLE / "sample_labels.nii.gz"), "patch_size": [32, 32, 32],
                     "sequences": ["gre", "fse", "flair"], "min_lesion_contrast": threshold,
                     "generator": {"lesion_prob": 1.0, "lesion_focus_prob": 1.0}, "preprocessing": {"spacing": 2.0}}}))

    def contrasts(s: SegSampler) -> list[float]:
        out = []
        for k in range(12):
            image, classes = s.sample(k)
            lesion = classes[0] == 5
            brain = (classes[0] >= 1) & (classes[0] <= 4)
            c = lesion_contrast(image, lesion, brain) if lesion.any() else None
            if c is not None:
                out.append(c)
        return out

    assert LESION_LABEL == 6 and BRAIN_LABELS.tolist() == [1, 2, 3, 4]
    free, strict = contrasts(sampler(0.0)), contrasts(sampler(1.0))
    assert min(free) < 1.0  # without the criterion some lesions are faint ...
    assert sum(c >= 1.0 for c in strict) > sum(c >= 1.0 for c in free)  # ... with it, more are visible
    with pytest.raises(Exception, match="min_lesion_contrast"):
        sampler(-1.0)


@needs_sample
def test_estimator_trains_and_exports_an_estimator_model(tmp_path: Path) -> None:
    from qmricore.models.model_file import load_model
    from qmricore.training.estimator import train_estimator

    cfg = config_from_dict({"task": "estimator", "network": {"channels": [4, 8]},
                            "data": {"map_sets": str(SAMPLE), "patch_size": [16, 16, 16]},
                            "loop": {"iterations": 3, "log_every": 1, "checkpoint_every": 3}})
    path = train_estimator(cfg, tmp_path, device="cpu", progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [e["phase"] for e in log if "loss" in e] == [0.0, 1.0, 1.0]  # 10 % of 3 steps: only step 0 is L2
    assert all(np.isfinite(e["loss"]) for e in log if "loss" in e)
    # samples/s of generation and of the training step, per log window
    assert all(e["generation_samples_per_s"] > 0 and e["training_samples_per_s"] > 0 for e in log if "loss" in e)
    loaded = load_model(path)
    assert loaded.meta.kind == "estimator" and loaded.meta.classes == ("pd", "r1", "r2s", "mt")


def test_estimator_trains_on_qsynth_subjects_of_label_maps_with_bone_and_air_out_of_the_loss(tmp_path: Path) -> None:
    from qmricore.generators.priors import load_priors
    from qmricore.io import Volume, write_nifti
    from qmricore.training.estimator import EstimatorSampler

    priors = load_priors()
    labels = np.zeros((20, 20, 20), dtype=np.int16)
    labels[2:18, 2:18, 2:18] = priors.label_of("skull")
    labels[4:16, 4:16, 4:16] = priors.label_of("gm")
    labels[7:13, 7:13, 7:13] = priors.label_of("wm")
    write_nifti(tmp_path / "head_labels.nii.gz", labels, Volume(labels, np.diag([2.0, 2, 2, 1]), None, None))
    cfg = config_from_dict({"task": "estimator", "network": {"channels": [4, 8]},
                            "data": {"labels": str(tmp_path), "patch_size": [16, 16, 16],
                                     "augment": {"crop": None, "rotation_deg": 0, "scale": 0, "shear": 0,
                                                 "elastic_prob": 0, "flip_prob": 0}},
                            "loop": {"iterations": 2, "log_every": 1, "checkpoint_every": 2}})
    sampler = EstimatorSampler(cfg)
    image, targets = sampler.sample(0)
    assert image.shape == (1, 16, 16, 16) and targets.shape == (5, 16, 16, 16)
    again_image, again_targets = sampler.sample(0)
    assert torch.equal(image, again_image) and torch.equal(targets, again_targets)  # a function of the index
    assert not torch.equal(targets, sampler.sample(1)[1])  # every sample is a new qSynth subject
    # targets are the painted maps; the loss mask is tissue but not skull or air
    full = EstimatorSampler(config_from_dict({**json.loads(json.dumps(cfg_dict := {
        "task": "estimator", "network": {"channels": [4, 8]},
        "data": {"labels": str(tmp_path), "patch_size": [20, 20, 20],
                 "augment": {"crop": None, "rotation_deg": 0, "scale": 0, "shear": 0, "elastic_prob": 0,
                             "flip_prob": 0}}}))}))
    _, t = full.sample(0)
    mask = t[4].numpy() > 0.5
    np.testing.assert_array_equal(mask, np.isin(labels, [priors.label_of("gm"), priors.label_of("wm")]))
    gm, wm = (labels == priors.label_of("gm")), (labels == priors.label_of("wm"))
    assert float(t[1].numpy()[wm].mean()) > float(t[1].numpy()[gm].mean())  # R1 of WM above GM
    with pytest.raises(Exception, match="either a 'map_sets'"):
        config_from_dict({**cfg_dict, "data": {"labels": str(tmp_path), "map_sets": str(tmp_path)}})


def test_real_fraction_mixes_real_pairs_into_a_synthetic_mode(tmp_path: Path) -> None:
    from qmricore.training.seg import SegSampler

    cfg = config_from_dict({"task": "seg", "data": {"mode": "qsynth", "labels": "l", "real_images": "i",
                                                    "real_labels": "m", "real_fraction": 0.3}}, base=tmp_path)
    kinds = [SegSampler(cfg).source(k)[0] for k in range(400)]
    assert set(kinds) == {"real", "qsynth"} and 0.25 < kinds.count("real") / 400 < 0.35
    assert kinds == [SegSampler(cfg).source(k)[0] for k in range(400)]  # a function of (seed, index)


@needs_sample
def test_qatlas_mode_estimates_maps_from_mprage_with_an_estimator_model(tmp_path: Path) -> None:
    import nibabel as nib

    from qmricore.inference.preprocess import PreprocessConfig
    from qmricore.inference.window import WindowConfig
    from qmricore.io import load_map_set
    from qmricore.models.model_file import save_model
    from qmricore.models.networks import EstimatorConfig, build_estimator
    from qmricore.physics import simulate
    from qmricore.training.seg import SegSampler

    maps = load_map_set(folder=SAMPLE)
    box = (slice(30, 54), slice(40, 64), slice(35, 59))
    mprage = simulate("mprage", {k: v[box] for k, v in maps.maps.items()}, tr=2.3, ti=0.9, tx=0.007, te=0.003,
                      flip=9.0, n=176)
    labels = nib.load(SAMPLE / "sample_labels.nii.gz").get_fdata()[box].astype(np.uint8)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for folder, data in (("mprage", mprage.astype(np.float32)), ("labels", labels)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(data, affine), tmp_path / folder / "s1.nii.gz")
    net = EstimatorConfig(channels=(4, 8))
    save_model(tmp_path / "qatlas.pt", build_estimator(net), net, preprocessing=PreprocessConfig(spacing=2.0),
               inference=WindowConfig(patch=(24, 24, 24)))  # an (untrained) estimator
    cfg = config_from_dict({"task": "seg", "network": {"classes": "tissue", "channels": [4, 8]},
                            "data": {"mode": "qatlas", "estimator": "qatlas.pt", "mprage": "mprage",
                                     "labels": "labels", "patch_size": [16, 16, 16], "sequences": ["gre"]}},
                           base=tmp_path)
    sampler = SegSampler(cfg)
    estimated, label = sampler.map_sets[0]
    assert set(estimated) == {"pd", "r1", "r2s", "mt"} and estimated["pd"].shape == (24, 24, 24)
    assert all(bool((v > 0).all()) for k, v in estimated.items() if k != "mt")  # the physical head: positive
    assert torch.equal(label, torch.from_numpy(labels.astype(np.int64)))
    image, classes = sampler.sample(0)
    assert image.shape == classes.shape == (1, 16, 16, 16) and torch.isfinite(image).all()
