"""Releases: export from toolbox .pth / Lightning .ckpt / release, load_release round trip, tampering refused."""
from __future__ import annotations

import hashlib
import importlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cassi import CassiOperator
from data.kaist import synthetic_mask
from models import create_model, load_release
from models.release import ReleaseError, open_release, state_dict_sha256
from conftest import shared_path

eval_cli = importlib.import_module("eval")
SIZE = 64


def run_cli(*argv) -> int:
    return eval_cli.main([str(a) for a in argv])


def random_mst_s(tmp_path, seed: int = 0):
    """A randomly initialised MST-S saved like a toolbox checkpoint, and a mask file."""
    torch.manual_seed(seed)
    model = create_model("mst_s").eval()
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "mst_s.pth")
    np.save(tmp_path / "mask.npy", synthetic_mask(SIZE, SIZE, seed=9).numpy())
    return model


@pytest.fixture
def release(tmp_path):
    model = random_mst_s(tmp_path)
    out = tmp_path / "release"
    assert run_cli("export", "--ckpt", tmp_path / "mst_s.pth", "--model", "mst_s", "--mask", tmp_path / "mask.npy",
                   "--out", out) == 0
    return out, model


def reconstruct(model, mask):
    op = CassiOperator(mask)
    y = op(torch.rand(1, 28, SIZE, SIZE, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        return model.reconstruction(model(**model.prepare_inputs(y, op)))


def rewrite_checksums(folder):
    """What a careful forger does after editing a file: recompute SHA256SUMS."""
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
             for p in sorted(folder.iterdir()) if p.name != "SHA256SUMS"]
    (folder / "SHA256SUMS").write_text("".join(lines))


def edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    rewrite_checksums(folder)


# -------------------------------------------------------------------------------------------- round trip
def test_export_then_load_release_gives_the_same_network(release):
    folder, original = release
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "SHA256SUMS", "config.json", "mask.npy",
                                                        "model.safetensors"]
    loaded = load_release(folder)
    assert not loaded.training
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    opened = open_release(folder)
    mask = torch.from_numpy(np.load(folder.parent / "mask.npy"))
    assert torch.equal(opened.mask, mask)
    assert torch.equal(reconstruct(loaded, mask), reconstruct(original, mask))
    config = opened.config
    assert config["model"] == {"name": "mst_s", "kwargs": {"dim": 28, "stage": 2, "num_blocks": [2, 2, 2]}}
    assert config["bands"] == 28 and config["mask"]["shape"] == [SIZE, SIZE]
    assert config["weights"]["state_sha256"] == state_dict_sha256(original.state_dict())
    assert config["source"]["kind"] == "toolbox"
    card = (folder / "README.md").read_text()
    assert "load_release" in card and config["mask"]["sha256"] in card


def test_release_evaluates_with_its_own_mask_and_exports_with_its_metrics(release, tmp_path):
    folder, _ = release
    out = tmp_path / "eval"
    assert run_cli("kaist", "--release", folder, "--synthetic.count", 1, "--previews", 0, "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert results["method"]["name"] == "mst_s"
    assert results["method"]["weights_sha256"] == config["weights"]["state_sha256"]
    assert results["data"]["mask"]["sha256"] == config["mask"]["sha256"]      # the release's mask by default
    assert results["warnings"] == []
    assert np.isfinite(results["mean"]["psnr"])

    with_metrics = tmp_path / "with_metrics"
    assert run_cli("export", "--ckpt", folder, "--results", out / "results.json", "--out", with_metrics) == 0
    opened = open_release(with_metrics)
    assert opened.metrics["mean"] == results["mean"]
    assert f"{results['mean']['psnr']:.4g}" in (with_metrics / "README.md").read_text()


def test_results_of_other_weights_are_not_embedded(release, tmp_path, capsys):
    folder, _ = release
    out = tmp_path / "gap"
    assert run_cli("kaist", "--synthetic.count", 1, "--synthetic.size", 32, "--gap.iterations", 2,
                   "--previews", 0, "--out", out) == 0
    assert run_cli("export", "--ckpt", folder, "--results", out / "results.json", "--out", tmp_path / "r2") == 2
    assert "computed with other weights" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_export_does_not_overwrite_without_force(release, tmp_path, capsys):
    folder, _ = release
    random_mst_s(tmp_path, seed=1)                                   # other weights, same file name
    args = ["export", "--ckpt", tmp_path / "mst_s.pth", "--model", "mst_s", "--mask", tmp_path / "mask.npy",
            "--out", folder]
    before = (folder / "model.safetensors").read_bytes()
    assert run_cli(*args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (folder / "model.safetensors").read_bytes() == before
    assert run_cli(*args, "--force") == 0
    assert (folder / "model.safetensors").read_bytes() != before
    load_release(folder)
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []


def test_export_needs_a_mask_and_a_model_name_for_toolbox_files(tmp_path, capsys):
    random_mst_s(tmp_path)
    assert run_cli("export", "--ckpt", tmp_path / "mst_s.pth", "--mask", tmp_path / "mask.npy",
                   "--out", tmp_path / "r") == 2
    assert "pass --model NAME" in capsys.readouterr().err
    assert run_cli("export", "--ckpt", tmp_path / "mst_s.pth", "--model", "mst_s", "--out", tmp_path / "r") == 2
    assert "pass --mask FILE" in capsys.readouterr().err


def test_lightning_checkpoint_exports_with_its_training_mask(tmp_path):
    training = pytest.importorskip("training", reason="training package not available")
    module = training.ReconstructionModule(model_name="mst_s")
    datamodule_hparams = {"root": None, "crop": SIZE, "mask": None, "mask_key": "mask", "mask_crop": False,
                          "mask_size": None, "seed": 3}
    loops = {"fit_loop": {"epoch_progress": {"current": {"started": 5, "completed": 4}},    # saved after 5 epochs
                          "epoch_loop.batch_progress": {"current": {"processed": 8}, "is_last_batch": True}}}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 4,
                "global_step": 40, "loops": loops, "datamodule_hyper_parameters": datamodule_hparams},
               tmp_path / "last.ckpt")
    out = tmp_path / "release"
    assert run_cli("export", "--ckpt", tmp_path / "last.ckpt", "--out", out) == 0
    opened = open_release(out)
    for key, value in module.model.state_dict().items():
        assert torch.equal(opened.model.state_dict()[key], value), key
    from data.datamodule import CassiDataModule
    expected_mask = CassiDataModule(**datamodule_hparams).training_mask()
    assert np.array_equal(opened.mask.numpy(), expected_mask)
    assert opened.config["source"] == {"kind": "lightning", "path": str(tmp_path / "last.ckpt"), "epochs_completed": 5,
                                       "batches_into_epoch": 0, "global_step": 40}         # was Lightning's epoch "4"
    assert run_cli("export", "--ckpt", out, "--out", tmp_path / "again") == 0     # was: its training record dropped
    np.save(tmp_path / "other.npy", synthetic_mask(SIZE, SIZE, seed=11).numpy())
    for weights in (tmp_path / "last.ckpt", out):     # released with another mask than theirs: was written as theirs
        assert run_cli("export", "--ckpt", weights, "--mask", tmp_path / "other.npy", "--out", tmp_path / "other") == 2
        assert not (tmp_path / "other").exists()
    np.save(tmp_path / "same.npy", expected_mask)
    assert run_cli("export", "--ckpt", tmp_path / "last.ckpt", "--mask", tmp_path / "same.npy",
                   "--out", tmp_path / "same") == 0
    assert open_release(tmp_path / "again").config["training"] == opened.config["training"]

    def older_release(config):
        """What a release exported before the progress fields records: Lightning's epoch index."""
        for record, epoch in ((config["source"], "4"), (config["training"], 4)):
            del record["epochs_completed"], record["batches_into_epoch"]
            record["epoch"] = epoch
        config["source"]["global_step"] = "40"

    edit_config(out, older_release)
    assert run_cli("export", "--ckpt", out, "--out", tmp_path / "older") == 0
    card = (tmp_path / "older" / "README.md").read_text()
    assert "saved at global step 40 (optimizer steps); the completed epochs are not recorded" in card


def test_official_toolbox_fixture_exports_and_reproduces_its_output(tmp_path):
    state = torch.load(shared_path("fixtures", "mst_s", "state_dict.pt"), weights_only=True)
    io = torch.load(shared_path("fixtures", "mst_s", "io_64.pt"), weights_only=True)
    torch.save(state, tmp_path / "official.pth")
    np.save(tmp_path / "mask.npy", np.ones((64, 64), np.float32))
    assert run_cli("export", "--ckpt", tmp_path / "official.pth", "--model", "mst_s", "--mask",
                   tmp_path / "mask.npy", "--out", tmp_path / "release") == 0
    model = load_release(tmp_path / "release")
    with torch.no_grad():
        torch.testing.assert_close(model(io["x"], io["mask"]), io["output"], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- tampering
def test_modified_weights_byte_is_refused(release):
    folder, _ = release
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-5] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match=r"model\.safetensors: SHA-256 .* does not match SHA256SUMS"):
        load_release(folder)


def test_modified_weights_with_recomputed_checksums_are_refused(release):
    folder, _ = release
    tensors = load_file(folder / "model.safetensors")
    tensors["mapping.weight"] = tensors["mapping.weight"] * 1.01
    save_file(tensors, folder / "model.safetensors")
    rewrite_checksums(folder)
    with pytest.raises(ReleaseError, match="weights do not match the state_sha256"):
        load_release(folder)


def test_weights_of_another_shape_are_refused(release):
    folder, _ = release
    tensors = load_file(folder / "model.safetensors")
    tensors["mapping.weight"] = torch.zeros(27, 28, 3, 3)
    save_file(tensors, folder / "model.safetensors")
    state = {**tensors}
    edit_config(folder, lambda c: c["weights"].update(state_sha256=state_dict_sha256(state)))
    with pytest.raises(ReleaseError, match=r"shape mismatches: mapping\.weight \(27, 28, 3, 3\) vs \(28, 28, 3, 3\)"):
        load_release(folder)


def test_wrong_band_count_is_refused(release):
    folder, _ = release
    edit_config(folder, lambda c: c.update(bands=31))
    with pytest.raises(ReleaseError, match="records 31 bands but 'mst_s' with these kwargs is built for 28"):
        load_release(folder)


def test_mask_of_another_shape_is_refused(release):
    folder, _ = release
    np.save(folder / "mask.npy", np.ones((32, 32), np.float32))
    rewrite_checksums(folder)
    with pytest.raises(ReleaseError, match=r"mask has shape \(32, 32\), config.json records \(64, 64\)"):
        load_release(folder)


def test_checksum_list_must_cover_the_release(release):
    folder, _ = release
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    (folder / "SHA256SUMS").write_text("\n".join(line for line in sums if "model.safetensors" not in line) + "\n")
    with pytest.raises(ReleaseError, match=r"does not list \['model.safetensors'\]"):
        load_release(folder)
    (folder / "SHA256SUMS").unlink()
    with pytest.raises(ReleaseError, match="not a release"):
        load_release(folder)


def test_eval_refuses_a_tampered_release(release, tmp_path, capsys):
    folder, _ = release
    edit_config(folder, lambda c: c["model"].update(name="mst_x"))
    assert run_cli("kaist", "--release", folder, "--synthetic.count", 1, "--out", tmp_path / "run") == 2
    assert "unknown model 'mst_x'" in capsys.readouterr().err


def test_evaluating_a_release_with_another_mask_is_flagged(release, tmp_path):
    folder, _ = release
    np.save(tmp_path / "other_mask.npy", synthetic_mask(SIZE, SIZE, seed=10).numpy())
    out = tmp_path / "run"
    assert run_cli("kaist", "--release", folder, "--mask", tmp_path / "other_mask.npy", "--synthetic.count", 1,
                   "--previews", 0, "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["warnings"]) == 1 and "not the mask released with the network" in results["warnings"][0]
    assert "**warning**" in (out / "results.md").read_text()


def test_real_captures_with_another_mask_than_the_release_are_flagged(release, tmp_path):
    """eval.py real warned of nothing when a mask-aware network's release mask was not the captures' mask.mat (eval.py
    kaist warned): now the same warning, on stdout and in results.json / results.md."""
    import scipy.io

    folder, _ = release
    root = tmp_path / "captures"
    root.mkdir()
    other = synthetic_mask(SIZE, SIZE, seed=10)
    scipy.io.savemat(root / "mask.mat", {"mask": other.numpy()})
    y = CassiOperator(other)(torch.rand(1, 28, SIZE, SIZE, generator=torch.Generator().manual_seed(2)))[0]
    scipy.io.savemat(root / "scene1.mat", {"meas_real": y.numpy()})
    out = tmp_path / "run"
    assert run_cli("real", "--release", folder, "--data.root", root, "--no-previews", "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["warnings"]) == 1, results["warnings"]
    assert results["warnings"][0].startswith(f"the captures' mask {root / 'mask.mat'} (shape ({SIZE}, {SIZE})")
    assert "is not the mask released with the network" in results["warnings"][0]
    assert "**warning**" in (out / "results.md").read_text()


# --------------------------------------------------------------------------------------- model cards
def test_card_of_a_trained_checkpoint_states_its_recipe_validation_and_what_was_evaluated(tmp_path):
    from test_train import CONFIGS, one_step
    one_step(CONFIGS / "smoke" / "mst_s.yaml", tmp_path / "run", "--data.crop", "32")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    assert run_cli("kaist", "--ckpt", ckpt, "--synthetic.count", 3, "--limit", 2, "--previews", 0, "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["description"].startswith("the first 2 of 3 built-in synthetic scenes")
    assert results["data"]["available"] == 3 and len(results["scenes"]) == 2
    release = tmp_path / "release"
    assert run_cli("export", "--ckpt", ckpt, "--results", out / "results.json", "--out", release) == 0
    assert sorted(p.name for p in release.iterdir()) == ["README.md", "SHA256SUMS", "config.json", "mask.npy",
                                                         "metrics.json", "model.safetensors"]
    opened = open_release(release)
    training = opened.config["training"]
    assert training["module"] == "training.ReconstructionModule" and training["hyper_parameters"]["loss"] == "rmse"
    assert training["data"]["crop"] == 32 and training["global_step"] == 1
    assert training["validation"]["scenes"] == ["synthetic_scene_0", "synthetic_scene_1"]
    assert training["validation"]["monitor"] == "val/psnr" and np.isfinite(training["validation"]["score"])
    card = (release / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "- cassi" in front and f"value: {results['mean']['psnr']:.4f}" in front
    assert "on 2 built-in synthetic scenes 32x32 (seed 0; the first 2 of 3), scenario I" in body
    assert "| synthetic01 |" in body and "| synthetic02 |" in body and "synthetic03" not in body
    assert f"| **mean of 2** | {results['mean']['psnr']:.2f} |" in body
    assert "the release's mask." in body and opened.config["mask"]["sha256"] in body
    assert f"val/psnr of these weights: {training['validation']['score']:.3f}" in body
    metrics = training["validation"]["metrics"]
    assert {"val/psnr", "val/ssim", "val/sam", "val/loss"} <= set(metrics)
    assert (f"- last validation (global step {training['validation']['metrics_step']}): val/loss "
            f"{metrics['val/loss']:.4f}, val/psnr {metrics['val/psnr']:.4f}") in body
    assert "val/psnr is the one checkpoints are chosen by" in body
    assert "loss `rmse`" in body and "schedule cosine" in body and "never KAIST test scenes" in body


def test_results_that_do_not_add_up_are_not_embedded(release, tmp_path, capsys):
    folder, _ = release
    out = tmp_path / "eval"
    assert run_cli("kaist", "--release", folder, "--synthetic.count", 2, "--previews", 0, "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    for edit, message in ((lambda r: r["mean"].update(psnr=r["mean"]["psnr"] + 1), "is not the mean of its 2"),
                          (lambda r: r["scenes"].pop(), "are not the scenes it says it evaluated")):
        edited = json.loads(json.dumps(results))
        edit(edited)
        (tmp_path / "edited.json").write_text(json.dumps(edited))
        assert run_cli("export", "--ckpt", folder, "--results", tmp_path / "edited.json", "--out", tmp_path / "r") == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "r").exists()


def test_card_of_a_mismatch_scenario_names_the_drift_in_text_and_model_index(release, tmp_path):
    """Scores measured through a drifted instrument must not read as the ideal case: the card's text and its
    model-index name give the scenario, its description and the drift."""
    folder, _ = release
    out = tmp_path / "eval"
    assert run_cli("kaist", "--release", folder, "--synthetic.count", 1, "--previews", 0, "--scenarios", "II",
                   "--mismatch", "dx=1,theta=0.3", "--out", out) == 0
    assert run_cli("export", "--ckpt", folder, "--results", out / "results.json", "--out", tmp_path / "r") == 0
    card = (tmp_path / "r" / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    drift = "instrument drifted by dx 1 px, dy 0 px, theta 0.3 deg, a1 2 px/band, alpha 0 deg"
    assert "scenario II (mismatched" in body and drift in body
    assert "name: \"CASSI reconstruction (KAIST protocol, scenario II (mismatched" in front and drift in front


def test_card_of_a_joint_checkpoint_states_the_crsdun_loss(tmp_path):
    from test_train import CONFIGS, one_step
    one_step(CONFIGS / "smoke" / "crsdun_3stg.yaml", tmp_path / "run", "--data.crop", "32")
    release = tmp_path / "release"
    assert run_cli("export", "--ckpt", tmp_path / "run" / "checkpoints" / "last.ckpt", "--out", release) == 0
    card = (release / "README.md").read_text()
    assert "`training.JointModule`, joint loss: stage-weighted (0.7^(K-k)) MSE + 0.0001 x cross-entropy" in card
    assert "loss `joint`" not in card


def test_a_release_records_its_model_name_and_a_toolbox_pth_does_not(release, tmp_path):
    """calibrate.py --ckpt without --solver suggests the model the weights record (models.checkpoints)."""
    from models.checkpoints import recorded_model_name
    assert recorded_model_name(release[0]) == "mst_s"
    assert recorded_model_name(tmp_path / "mst_s.pth") is None and recorded_model_name(tmp_path / "none") is None


def test_card_of_a_checkpoint_trained_through_an_operator_file_identifies_the_instrument(tmp_path):
    """Was: 'instrument: operator /tmp/.../operator.npz', a local path; now the file's sha256, the estimate, the
    forward model and the mask it records. The calibration's status is stated once (the operator file's line repeated
    it: '; calibration status ok')."""
    from calib.instrument import InstrumentOperator
    from cassi import Mismatch
    from cassi.operator_file import save_operator
    from data.synthetic import random_mask
    from models.loading import file_sha256
    from test_train import CONFIGS, one_step

    mask = torch.from_numpy(random_mask(32, 32, seed=5))
    operator = tmp_path / "operator.npz"
    save_operator(operator, InstrumentOperator(mask, mismatch=Mismatch(dx=0.4, dy=-0.2, theta=0.1, a1=2.01, alpha=0.3),
                                               spatial=2, spectral=1), "ok", [])
    one_step(CONFIGS / "smoke" / "mst_s.yaml", tmp_path / "run", "--data.crop", "32", "--model.operator", str(operator),
             "--data.mask", str(operator))
    release = tmp_path / "release"
    assert run_cli("export", "--ckpt", tmp_path / "run" / "checkpoints" / "last.ckpt", "--out", release) == 0
    card = (release / "README.md").read_text()
    assert (f"- trained through the calibrated instrument of operator file sha256 `{file_sha256(operator)}`: estimate "
            "dx=0.4000, dy=-0.2000, theta=0.1000, a1=2.0100, alpha=0.3000 (dx, dy px; theta, alpha deg; a1 px/band), "
            "forward model N=2, K=1 (linear mask reading, linear dispersion), mask 32x32 sha256 ") in card
    assert card.count("calibration status") == 1 and "\n- calibration status of the operator: ok\n" in card  # was twice
