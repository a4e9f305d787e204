"""CNN MWF estimator: normalisation, slab-wise inference, the model file, SynthMap training samples, training and
resume through the shared loop, and ``qmricore mwf --method cnn`` on a real NIfTI series."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from qmricore.cli import main
from qmricore.datasets import sample_seed
from qmricore.generators.synthmap import apply_synthmap, draw_synthmap
from qmricore.models.model_file import load_model, read_meta, save_model
from qmricore.models.networks import MWFNetConfig, build_mwf_net
from qmricore.mwf import cnn
from qmricore.sample_data import LABEL_FILE, sample_dir
from qmricore.training.config import MWFTrainConfig, config_from_dict, load_config
from qmricore.training.mwf import MWFSampler, train_mwf

LABELS = sample_dir() / LABEL_FILE


def _model(tmp_path: Path, **options: object) -> Path:
    config = MWFNetConfig(**{"n_echoes": 8, "width": 6, "context_layers": 2, "voxel_layers": 1, **options})
    torch.manual_seed(0)
    return save_model(tmp_path / "mwf.pt", build_mwf_net(config), config)


def _config(tmp_path: Path, **loop: object) -> MWFTrainConfig:
    return config_from_dict({"task": "mwf", "network": {"n_echoes": 8, "width": 4, "context_layers": 1},
                             "data": {"labels": str(LABELS), "patch_size": [8, 8, 8]},
                             "loop": {"iterations": 4, "batch_size": 2, "checkpoint_every": 2, "log_every": 1,
                                      **loop}})


def test_normalise_echoes_divides_each_train_by_its_mean_and_keeps_empty_voxels_zero() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((8, 3, 4, 5)).astype(np.float32))
    x[:, 0, 0, 0] = 0.0
    y = cnn.normalise_echoes(x)
    assert torch.all(y[:, 0, 0, 0] == 0)
    torch.testing.assert_close(y.mean(0)[x.mean(0) > 0], torch.ones(3 * 4 * 5 - 1))
    scale = torch.from_numpy(rng.uniform(0.1, 10.0, (1, 3, 4, 5)).astype(np.float32))
    torch.testing.assert_close(cnn.normalise_echoes(x * scale), y)  # PD and receive gain drop out


def test_slab_inference_equals_one_pass_and_respects_the_mask(tmp_path: Path) -> None:
    model = load_model(_model(tmp_path))
    rng = np.random.default_rng(2)
    echoes = rng.uniform(0.5, 2.0, (7, 6, 2 * cnn.SLAB + 5, 8)).astype(np.float32)
    echoes[0, 0, 0] = 0.0
    mask = np.ones(echoes.shape[:3], dtype=bool)
    mask[1, 1, 1] = False
    done: list[int] = []
    out = cnn.estimate_mwf(echoes, 0.01, model, mask=mask, progress=done.append)
    with torch.inference_mode():
        x = cnn.normalise_echoes(torch.from_numpy(np.moveaxis(echoes, 3, 0).copy()))
        whole = model.network(x[None])[0, 0].numpy()
    whole[0, 0, 0] = whole[1, 1, 1] = 0.0
    np.testing.assert_allclose(out, whole, atol=1e-6)
    assert sum(done) == echoes.shape[2] and len(done) == 3
    assert 0.0 <= out.min() and out.max() <= model.meta.network.mwf_max


def test_protocol_and_kind_are_checked(tmp_path: Path) -> None:
    from qmricore.errors import InputError

    model = load_model(_model(tmp_path))
    echoes = np.ones((2, 2, 2, 8), np.float32)
    with pytest.raises(InputError, match="serves 8 echoes; the series has 6"):
        cnn.estimate_mwf(echoes[..., :6], 0.01, model)
    with pytest.raises(InputError, match="serves an echo spacing of 0.01 s; --te is 0.011 s"):
        cnn.estimate_mwf(echoes, 0.011, model)
    cnn.estimate_mwf(echoes, 0.01 * (1 + cnn.TE_TOLERANCE / 2), model)  # rounding in a header is fine


def test_model_file_round_trip(tmp_path: Path) -> None:
    path = _model(tmp_path, te=0.008, width=5)
    meta = read_meta(path)
    assert meta.kind == "mwf" and meta.classes == ("mwf",)
    assert meta.network == MWFNetConfig(n_echoes=8, te=0.008, width=5, context_layers=2, voxel_layers=1)


def test_training_config_defaults_and_errors(tmp_path: Path) -> None:
    from qmricore.errors import InputError

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"task": "mwf", "data": {"labels": "anatomy"}}))
    config = load_config(path)
    assert config.data.labels == str(tmp_path / "anatomy") and config.network == MWFNetConfig()
    assert config.loop.batch_size == 4 and config.optimizer.lr == 1e-3
    path.write_text(json.dumps({"task": "mwf", "data": {"labels": "a", "snr_range": [80, 30]}}))
    with pytest.raises(InputError, match="snr_range must satisfy 0 < low <= high"):
        load_config(path)
    path.write_text(json.dumps({"task": "mwf", "data": {"labels": "a", "sequences": ["gre"]}}))
    with pytest.raises(InputError, match="unknown keys"):
        load_config(path)


def test_a_training_sample_is_the_synthmap_truth_of_a_brain_block(tmp_path: Path) -> None:
    config = _config(tmp_path)
    sampler = MWFSampler(config)
    inputs, targets = sampler.sample(3)
    again = sampler.sample(3)
    torch.testing.assert_close(inputs, again[0])
    torch.testing.assert_close(targets, again[1])
    assert inputs.shape == (8, 8, 8, 8) and targets.shape == (2, 8, 8, 8)
    brain = targets[1] > 0
    assert brain.any()
    torch.testing.assert_close(inputs.mean(0)[brain], torch.ones(int(brain.sum())))
    assert 0.0 <= float(targets[0].min()) and float(targets[0][brain].max()) > 0.02  # some myelin in the block
    # the same labels and draw through SynthMap give the same truth
    rng = np.random.default_rng(sample_seed(0, 3))
    block = sampler._block(rng)
    draw = draw_synthmap(sampler.priors, torch.Generator().manual_seed(int(rng.integers(0, 2**62))), sampler.synthmap)
    truth = apply_synthmap(block, draw, sampler.priors, sampler.synthmap, noise=False).mwf
    np.testing.assert_array_equal(targets[0].numpy(), truth)


def test_training_resumes_exactly(tmp_path: Path) -> None:
    run = tmp_path / "run"
    whole = train_mwf(_config(tmp_path), run, progress=False)
    first = torch.load(whole, weights_only=True)["state_dict"]
    # back to the step-2 checkpoint the loop keeps as checkpoint.prev.pt, as if killed after it
    (run / "checkpoint.prev.pt").replace(run / "checkpoint.pt")
    whole.unlink()
    again = train_mwf(_config(tmp_path), run, resume=True, progress=False)
    resumed = torch.load(again, weights_only=True)["state_dict"]
    assert first.keys() == resumed.keys() and all(torch.equal(first[k], resumed[k]) for k in first)
    assert read_meta(whole).kind == "mwf"
    assert [json.loads(line)["iteration"] for line in (run / "train_log.jsonl").read_text().splitlines()][:4] == \
        [1, 2, 3, 4]


def test_cli_cnn_writes_mwf_on_the_input_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path)
    rng = np.random.default_rng(4)
    data = rng.uniform(0.5, 2.0, (5, 4, 3, 8)).astype(np.float32)
    affine = np.array([[0.9, 0.1, 0.0, -10.0], [-0.1, 0.9, 0.0, 5.0], [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "me.nii.gz"))
    out = tmp_path / "out"
    assert main(["mwf", "--input", str(tmp_path / "me.nii.gz"), "--te", "0.01", "--method", "cnn",
                 "--model", str(model), "--out", str(out), "--device", "cpu", "--progress-lines"]) == 0
    assert [p.name for p in out.iterdir()] == ["MWF.nii.gz"]
    image = nib.load(str(out / "MWF.nii.gz"))
    np.testing.assert_allclose(image.affine, affine, atol=1e-6)
    np.testing.assert_allclose(image.get_fdata(), cnn.estimate_mwf(data, 0.01, load_model(model)), atol=1e-6)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "PROGRESS 0.0000 fitting 3 slice(s)" and "PROGRESS 1.0000 done" in lines
    assert json.loads(lines[-1].removeprefix("RESULT ")) == {"mwf": str(out / "MWF.nii.gz"), "voxels": 60}
