"""CRSDUN: official keys, weights and outputs (fixtures), seeded init, gradient paths, inputs, joint loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cassi import CassiOperator
from models import create_model, from_official
from models.crsdun import CRSDUN
from models.crsdun_blocks import trunc_normal_
from models.joint_loss import CRSDUNLoss
from models.registry import get_entry

from official_fixtures import fixture, flatten, official_state_dict

NAMES = ["crsdun_3stg", "crsdun_5stg"]


def clone_tree(tree):
    if isinstance(tree, (list, tuple)):
        return type(tree)(clone_tree(t) for t in tree)
    return tree.clone()


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_shapes_and_parameter_counts(name):
    meta = fixture(name, "meta.json")
    manifest = fixture(name, "state_dict_keys.json")
    model = create_model(name)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == manifest
    assert sum(p.numel() for p in model.parameters()) == meta["params_total"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == meta["params_trainable"]
    assert get_entry(name).official_args == meta["constructor_args"]


@pytest.mark.parametrize("name", NAMES)
def test_seeded_init_matches_official(name):
    """Same init calls in the official order: torch.manual_seed(0) gives the fixture weights."""
    state = official_state_dict(name)
    torch.manual_seed(0)
    model = create_model(name)
    for key, value in model.state_dict().items():
        expected = value.to(torch.bfloat16).float() if value.is_floating_point() else value
        assert torch.equal(expected, state[key]), key


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("perturbed", [False, True], ids=["default", "perturbed"])
def test_reproduces_official_outputs(name, perturbed):
    meta = fixture(name, "meta.json")
    io = fixture(name, "io_64_perturbed.pt" if perturbed else "io_64.pt")
    model = from_official(name, official_state_dict(name, perturbed))
    inputs = [io[k] for k in meta["forward_arg_order"]]
    assert isinstance(inputs[1], tuple)
    before = clone_tree(inputs)
    with torch.no_grad():
        out = model(*inputs)
    ours, ref = flatten(out), flatten(io["output"])
    assert len(ours) == len(ref) == 2 * meta["constructor_args"]["stage"]
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    for a, b in zip(flatten(inputs), flatten(before)):
        assert torch.equal(a, b), "forward modified its inputs"
    assert model.reconstruction(out) is out[0][-1]
    assert model.segmentation(out) is out[1][-1]
    assert model.segmentation(out).shape == (1, meta["constructor_args"]["n_class"], 64, 64)


def test_gradient_paths_match_official():
    """The super-token affinities are computed without gradient (official): exactly the parameters the
    fixture lists as zero-gradient (guide embeddings / norms of the CASTA guides) get no gradient."""
    name = "crsdun_3stg"
    meta = fixture(name, "meta.json")
    io = fixture(name, "io_64_perturbed.pt")
    model = from_official(name, official_state_dict(name, perturbed=True))
    out = model(io["y"], io["input_mask"])
    cube = torch.rand(1, 28, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 23, (1, 64, 64), generator=torch.Generator().manual_seed(0))
    CRSDUNLoss()(out, cube, labels).backward()
    no_grad = {k for k, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.any())}
    assert no_grad == set(meta["params_not_affecting_output"]["gradient_candidates_that_do_affect_output"])
    assert all(p.grad is None for k, p in model.named_parameters() if not p.requires_grad)


def test_prepare_inputs_rebuilds_fixture_inputs_from_operator():
    """y = op(scene) and prepare_inputs(y, op) reproduce the fixture's measurement and mask tuple."""
    io = fixture("crsdun_3stg", "io_64.pt")
    mask2d = io["input_mask"][0][0, 0]
    torch.manual_seed(1)  # the fixture's scene recipe (README)
    scene = torch.sigmoid(F.interpolate(torch.randn(1, 28, 8, 8), size=(64, 64), mode="bilinear",
                                        align_corners=False))
    op = CassiOperator(mask2d, bands=28, step=2)
    y = op(scene)
    torch.testing.assert_close(y, io["y"], atol=1e-5, rtol=0)
    model = CRSDUN(stage=1, bands=28, n_class=23)
    inputs = model.prepare_inputs(io["y"], op)
    assert set(inputs) == {"y", "input_mask"} and inputs["y"] is io["y"]
    for ours, ref in zip(inputs["input_mask"], io["input_mask"]):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    batch = model.prepare_inputs(io["y"].expand(2, -1, -1), op)["input_mask"]
    assert [tuple(t.shape) for t in batch] == [(2, 28, 64, 64), (2, 28, 64, 118), (2, 1, 64, 118)]


def test_bad_inputs_are_named():
    model = CRSDUN(stage=1, bands=28, n_class=23)
    y = torch.rand(1, 64, 118)
    good = (torch.rand(1, 28, 64, 64), torch.rand(1, 28, 64, 118), torch.rand(1, 1, 64, 118))
    with pytest.raises(ValueError, match="Phi_s"):
        model(y, (*good[:2], torch.rand(1, 64, 118)))
    with pytest.raises(ValueError, match="mask3d"):
        model(y, (torch.rand(1, 28, 64, 60), *good[1:]))
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.rand(1, 48, 102), (torch.rand(1, 28, 48, 48), torch.rand(1, 28, 48, 102),
                                       torch.rand(1, 1, 48, 102)))
    with pytest.raises(ValueError, match="tuple"):
        model(y, good[0])
    with pytest.raises(ValueError, match="bands"):
        model.prepare_inputs(torch.rand(1, 64, 94), CassiOperator(torch.ones(64, 64), bands=16, step=2))


def test_trunc_normal_distribution():
    torch.manual_seed(0)
    t = trunc_normal_(torch.empty(200_000), std=1.0, bound=2.0)
    assert t.abs().max() <= 2.0
    # N(0,1) truncated to [-2, 2]: std = 0.8796
    assert abs(t.mean().item()) < 0.01 and abs(t.std().item() - 0.8796) < 0.01
    small = trunc_normal_(torch.empty(200_000), std=0.02)
    assert abs(small.std().item() - 0.02) < 5e-4


def test_joint_loss_matches_official_formula():
    gen = torch.Generator().manual_seed(0)
    cube = torch.rand(2, 4, 8, 8, generator=gen)
    labels = torch.randint(0, 5, (2, 8, 8), generator=gen)
    xs = [torch.rand(2, 4, 8, 8, generator=gen) for _ in range(3)]
    thetas = [torch.randn(2, 5, 8, 8, generator=gen) for _ in range(3)]
    loss_fn = CRSDUNLoss()
    assert loss_fn.stage_weights(3) == pytest.approx([0.49, 0.7, 1.0])
    rec = sum(w * ((x - cube) ** 2).mean() for w, x in zip([0.49, 0.7, 1.0], xs))
    log_p = [t.log_softmax(1).gather(1, labels[:, None])[:, 0] for t in thetas]
    seg = sum(w * -lp.mean() for w, lp in zip([0.49, 0.7, 1.0], log_p))
    got_rec, got_seg = loss_fn.terms([xs, thetas], cube, labels)
    torch.testing.assert_close(got_rec, rec)
    torch.testing.assert_close(got_seg, seg)
    torch.testing.assert_close(loss_fn([xs, thetas], cube, labels), rec + 1e-4 * seg)


def test_joint_loss_ignores_unlabelled_pixels_and_checks_shapes():
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(1, 3, 4, 4, generator=gen)
    labels = torch.randint(0, 3, (1, 4, 4), generator=gen)
    masked = labels.clone()
    masked[0, :2] = -100
    loss_fn = CRSDUNLoss(seg_weight=1.0)
    cube = torch.zeros(1, 2, 4, 4)
    _, seg = loss_fn.terms([[cube], [theta]], cube, masked)
    expected = F.cross_entropy(theta[:, :, 2:], labels[:, 2:])
    torch.testing.assert_close(seg, expected)
    with pytest.raises(ValueError, match="segmentation logits"):
        loss_fn([[cube], [theta]], cube, labels[:, :2])
    with pytest.raises(ValueError, match="reconstruction shape"):
        loss_fn([[cube[:, :1]], [theta]], cube, labels)
    with pytest.raises(ValueError, match="int64"):
        loss_fn([[cube], [theta]], cube, labels.float())
