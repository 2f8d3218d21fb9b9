"""BiSRNet (BiSCI): official pretrained weights and outputs, operator inputs, gradients, bad input.

The official outputs are ../shared/data/pseudo_kaist (simulation weights on the ten kaist_meas snapshots) and
pseudo_real (real weights on the real captures, rows/cols 74:586 of the 660 x 660 output). A binarised network
flips a few signs between builds and thread counts, so the check is PSNR >= 45 dB, not max-abs. The ten
simulation scenes run here; of the real captures (about 15 CPU s each at 660 x 714) scene2, the one with the
smallest margin, runs here and all five in ``python -m benchmarks.bench_bisrnet``.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import models
from cassi import CassiOperator, Mismatch
from data.io import load_cube, load_measurement
from models import create_model, from_official, load_toolbox_checkpoint
from models.bisrnet import BiSRNet, BiSRNetReal, SpectralBinaryActivation
from models.flops import count_parameters

from conftest import shared_path

OFFICIAL_ARGS = {"in_channels": 28, "out_channels": 28, "n_feat": 28, "stage": 1, "num_blocks": [1, 1, 1]}
WEIGHTS = {"bisrnet": "bisrnet_simulation.pth", "bisrnet_real": "bisrnet_real_state_dict.pth"}
MIN_PSNR = 45.0


def official_weights(name: str) -> dict[str, torch.Tensor]:
    return torch.load(shared_path("weights", WEIGHTS[name]), map_location="cpu", weights_only=True)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((x.double() - ref.double()) ** 2).mean()))


@pytest.fixture(scope="module")
def simulation_model() -> BiSRNet:
    """Through load_toolbox_checkpoint: the file holds CUDA tensors (a plain state dict saved on a GPU)."""
    return load_toolbox_checkpoint("bisrnet", shared_path("weights", WEIGHTS["bisrnet"]))


# ------------------------------------------------------------------------------ weights and outputs
@pytest.mark.parametrize("name", ["bisrnet", "bisrnet_real"])
def test_state_dict_keys_and_shapes_are_the_official_ones(name):
    state = official_weights(name)
    ours = create_model(name).state_dict()
    assert [(k, tuple(v.shape), v.dtype) for k, v in ours.items()] == \
           [(k, tuple(v.shape), v.dtype) for k, v in state.items()]        # same keys, same order: no mapping
    assert count_parameters(create_model(name)) == 659_319
    assert models.registry.get_entry(name).official_args == OFFICIAL_ARGS


@pytest.mark.parametrize("scene", [f"scene{n:02d}" for n in range(1, 11)])
def test_simulation_reproduces_the_official_outputs(simulation_model, scene):
    snapshot = np.load(shared_path("data", "kaist_meas", f"{scene}_snapshot.npz"))
    stored = torch.from_numpy(load_cube(shared_path("data", "pseudo_kaist", f"{scene}.npz")))
    op = CassiOperator(torch.from_numpy(snapshot["mask"]))
    y = torch.from_numpy(snapshot["y"])[None]
    with torch.no_grad():
        out = simulation_model(**simulation_model.prepare_inputs(y, op)).clamp(0, 1)[0]
    assert psnr(out, stored) >= MIN_PSNR


@pytest.mark.parametrize("scene", ["scene2"])
def test_real_model_reproduces_the_official_outputs(scene):
    model = from_official("bisrnet_real", official_weights("bisrnet_real"))
    y = torch.from_numpy(load_measurement(shared_path("data", "real", f"{scene}.mat"), key="meas_real"))[None]
    stored = torch.from_numpy(load_cube(shared_path("data", "pseudo_real", f"{scene}.npz")))
    op = CassiOperator(torch.ones(660, 660))          # geometry only: the real model takes no mask
    with torch.no_grad():
        out = model(**model.prepare_inputs(y, op)).clamp(0, 1)[0, :, 74:586, 74:586]
    assert psnr(out, stored) >= MIN_PSNR


# ------------------------------------------------------------------------------ published files
def test_official_weights_load_only_into_their_own_model():
    """Both files have the same keys and shapes: only their digests tell them apart (models.loading)."""
    simulation, real = (shared_path("weights", WEIGHTS[name]) for name in ("bisrnet", "bisrnet_real"))
    assert isinstance(load_toolbox_checkpoint("bisrnet_real", real), BiSRNetReal)
    with pytest.raises(ValueError, match=r"bisrnet_real_state_dict\.pth is the official BiSRNet real-data weights .*"
                                         r"which belong to model bisrnet_real, not to bisrnet$"):
        load_toolbox_checkpoint("bisrnet", real)
    with pytest.raises(ValueError, match=r"bisrnet_simulation\.pth is the official BiSRNet simulation weights .*"
                                         r"which belong to model bisrnet, not to bisrnet_real$"):
        load_toolbox_checkpoint("bisrnet_real", simulation)


def test_official_state_dicts_load_only_into_their_own_model(tmp_path):
    """Was: from_official('bisrnet', <the real-data weights>) built the simulation network with them, and so did a
    copy of the file saved otherwise (wrapped, ``module.`` prefixes): only the published files' bytes were known."""
    real, simulation = official_weights("bisrnet_real"), official_weights("bisrnet")
    with pytest.raises(ValueError, match=r"^the state dict given for model bisrnet holds the official BiSRNet "
                                         r"real-data weights .*, which belong to model bisrnet_real, not to bisrnet$"):
        from_official("bisrnet", real)
    with pytest.raises(ValueError, match=r"holds the official BiSRNet simulation weights .*which belong to model "
                                         r"bisrnet, not to bisrnet_real$"):
        from_official("bisrnet_real", dict(reversed(list(simulation.items()))))      # key order does not matter
    copy = tmp_path / "copy.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in real.items()}}, copy)
    with pytest.raises(ValueError, match=r"copy\.pth holds the official BiSRNet real-data weights .*not to bisrnet$"):
        load_toolbox_checkpoint("bisrnet", copy)
    assert isinstance(load_toolbox_checkpoint("bisrnet_real", copy), BiSRNetReal)
    tuned = {**real, "conv_in.weight": real["conv_in.weight"] * 1.01}                # other weights: not refused
    assert isinstance(from_official("bisrnet", tuned), BiSRNet)


def test_a_known_file_given_to_another_model_is_refused_by_the_clis(tmp_path, monkeypatch, capsys):
    import importlib

    import calibrate
    from cli_checks import user_error
    from models import loading

    fake = tmp_path / "fake.pth"
    fake.write_bytes(b"published weights")
    monkeypatch.setattr(loading, "KNOWN_CHECKPOINTS", {**loading.KNOWN_CHECKPOINTS, loading.file_sha256(fake):
                                                       loading.KnownCheckpoint("a published file", "bisrnet_real")})
    np.save(tmp_path / "mask.npy", np.ones((16, 16), np.float32))
    np.save(tmp_path / "y.npy", np.ones((16, 70), np.float32))
    refused = r"fake\.pth is a published file, which belong to model bisrnet_real, not to bisrnet$"
    user_error(capsys, lambda: importlib.import_module("eval").main(
        ["kaist", "--model", "bisrnet", "--ckpt", str(fake), "--out", str(tmp_path / "kaist")]), refused)
    user_error(capsys, lambda: calibrate.main(        # the path once, then why (84cadbe)
        ["--meas", str(tmp_path / "y.npy"), "--mask", str(tmp_path / "mask.npy"), "--solver", "bisrnet", "--ckpt",
         str(fake), "--out", str(tmp_path / "calibration"), "--no-progress"]),
        r"fake\.pth is not a bisrnet checkpoint: it is a published file, which belong to model bisrnet_real, not to "
        r"bisrnet$")
    monkeypatch.setattr(loading, "file_sha256", None)          # a model the table does not name: never hashed
    with pytest.raises(ValueError, match=r"fake\.pth: not a torch checkpoint"):       # b"published weights"
        load_toolbox_checkpoint("mst_s", fake)


# ----------------------------------------------------------------------------------- model protocol
def test_prepare_inputs_are_the_official_h_and_mask_settings():
    torch.manual_seed(0)
    mask = torch.rand(24, 20)
    op = CassiOperator(mask)
    y = op(torch.rand(2, 28, 24, 20))
    inputs = create_model("bisrnet").prepare_inputs(y, op)
    assert list(inputs) == ["y", "Phi"]
    for c in range(28):                                # H: band c = columns 2c .. 2c + W - 1 of y / 28 * 2
        torch.testing.assert_close(inputs["y"][:, c], y[:, :, 2 * c:2 * c + 20] / 28 * 2, rtol=0, atol=0)
    assert torch.equal(inputs["Phi"], mask.expand(2, 28, 24, 20))


def test_real_model_splits_the_scaled_measurement_itself():
    torch.manual_seed(0)
    y = torch.rand(2, 16, 70) * torch.tensor([3.0, 0.5]).view(2, 1, 1)
    model = create_model("bisrnet_real")
    op = CassiOperator(torch.ones(16, 16))
    scaled = model.prepare_inputs(y, op)["y"]
    torch.testing.assert_close(scaled.flatten(1).amax(1), torch.tensor([0.8, 0.8]))
    torch.testing.assert_close(scaled, y * (0.8 / y.flatten(1).amax(1)).view(2, 1, 1))
    for c in (0, 13, 27):
        assert torch.equal(model.split(scaled)[:, c], scaled[:, :, 2 * c:2 * c + 16])
    assert torch.equal(model.split(scaled[:, None]), model.split(scaled))      # official (B, 1, H, W + 54)
    torch.testing.assert_close(create_model("bisrnet_real", input_max=None).prepare_inputs(y, op)["y"], y / 28 * 2)
    with torch.no_grad():
        assert model(scaled).shape == (2, 28, 16, 16)
    assert not model.mask_aware and create_model("bisrnet").mask_aware
    assert not model.fution.weight.requires_grad                      # unused by the real forward


def test_odd_sizes_are_padded_and_cropped_back():
    torch.manual_seed(0)
    model = create_model("bisrnet").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 28, 13, 21), torch.rand(1, 28, 13, 21))
        single = model(torch.rand(2, 28, 8, 8), torch.rand(1, 28, 8, 8))     # one mask for the batch
    assert out.shape == (1, 28, 13, 21) and torch.isfinite(out).all() and single.shape == (2, 28, 8, 8)


# -------------------------------------------------------------------------------------- gradients
def test_sign_activation_is_exact_and_its_gradient_is_the_tanh_surrogate():
    torch.manual_seed(0)
    act = SpectralBinaryActivation()
    with torch.no_grad():
        act.beta.fill_(1.7)
    x = torch.randn(1000, dtype=torch.float32)
    x[0] = 0.0
    with torch.no_grad():
        fast = act(x)                                   # no-grad path: sign only
    xg = x.clone().requires_grad_(True)
    slow = act(xg)                                      # official straight-through expression
    assert torch.equal(fast, torch.sign(x)) and torch.equal(slow.detach(), fast)
    slow.sum().backward()
    torch.testing.assert_close(xg.grad, 1.7 * (1 - torch.tanh(1.7 * x) ** 2))
    for name in WEIGHTS:                                # the bitwise equality above needs beta > 0
        state = official_weights(name)
        assert all(float(v.min()) > 0 for k, v in state.items() if k.endswith("binary_activation.beta"))


def test_gradients_reach_the_mismatch_parameters_through_a_frozen_network():
    """Eval mode, no parameter gradients: d(output)/d(dx, theta) flows through the warped mask (Phi) and the
    dispersion (H), via the straight-through surrogates; finite and non-zero."""
    torch.manual_seed(0)
    model = create_model("bisrnet").eval().requires_grad_(False)
    mask = (torch.rand(32, 32) > 0.5).float()
    y = CassiOperator(mask)(torch.rand(1, 28, 32, 32))
    dx = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    a1 = torch.tensor(2.01, dtype=torch.float64, requires_grad=True)
    op = CassiOperator(mask, mismatch=Mismatch(dx=dx, theta=theta, a1=a1))
    inputs = model.prepare_inputs(y, op)
    (model(**inputs) ** 2).sum().backward()
    for p in (dx, theta, a1):
        assert p.grad is not None and torch.isfinite(p.grad) and p.grad != 0
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------ bad input
def test_checkpoints_of_another_model_are_refused(tmp_path):
    torch.save(create_model("mst_s").state_dict(), tmp_path / "mst_s.pth")
    with pytest.raises(ValueError, match=rf"(?s)^{re.escape(str(tmp_path / 'mst_s.pth'))} does not match BiSRNet.*"
                                         r"missing keys: body\.0"):      # was called "official 'bisrnet' weights"
        load_toolbox_checkpoint("bisrnet", tmp_path / "mst_s.pth")
    torch.save(create_model("bisrnet").state_dict(), tmp_path / "bisrnet.pth")
    with pytest.raises(ValueError, match=rf"(?s)^{re.escape(str(tmp_path / 'bisrnet.pth'))} does not match MST.*"
                                         r"unexpected keys: body\.0"):
        load_toolbox_checkpoint("mst_s", tmp_path / "bisrnet.pth")
    with pytest.raises(ValueError, match=r"(?s)^the state dict given for model bisrnet does not match BiSRNet.*"
                                         r"unexpected keys: body\.1\."):      # two U-Nets, not one
        from_official("bisrnet", create_model("bisrnet", stage=2).state_dict())


def test_bad_sizes_and_inputs_are_clear_errors():
    model = create_model("bisrnet").eval()
    with pytest.raises(ValueError, match=r">= 5"):
        model(torch.rand(1, 28, 4, 16), torch.rand(1, 28, 4, 16))
    with pytest.raises(ValueError, match="Phi must be the 3-D mask"):
        model(torch.rand(1, 28, 16, 16), torch.rand(1, 28, 16, 70))
    with pytest.raises(ValueError, match="'H' input"):
        model(torch.rand(1, 16, 70), torch.rand(1, 28, 16, 16))
    with pytest.raises(ValueError, match="built for 28 bands"):
        model.prepare_inputs(torch.rand(1, 16, 34), CassiOperator(torch.ones(16, 16), bands=10))
    with pytest.raises(ValueError, match="out_channels must equal n_feat"):
        BiSRNet(out_channels=31)
    with pytest.raises(ValueError, match="num_blocks needs 3 entries"):
        BiSRNet(num_blocks=[1, 1])
    real = create_model("bisrnet_real").eval()
    with pytest.raises(ValueError, match="does not use a mask"):
        real(torch.rand(1, 16, 70), torch.rand(1, 28, 16, 16))
    with pytest.raises(ValueError, match=r"measurement"):
        real(torch.rand(1, 28, 16, 16))
    with pytest.raises(ValueError, match="step 2"):
        real.prepare_inputs(torch.rand(1, 16, 43), CassiOperator(torch.ones(16, 16), step=1))
    with pytest.raises(ValueError, match="no positive value"):
        real.prepare_inputs(torch.zeros(1, 16, 70), CassiOperator(torch.ones(16, 16)))
    with pytest.raises(ValueError, match="in_channels must be 28"):
        BiSRNetReal(in_channels=31)
