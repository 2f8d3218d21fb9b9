"""MST family: official weights/outputs (fixtures), operator inputs, checkpoints, FLOPs, real-data variant."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import models
from cassi.shifts import shift
from models import create_model, from_official, load_toolbox_checkpoint
from models.flops import count_flops, count_parameters
from models.mst import MST, mask_shift_offsets

from conftest import shared_path
from official_fixtures import fixture, official_state_dict

SIZES = ["mst_s", "mst_m", "mst_l"]


@pytest.mark.parametrize("name", SIZES)
def test_state_dict_keys_shapes_and_parameter_count(name):
    meta = fixture(name, "meta.json")
    manifest = fixture(name, "state_dict_keys.json")
    model = create_model(name)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == manifest
    assert count_parameters(model) == meta["params_total"]
    assert models.registry.get_entry(name).official_args == meta["constructor_args"]


@pytest.mark.parametrize("name", SIZES)
def test_seeded_init_matches_official(name):
    """Modules are created in the official order: torch.manual_seed(0) gives the fixture weights."""
    state = official_state_dict(name)
    torch.manual_seed(0)
    model = create_model(name)
    for key, value in model.state_dict().items():
        assert torch.equal(value.to(torch.bfloat16).float(), state[key]), key


@pytest.mark.parametrize("name,io_file,perturbed", [
    *[(n, "io_64.pt", False) for n in SIZES],
    *[(n, "io_64_perturbed.pt", True) for n in SIZES],
    ("mst_s", "io_256.pt", False),
])
def test_reproduces_official_outputs(name, io_file, perturbed):
    meta = fixture(name, "meta.json")
    model = from_official(name, official_state_dict(name, perturbed))
    io = fixture(name, io_file)
    inputs = {k: io[k] for k in meta["forward_arg_order"]}
    before = {k: v.clone() for k, v in inputs.items()}
    with torch.no_grad():
        out = model.reconstruction(model(**inputs))
    assert out.shape == io["output"].shape
    torch.testing.assert_close(out, io["output"], atol=1e-4, rtol=0)
    for k in inputs:
        assert torch.equal(inputs[k], before[k]), f"forward modified its input {k}"


def test_mask_shift_offsets_keep_the_official_256_constant():
    assert mask_shift_offsets(28, 256) == [2 * i for i in range(28)]
    assert mask_shift_offsets(56, 128) == [i // 2 for i in range(56)]
    assert mask_shift_offsets(28, 64) == [i // 8 for i in range(28)]      # not rescaled to 64 px
    with pytest.raises(ValueError, match="taller than 256"):
        mask_shift_offsets(28, 300)


def test_only_the_first_mask_is_used_and_bad_inputs_are_rejected():
    torch.manual_seed(0)
    model = create_model("mst_s").eval()
    x = torch.rand(2, 28, 32, 32)
    masks = (torch.rand(2, 1, 32, 32) > 0.5).float().expand(2, 28, 32, 32)
    phi = shift(masks)
    with torch.no_grad():
        both = model(x, phi)
        second_alone = model(x[1:], phi[:1])
    torch.testing.assert_close(both[1:], second_alone, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="mask"):
        model(x, phi[:, :, :16])
    with pytest.raises(ValueError, match="input x is 30x30; it must have H and W each a multiple of 4"):
        model(x[:, :, :30, :30], phi[:, :, :30, :84])
    with pytest.raises(TypeError):
        model(x)  # the mask is required (the official default is a CUDA zero mask)


def _operator(mask2d: torch.Tensor):
    try:
        from cassi import CassiOperator
    except ImportError:
        pytest.skip("cassi.CassiOperator not available yet")
    return CassiOperator(mask2d, bands=28, step=2)


def test_prepare_inputs_with_operator_runs_at_64():
    torch.manual_seed(0)
    op = _operator((torch.rand(64, 64) > 0.5).float())
    model = create_model("mst_s").eval()
    y = op(torch.rand(2, 28, 64, 64))
    inputs = model.prepare_inputs(y, op)
    assert inputs["x"].shape == (2, 28, 64, 64) and inputs["mask"].shape[-1] == 118
    with torch.no_grad():
        out = model.reconstruction(model(**inputs))
    assert out.shape == (2, 28, 64, 64) and torch.isfinite(out).all()


def test_prepare_inputs_refuses_per_sample_masks():
    torch.manual_seed(0)
    op = _operator((torch.rand(2, 32, 32) > 0.5).float())
    model = create_model("mst_s")
    with pytest.raises(ValueError, match="first sample"):
        model.prepare_inputs(op(torch.rand(2, 28, 32, 32)), op)


def test_operator_inputs_reproduce_the_official_pipeline():
    """Fixture recipe (binarised KAIST mask crop, seeded scene) through our operator -> io_64 exactly."""
    io = fixture("mst_s", "io_64.pt")
    mask_file = shared_path("data", "kaist", "mask.mat")
    from scipy.io import loadmat
    mask = torch.from_numpy((loadmat(mask_file)["mask"] > 0.5).astype("float32"))[:64, :64]
    torch.manual_seed(1)
    scene = torch.sigmoid(F.interpolate(torch.randn(1, 28, 8, 8), size=(64, 64), mode="bilinear",
                                        align_corners=False))
    op = _operator(mask)
    model = from_official("mst_s", official_state_dict("mst_s"))
    inputs = model.prepare_inputs(op(scene), op)
    torch.testing.assert_close(inputs["x"], io["x"], atol=1e-6, rtol=0)
    torch.testing.assert_close(inputs["mask"].expand_as(io["mask"]), io["mask"], atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs), io["output"], atol=1e-4, rtol=0)


def test_load_toolbox_checkpoint(tmp_path):
    torch.manual_seed(0)
    reference = create_model("mst_s")
    path = tmp_path / "mst_s.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    model = load_toolbox_checkpoint("mst_s", path)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    wrong_size = rf"(?s)^{re.escape(str(path))} does not match MST.*missing keys: bottleneck\.blocks\.2"
    with pytest.raises(ValueError, match=wrong_size):        # MST-S weights are not MST-L
        load_toolbox_checkpoint("mst_l", path)
    broken = dict(reference.state_dict())
    broken["extra.weight"] = broken.pop("mapping.weight")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"(?s)missing keys: mapping\.weight.*unexpected keys: extra\.weight"):
        load_toolbox_checkpoint("mst_s", tmp_path / "broken.pth")


def test_fvcore_flops_equal_fixture_at_256():
    """At 64 x 64 the count is not 1/16 of the 256 one (mask branch runs on the W + 54 canvas): check at 256."""
    meta = fixture("mst_s", "meta.json")
    model = create_model("mst_s").eval()
    inputs = {"x": torch.zeros(1, 28, 256, 256), "mask": torch.zeros(1, 28, 256, 310)}
    assert count_flops(model, inputs) == meta["flops"]["fvcore_total"]


# --- real-data variant (real/test_code): measurement input, no mask guidance ------------------------------

@pytest.mark.parametrize("name", SIZES)
def test_real_variant_structure(name):
    """Same network without the mask branch (mm, mask down-sampling), plus the 3x3 band-mixing ``fution``."""
    sim = create_model(name).state_dict()
    real = create_model(name + "_real").state_dict()
    mask_keys = {k for k in sim if ".mm." in k or (k.startswith("encoder_layers.") and k.split(".")[2] == "2")}
    assert set(real) == (set(sim) - mask_keys) | {"fution.weight"}
    assert real["fution.weight"].shape == (28, 28, 3, 3)
    assert all(real[k].shape == sim[k].shape for k in real if k != "fution.weight")


def test_real_variant_shifts_back_the_measurement_and_runs():
    torch.manual_seed(0)
    model = create_model("mst_s_real").eval()
    with torch.no_grad():
        model.fution.weight.zero_()
        model.fution.weight[range(28), range(28), 1, 1] = 1.0            # identity band mixing
        y = torch.rand(1, 64, 118)
        x = model.initial_x(y)
        for c in range(28):
            assert torch.equal(x[:, c], y[:, :, 2 * c:2 * c + 64])
        out = model(y)
    assert out.shape == (1, 28, 64, 64) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="measurement"):
        model(torch.rand(1, 28, 64, 64))


def test_real_variant_prepare_inputs():
    torch.manual_seed(0)
    op = _operator((torch.rand(32, 32) > 0.5).float())
    y = op(torch.rand(1, 28, 32, 32))
    model = create_model("mst_s_real")
    inputs = model.prepare_inputs(y, op)
    assert list(inputs) == ["x"]
    torch.testing.assert_close(inputs["x"], y / 28 * 2)
    assert isinstance(model, MST)
