"""S²-Transformer: official keys/weights/outputs (fixtures), sizes, operator inputs, FLOPs, and its losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cassi import CassiOperator
from models import create_model, from_official
from models.flops import count_flops, count_parameters
from models.losses import CharbonnierLoss, MaskAwareLoss, MaskEncodingLoss, RMSELoss
from models.registry import get_entry
from models.s2_transformer import shifted_window_mask

from official_fixtures import fixture, flatten, official_state_dict

NAME = "s2_transformer"
TINY = dict(in_chans=28, img_size=16, window_size=8, embed_dim=12, depths=[2, 2], num_heads=[2, 2],
            mlp_ratio=2, spe_dim_head=6, drop_path_rate=0.0)


def manifest(model: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


def tiny_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("s2_transformer", **{**TINY, **overrides}).eval()


@pytest.fixture(scope="module")
def official_model():
    """The fixture build with the official weights, built once for the module."""
    return from_official("s2_transformer", official_state_dict(NAME))


# ------------------------------------------------------------------------- structure and weights
def test_state_dict_keys_shapes_and_parameter_count():
    meta = fixture(NAME, "meta.json")
    model = create_model("s2_transformer", **meta["constructor_args"])
    assert get_entry("s2_transformer").official_args == meta["constructor_args"]
    assert manifest(model) == fixture(NAME, "state_dict_keys.json")
    assert count_parameters(model) == meta["params_total"] == 4_151_956
    masks = {id(b) for name, b in model.named_buffers(remove_duplicate=False) if name.endswith("attn_mask")}
    assert len(masks) == 1, "the shifted blocks should share one stored shift mask"


def test_published_img256_build_keys_on_meta_device():
    """The published img_size=256 build, on the meta device (its 24 masks would be 384 MiB)."""
    meta = fixture(NAME, "meta.json")
    with torch.device("meta"):
        model = create_model("s2_transformer", **meta["constructor_args_published"])
    assert manifest(model) == fixture(NAME, "state_dict_keys_img256.json")


def test_seeded_init_matches_official():
    """Modules are created in the official order: torch.manual_seed(0) gives the fixture weights."""
    state = official_state_dict(NAME)
    torch.manual_seed(0)
    model = create_model("s2_transformer", **get_entry("s2_transformer").official_args)
    for key, value in model.state_dict().items():
        rounded = value.to(torch.bfloat16).float() if value.is_floating_point() else value
        assert torch.equal(rounded, state[key]), key


def test_strict_load_rejects_a_missing_key():
    state = tiny_model().state_dict()
    del state["layers.0.residual_group.blocks.1.win_wrap_spatial.attn_mask"]
    with pytest.raises(ValueError, match="missing keys: layers.0.residual_group.blocks.1.win_wrap_spatial.attn_mask"):
        from_official("s2_transformer", state, **TINY)


# ------------------------------------------------------------------------------ official outputs
@pytest.mark.parametrize("io_file,perturbed", [
    ("io_32.pt", False), ("io_32_perturbed.pt", True),     # stored shift masks (input = img_size)
    ("io_64.pt", False), ("io_64_perturbed.pt", True),     # masks computed for another input size
])
def test_reproduces_official_outputs(official_model, io_file, perturbed):
    meta = fixture(NAME, "meta.json")
    official_model.load_state_dict(official_state_dict(NAME, perturbed), strict=True)
    io = fixture(NAME, io_file)
    inputs = {k: io[k] for k in meta["forward_arg_order"]}
    before = {k: v.clone() for k, v in inputs.items()}
    with torch.no_grad():
        out = official_model(**inputs)
    ours, ref = flatten(out), flatten(io["output"])
    assert len(ours) == len(ref) == 5
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    for k in inputs:
        assert torch.equal(inputs[k], before[k]), f"forward modified its input {k}"


def test_prepare_inputs_with_operator_reproduce_the_fixture(official_model):
    """Rebuild io_32's inputs from the fixture recipe (scene, 2-D mask) through the operator."""
    io = fixture(NAME, "io_32.pt")
    mask2d = io["physc_mask"][0, 0]
    torch.manual_seed(1)
    scene = torch.sigmoid(F.interpolate(torch.randn(1, 28, 8, 8), size=(32, 32), mode="bilinear",
                                        align_corners=False))
    op = CassiOperator(mask2d)
    model = official_model
    model.load_state_dict(official_state_dict(NAME), strict=True)
    inputs = model.prepare_inputs(op(scene), op)
    assert set(inputs) == {"x", "physc_mask"}
    torch.testing.assert_close(inputs["x"], io["x"], atol=1e-6, rtol=0)
    assert torch.equal(inputs["physc_mask"], io["physc_mask"])
    with torch.no_grad():
        cube = model.reconstruction(model(**inputs))
    torch.testing.assert_close(cube, io["output"][0], atol=1e-4, rtol=0)


def test_fvcore_flops_scale_to_the_fixture_count_at_256(official_model):
    """Every cost is linear in H*W, so FLOPs(256x256) = 64 * FLOPs(32x32) exactly."""
    meta = fixture(NAME, "meta.json")
    io = fixture(NAME, "io_32.pt")
    flops = count_flops(official_model, {"x": io["x"], "physc_mask": io["physc_mask"]})
    assert 64 * flops == meta["flops"]["fvcore_total"]


# ---------------------------------------------------------------------------- sizes and batches
def test_shifted_window_mask_regions():
    mask = shifted_window_mask((16, 16), window=8, shift=4)
    assert mask.shape == (4, 64, 64)
    assert torch.all(mask[0] == 0)                    # top-left window lies in one region
    last = mask[3].view(8, 8, 8, 8)                   # bottom-right window: four regions
    assert last[0, 0, 3, 3] == 0 and last[0, 0, 4, 4] == -100 and last[0, 0, 0, 4] == -100
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_other_sizes_match_a_build_for_that_size():
    """A 16x24 input on an img_size=16 model (mask computed on the fly) equals an img_size=(16, 24)
    build (stored mask) with the same weights."""
    stored, computed = tiny_model(img_size=(16, 24)), tiny_model(img_size=16)
    x, mask = torch.rand(1, 28, 16, 24), (torch.rand(1, 1, 16, 24) > 0.5).float()
    with torch.no_grad():
        for a, b in zip(flatten(stored(x, mask)), flatten(computed(x, mask))):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_batch_equals_per_sample_outputs():
    model = tiny_model()
    x, mask = torch.rand(2, 28, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    with torch.no_grad():
        batched = model(x, mask)[0]
        single = torch.cat([model(x[i:i + 1], mask[i:i + 1])[0] for i in range(2)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_mask_modulation_uses_the_mask_and_omit_ignores_it():
    """With enlarged mask-embedding and qkv weights (at init the window attention is nearly uniform)."""
    x = torch.rand(1, 28, 16, 16)
    mask_a, mask_b = (torch.rand(2, 1, 1, 16, 16) > 0.5).float()
    for mask_eff, changes in (("both_qk", True), ("omit", False)):
        model = tiny_model(mask_eff=mask_eff)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if any(part in name for part in ("ms_conv1", "ms_conv2", "attn.qkv")):
                    param.mul_(30)
            difference = (model(x, mask_a)[0] - model(x, mask_b)[0]).abs().max()
        assert (difference > 1e-3) if changes else (difference == 0), (mask_eff, difference)


def test_gradient_checkpointing_gives_the_same_gradients():
    x, mask = torch.rand(1, 28, 16, 16), (torch.rand(1, 1, 16, 16) > 0.5).float()
    grads = []
    for use_checkpoint in (False, True):
        model = tiny_model(use_checkpoint=use_checkpoint).train()
        model(x, mask)[0].square().mean().backward()
        grads.append(model.conv_first.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("x_shape,mask_shape,match", [
    ((1, 28, 20, 16), (1, 1, 20, 16), "multiple of 8 \\(attention windows of window_size=8\\)"),
    ((1, 27, 16, 16), (1, 1, 16, 16), "x must be"),
    ((2, 28, 16, 16), (1, 1, 16, 16), "physc_mask must be"),
])
def test_bad_inputs_are_rejected(x_shape, mask_shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_model()(torch.rand(x_shape), torch.rand(mask_shape))


def test_unimplemented_options_are_rejected():
    with pytest.raises(ValueError, match="attention_type='SpaSpe_Attn' is not implemented"):
        create_model("s2_transformer", **{**TINY, "attention_type": "SpaSpe_Attn"})


# ---------------------------------------------------------------------------------------- losses
def cube_and_mask(shape=(2, 28, 8, 8)):
    torch.manual_seed(3)
    return torch.rand(shape), (torch.rand(shape[0], 1, *shape[2:]) > 0.5).float().expand(shape)


def test_pixel_losses_values_and_gradients():
    target = torch.rand(1, 28, 4, 4)
    pred = (target + 0.5).requires_grad_()
    rmse = RMSELoss()(pred, target)
    torch.testing.assert_close(rmse, torch.tensor(0.5))
    rmse.backward()
    assert pred.grad.abs().min() > 0
    charbonnier = CharbonnierLoss(eps=1e-3)
    torch.testing.assert_close(charbonnier(target, target), torch.tensor(1e-3))
    torch.testing.assert_close(charbonnier(target + 2.0, target), torch.tensor((4 + 1e-6) ** 0.5))
    with pytest.raises(ValueError, match="differ in shape"):
        RMSELoss()(target[:, :27], target)


def test_mask_encoding_loss_uses_stage_k_and_the_encoded_cube():
    target, mask = cube_and_mask()
    encoded = target * mask
    stages = [torch.zeros_like(target) + 7, encoded.clone().requires_grad_(), torch.zeros_like(target) + 7]
    loss = MaskEncodingLoss(alpha=1.5, k_me=2)
    assert loss((target, stages), target, mask) == 0            # perfect reconstruction and estimate
    pred = (target + 0.1).requires_grad_()
    stages[1] = (encoded + 0.2).requires_grad_()
    value = loss((pred, stages), target, mask)
    torch.testing.assert_close(value, torch.tensor(1.5 * 0.2 + 0.1))
    value.backward()
    assert pred.grad.abs().min() > 0 and stages[1].grad.abs().min() > 0
    with pytest.raises(ValueError, match="k_me=4 but the network returned 3"):
        MaskEncodingLoss(k_me=4)((pred, stages), target, mask)
    with pytest.raises(ValueError, match="does not broadcast"):
        loss((pred, stages), target, mask[:, :, :4])


def test_mask_aware_loss_prioritises_well_encoded_masked_pixels():
    """Same reconstruction error everywhere; the estimate t matches F0 exactly at masked pixels and
    is off by 0.1 at unmasked ones: the MA gradient on masked pixels is (0.1 + eps) / eps larger."""
    target, mask = cube_and_mask()
    encoded = target * mask
    estimate = (encoded + 0.1 * mask).requires_grad_()      # error only where the mask is open
    pred = (target + 0.01).requires_grad_()
    loss = MaskAwareLoss(alpha=1.0, beta=10.0, k_me=1, eps=1e-3)
    terms = loss.terms((pred, [estimate]), target, mask)
    n, open_fraction = target.numel(), mask.mean()
    expected_ma = 0.01 * ((1 - open_fraction) / 1e-3 + open_fraction / (0.1 + 1e-3))
    torch.testing.assert_close(terms["ma"], expected_ma, rtol=1e-4, atol=0)
    total = loss((pred, [estimate]), target, mask)
    torch.testing.assert_close(total, terms["me"] + terms["recon"] + 10 * terms["ma"])
    total.backward()
    expected_grad = torch.where(mask == 0, (1 + 10 / 1e-3) / n, (1 + 10 / (0.1 + 1e-3)) / n)
    torch.testing.assert_close(pred.grad, expected_grad, rtol=1e-4, atol=0)
    # the difficulty is a weight: t gets the ME gradient only
    torch.testing.assert_close(estimate.grad, mask / n)


def test_mask_aware_loss_zero_when_perfect_and_difficulty_gradient_option():
    target, mask = cube_and_mask()
    encoded = target * mask
    assert MaskAwareLoss()((target, [encoded, encoded]), target, mask) == 0
    estimate = (encoded + 0.05).requires_grad_()
    MaskAwareLoss(k_me=1, detach_difficulty=False)((target + 0.01, [estimate]), target, mask).backward()
    n = target.numel()
    # d/dt [1.0 * |t - F0| + 10 * 0.01 / (|t - F0| + eps)] = 1 - 0.1 / (0.05 + eps)^2, per element / n
    torch.testing.assert_close(estimate.grad, torch.full_like(target, (1 - 0.1 / 0.051 ** 2) / n),
                               rtol=1e-4, atol=0)


def test_losses_train_the_network_through_its_stage_outputs():
    model = tiny_model().train()
    target, mask = cube_and_mask((1, 28, 16, 16))
    x = target * mask
    for loss in (MaskEncodingLoss(k_me=1), MaskAwareLoss(k_me=1)):
        model.zero_grad()
        loss(model(x, mask[:, :1]), target, mask).backward()
        assert model.RSTB_pin.weight.grad.abs().sum() > 0
        assert model.layers[0].residual_group.blocks[0].ms_conv1.weight.grad.abs().sum() > 0
