"""The CASSI operator: conventions, adjointness, gradients, scipy agreement, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.io import savemat
from scipy.ndimage import affine_transform

from cassi import CassiOperator, Mismatch, shift, shift_back, warp_mask
from cassi.translate import pick

MISMATCH = Mismatch(dx=0.3, dy=-0.7, theta=0.5, a1=2.03, alpha=0.4)


def scipy_warp(mask: np.ndarray, dx: float, dy: float, theta_deg: float) -> np.ndarray:
    t = math.radians(theta_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    centre = (np.array(mask.shape) - 1) / 2
    offset = centre - rot.T @ centre - np.array([dy, dx])
    return affine_transform(mask, rot.T, offset=offset, order=1, mode="constant")


def test_nominal_band_c_moves_right_by_2c():
    x = torch.zeros(1, 28, 8, 10)
    x[0, 5, 3, 4] = 1.0
    y = CassiOperator(torch.ones(8, 10))(x)
    assert y.shape == (1, 8, 10 + 54)
    assert torch.nonzero(y[0]).tolist() == [[3, 4 + 2 * 5]]


def test_nominal_equals_toolbox_shift_sum_and_shift_back():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(12, 16, generator=g)
    x = torch.rand(2, 28, 12, 16, generator=g)
    op = CassiOperator(mask)
    assert torch.allclose(op(x), shift(x * mask).sum(1), atol=1e-6)
    y = op(x)
    assert torch.equal(op.input_setting(y, "H"), shift_back(y / 28 * 2, bands=28))
    assert torch.equal(op.mask_setting("Phi", 2), shift(mask.expand(2, 28, 12, 16)))
    phi, phi_s = op.mask_setting("Phi_PhiPhiT", 2)
    expected = (phi ** 2).sum(1)
    assert torch.equal(phi_s, torch.where(expected == 0, torch.ones_like(expected), expected))


@pytest.mark.parametrize("mismatch", [None, MISMATCH, Mismatch(dx=1, dy=-2, a1=2.5, alpha=3.0)])
@pytest.mark.parametrize("dispersion", ["linear", "integer"])
def test_dot_product(mismatch, dispersion):
    g = torch.Generator().manual_seed(1)
    op = CassiOperator(torch.rand(16, 20, generator=g, dtype=torch.float64), bands=28,
                       mismatch=mismatch, dispersion=dispersion)
    x = torch.rand(3, 28, 16, 20, generator=g, dtype=torch.float64)
    y = torch.rand(3, 16, 20 + 54, generator=g, dtype=torch.float64)
    lhs, rhs = (op(x) * y).sum(), (x * op.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) / abs(float(lhs)) < 1e-6


@pytest.mark.parametrize("mismatch", [None, MISMATCH])
@pytest.mark.parametrize("dispersion", ["linear", "integer"])
def test_adjoint_without_autograd_equals_the_tracked_adjoint(mismatch, dispersion):
    g = torch.Generator().manual_seed(7)
    op = CassiOperator(torch.rand(2, 16, 20, generator=g, dtype=torch.float64), mismatch=mismatch,
                       dispersion=dispersion)
    y = torch.rand(2, 16, 20 + 54, generator=g, dtype=torch.float64)
    with torch.no_grad():
        fast = op.adjoint(y)  # written band by band into one cube
    tracked = op.adjoint(y.clone().requires_grad_(True))
    assert tracked.requires_grad and not fast.requires_grad
    assert torch.allclose(fast, tracked.detach(), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="without autograd"):
        pick(y.clone().requires_grad_(True), op.band_terms()[0], 16, 20, out=torch.empty(2, 16, 20))


def test_column_major_mask_gives_the_same_operator():
    g = torch.Generator().manual_seed(8)
    mask = torch.rand(20, 16, generator=g).T  # as a MATLAB mask arrives: column-major
    x = torch.rand(1, 28, 16, 20, generator=g)
    op, ref = CassiOperator(mask), CassiOperator(mask.contiguous())
    assert op.mask.is_contiguous()
    assert torch.equal(op(x), ref(x)) and torch.equal(op.adjoint(op(x)), ref.adjoint(ref(x)))


def test_mismatch_changes_the_measurement_and_zero_mismatch_is_exact():
    g = torch.Generator().manual_seed(2)
    mask, x = torch.rand(16, 20, generator=g), torch.rand(1, 28, 16, 20, generator=g)
    nominal = CassiOperator(mask)(x)
    assert torch.equal(CassiOperator(mask, mismatch=Mismatch(a1=2.0))(x), nominal)
    assert torch.equal(warp_mask(mask, 0.0, 0.0, 0.0), mask)
    assert (CassiOperator(mask, mismatch=MISMATCH)(x) - nominal).abs().max() > 1e-2


@pytest.mark.parametrize("dx,dy,theta", [(0.3, -1.7, 0.0), (2.5, 1.2, 0.8), (-3.0, 0.4, -1.0),
                                         (0.0, 0.0, 5.0), (1.0, 2.0, 0.0)])
def test_warp_equals_scipy_affine_transform(dx, dy, theta):
    mask = np.random.default_rng(0).random((37, 41))
    ours = warp_mask(torch.tensor(mask, dtype=torch.float32), dx, dy, theta).double().numpy()
    assert np.abs(ours - scipy_warp(mask, dx, dy, theta)).max() < 1e-5


def test_warp_directions_on_screen():
    mask = torch.zeros(21, 21)
    mask[10, 14] = 1.0  # right of the centre
    assert torch.nonzero(warp_mask(mask, dx=2.0)).tolist() == [[10, 16]]
    assert torch.nonzero(warp_mask(mask, dy=3.0)).tolist() == [[13, 14]]
    # counter-clockwise on screen (rows grow downwards): a point right of centre moves up
    assert torch.nonzero(warp_mask(mask, theta_deg=90.0) > 0.5).tolist() == [[6, 10]]


def test_dispersion_offsets_follow_a1_and_alpha():
    x = torch.zeros(1, 28, 40, 40, dtype=torch.float64)
    x[0, 27, 20, 5] = 1.0
    op = CassiOperator(torch.ones(40, 40, dtype=torch.float64), mismatch=Mismatch(a1=2.0, alpha=90.0))
    y = op(x)  # d(27) = 27, rotated onto the rows: offset (-27, 27) -> row 20 - 27 < 0: light lost
    assert float(y.sum()) == pytest.approx(0.0, abs=1e-9)
    x[0, 27, 20, 5], x[0, 14, 20, 5] = 0.0, 1.0  # d(14) = 1 -> offset (-1, 27)
    assert torch.nonzero(op(x)[0] > 1e-9).tolist() == [[19, 5 + 27]]
    half = CassiOperator(torch.ones(40, 40, dtype=torch.float64), mismatch=Mismatch(a1=2.1))
    x[0, 14, 20, 5], x[0, 0, 20, 5] = 0.0, 1.0  # d(0) = -2.1 * 13.5 = -28.35 -> col 5 - 1.35
    y = half(x)[0, 20]
    assert float(y[3]) == pytest.approx(0.35) and float(y[4]) == pytest.approx(0.65)


@pytest.mark.parametrize("step", [1, 3])
def test_a_mismatch_left_without_a1_disperses_at_the_operators_step(step):
    """CassiOperator(mask, 28, 3, Mismatch(dx=0.5)) dispersed 2 px/band (the toolbox's step) in a detector sized for 3,
    band 0 at column 13.5, without a word; simulate_measurement likewise. An a1 given, 2.0 included, is kept."""
    from cassi.simulator import simulate_measurement

    mask = torch.rand(12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cube = torch.rand(1, 28, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    shifted = Mismatch(dx=0.5)
    op = CassiOperator(mask, 28, step, shifted)
    _, cols = op.offsets()
    assert torch.allclose(cols, step * torch.arange(28, dtype=torch.float64))      # band c at column step * c
    assert op.mismatch.a1 == step and shifted.a1 == 2.0 and Mismatch.from_dict({"dx": 0.5}).a1 == 2.0
    explicit = Mismatch(dx=0.5, a1=float(step))
    assert torch.equal(op(cube), CassiOperator(mask, 28, step, explicit)(cube))
    simulated = [simulate_measurement(cube, mask, m, step, spatial=2) for m in (shifted, explicit)]
    assert torch.equal(*simulated)
    assert CassiOperator(mask, 28, step, Mismatch(dx=0.5, a1=2.0)).mismatch.a1 == 2.0   # given: kept
    assert CassiOperator(mask, 28, step).is_nominal and CassiOperator(mask, 28, step, Mismatch()).is_nominal
    assert CassiOperator(mask, 28, 2, shifted).mismatch is shifted                      # step 2: the toolbox's own


def test_integer_mode_rounds_with_straight_through_gradient():
    g = torch.Generator().manual_seed(3)
    mask, x = torch.rand(16, 20, generator=g), torch.rand(1, 28, 16, 20, generator=g)
    a1 = torch.tensor(2.0, requires_grad=True)
    op = CassiOperator(mask, mismatch=Mismatch(a1=a1), dispersion="integer")
    y = op(x)
    assert torch.allclose(y, CassiOperator(mask)(x), atol=1e-6)
    y.pow(2).sum().backward()
    assert a1.grad is not None and float(a1.grad.abs()) > 0


@pytest.mark.parametrize("name", ["dx", "dy", "theta", "a1", "alpha"])
def test_gradients_match_finite_differences(name):
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(16, 20, generator=g, dtype=torch.float64)
    x = torch.rand(2, 28, 16, 20, generator=g, dtype=torch.float64)
    base = MISMATCH.to_dict()

    def loss(values: dict) -> torch.Tensor:
        return CassiOperator(mask, mismatch=Mismatch(**values))(x).pow(2).sum()

    param = torch.tensor(base[name], dtype=torch.float64, requires_grad=True)
    loss({**base, name: param}).backward()
    eps = 1e-6
    fd = (loss({**base, name: base[name] + eps}) - loss({**base, name: base[name] - eps})) / (2 * eps)
    assert float(param.grad) == pytest.approx(float(fd), rel=1e-5, abs=1e-6)


def test_per_sample_masks_and_network_settings_shapes():
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(3, 8, 12, generator=g)
    op = CassiOperator(masks, bands=6, step=1, mismatch=Mismatch(dx=0.5, a1=1.0))
    x = torch.rand(3, 6, 8, 12, generator=g)
    y = op(x)
    assert y.shape == (3, 8, 12 + 5)
    assert torch.allclose(y[1], CassiOperator(masks[1], 6, 1, Mismatch(dx=0.5, a1=1.0))(x[1:2])[0])
    assert op.input_setting(y, "H").shape == (3, 6, 8, 12)
    assert op.input_setting(y, "HM").shape == (3, 6, 8, 12)
    assert op.input_setting(y, "Y").shape == (3, 8, 17)
    assert op.mask_setting("Mask", 3).shape == (3, 6, 8, 12)


def test_bad_input_is_named():
    op = CassiOperator(torch.rand(8, 10))
    with pytest.raises(ValueError, match=r"cube must be \(B, 28, 8, 10\)"):
        op(torch.rand(1, 27, 8, 10))
    with pytest.raises(ValueError, match=r"measurement must be \(B, 8, 64\)"):
        op.adjoint(torch.rand(1, 8, 63))
    with pytest.raises(ValueError, match="NaN or Inf"):
        op.input_setting(torch.full((1, 8, 64), float("nan")))
    with pytest.raises(ValueError, match="mask must be"):
        CassiOperator(torch.rand(10))
    with pytest.raises(ValueError, match="NaN or Inf"):
        CassiOperator(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="unknown mismatch parameter"):
        Mismatch.from_dict({"dz": 1.0})
    with pytest.raises(ValueError, match="2 masks but the batch has 3"):
        CassiOperator(torch.rand(2, 8, 10))(torch.rand(3, 28, 8, 10))


def test_operator_file_round_trip(tmp_path):
    from cassi.operator_file import load_operator, save_operator

    op = CassiOperator(torch.rand(8, 10), bands=28, step=2, mismatch=MISMATCH, dispersion="integer")
    path = save_operator(tmp_path / "op.npz", op)
    back = load_operator(path)
    assert torch.equal(back.mask, op.mask) and back.dispersion == "integer"
    assert back.mismatch.to_dict() == pytest.approx(MISMATCH.to_dict())
    np.savez(tmp_path / "bad.npz", mask=np.ones((8, 10)))
    with pytest.raises(ValueError, match="lacks key"):
        load_operator(tmp_path / "bad.npz")
    np.savez(tmp_path / "pickled.npz", **{**np.load(path), "mask": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match=r"pickled.npz: not a readable \.npz operator file written by calibrate.py "
                       r"\(it holds pickled Python objects, which are never loaded\)$"):
        load_operator(tmp_path / "pickled.npz")
    np.save(tmp_path / "op.npy", np.ones((8, 10)))
    savemat(tmp_path / "op.mat", {"mask": np.ones((8, 10))})
    for other in ("op.npy", "op.mat"):
        with pytest.raises(ValueError, match=rf"{other}: not an \.npz operator file written by calibrate.py"):
            load_operator(tmp_path / other)


def test_operator_file_records_the_calibration_status_and_every_reader_refuses_a_failed_one(tmp_path):
    from calib.instrument import load_instrument
    from cassi.operator_file import load_operator, read_operator_file, save_operator

    op = CassiOperator(torch.rand(8, 10), mismatch=MISMATCH)
    assert read_operator_file(save_operator(tmp_path / "plain.npz", op)).status is None
    assert read_operator_file(save_operator(tmp_path / "amb.npz", op, status="ambiguous")).status == "ambiguous"
    failed = save_operator(tmp_path / "failed.npz", op, status="failed")
    for reader in (read_operator_file, load_operator, load_instrument):
        with pytest.raises(ValueError, match='failed.npz: this operator comes from a calibration whose status is "failed"'):
            reader(failed)


def test_operator_file_records_the_phase_of_a_handed_mask_its_code_was_recovered_from(tmp_path):
    from cassi.operator_file import read_operator_file, save_operator

    op = CassiOperator(torch.rand(8, 10), mismatch=MISMATCH)
    assert read_operator_file(save_operator(tmp_path / "plain.npz", op)).code_phase is None   # the handed mask
    assert read_operator_file(save_operator(tmp_path / "code.npz", op, code_phase=(0.25, -0.3))).code_phase == (
        0.25, -0.3)
    np.savez(tmp_path / "bad.npz", **{**np.load(tmp_path / "code.npz"), "code_phase": np.array([0.25])})
    with pytest.raises(ValueError, match=r"bad.npz: key 'code_phase' must be the 2 finite numbers \(fy, fx\)"):
        read_operator_file(tmp_path / "bad.npz")


def test_an_operator_folder_is_named_as_a_folder_with_the_file_inside(tmp_path):
    """``--operator DIR`` (the calibration folder) used to say 'operator file not found: DIR'."""
    from cassi.operator_file import read_operator_file, save_operator

    with pytest.raises(ValueError, match=r"empty is a folder, not an operator file; pass the operator\.npz"):
        read_operator_file((tmp_path / "empty").mkdir() or tmp_path / "empty")
    save_operator(tmp_path / "cal" / "operator.npz", CassiOperator(torch.rand(8, 10), mismatch=MISMATCH))
    with pytest.raises(ValueError, match=r"cal is a folder, not an operator file; pass .*cal/operator\.npz$"):
        read_operator_file(tmp_path / "cal")
