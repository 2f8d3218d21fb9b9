"""The calibrated instrument as an operator (calib.instrument): the enlarged-grid model behind the
CassiOperator interface, its network inputs, and the operator file that records N, K."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calib.forward_model import EnlargedGridOperator
from calib.instrument import InstrumentOperator, instrument_operator, load_instrument
from cassi import CassiOperator, Mismatch
from cassi.gap_tv import gap_tv
from cassi.operator_file import load_operator, read_operator_file, save_operator
from cassi.simulator import simulate_measurement
from data.synthetic import random_mask, synthetic_scene

DRIFT = Mismatch(dx=0.7, dy=-1.3, theta=0.4, a1=2.03, alpha=0.5)


def _mask(h: int = 20, w: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(random_mask(h, w, seed=seed)).double()


@pytest.mark.parametrize("mismatch", [None, DRIFT])
def test_without_oversampling_every_network_input_is_the_native_operators(mismatch):
    mask = _mask()
    native, model = CassiOperator(mask, 28, 2, mismatch), InstrumentOperator(mask, 28, 2, mismatch, 1, 1)
    x = torch.rand(2, 28, 20, 24, dtype=torch.float64)
    y = native(x)
    for kind in ("H", "HM", "Y"):
        torch.testing.assert_close(model.input_setting(y, kind), native.input_setting(y, kind), rtol=0, atol=1e-12)
    for kind in ("Phi", "Mask"):
        torch.testing.assert_close(model.mask_setting(kind, 2), native.mask_setting(kind, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(model(x), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.adjoint(y), native.adjoint(y), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.gram_row_sums(), native.gram_row_sums(), rtol=0, atol=1e-12)


def test_oversampled_it_is_the_enlarged_grid_model_with_consistent_inputs():
    mask = _mask()
    op = InstrumentOperator(mask, 28, 2, DRIFT, 4, 2)
    x = torch.rand(2, 28, 20, 24, dtype=torch.float64)
    y = torch.rand(2, 20, 24 + 54, dtype=torch.float64)
    torch.testing.assert_close(op(x), EnlargedGridOperator(mask, DRIFT)(x), rtol=0, atol=0)
    assert float((op(x) * y).sum() - (x * op.adjoint(y)).sum()) == pytest.approx(0, abs=1e-9)
    # phi: the measurement of a uniform unit image in each band, so A x = sum_c phi_c for x = 1
    torch.testing.assert_close(op.phi.sum(1), op(torch.ones(1, 28, 20, 24, dtype=torch.float64)))
    # mask3d: band throughput divided out, so an interior band sees a blurred copy of the warped mask
    assert op.throughput[0] == pytest.approx(0.5 * op.throughput[14], rel=0.15)
    warped = CassiOperator(mask, 28, 2, DRIFT).mask3d[0, 14, 3:-3, 3:-3].flatten()
    effective = op.mask3d[0, 14, 3:-3, 3:-3].flatten()
    assert float(effective.mean()) == pytest.approx(float(warped.mean()), rel=0.05)
    assert float(torch.corrcoef(torch.stack([effective, warped]))[0, 1]) > 0.8
    # back-projection: a uniform detector reads back as 1 in every band away from the borders
    ones = op.back_project(torch.ones(1, 20, 24 + 54, dtype=torch.float64))
    torch.testing.assert_close(ones[..., 3:-3, 3:-3], torch.ones_like(ones[..., 3:-3, 3:-3]))


def test_per_sample_masks_and_networks_take_the_model():
    from models import create_model

    masks = torch.stack([torch.from_numpy(random_mask(64, 64, seed=s)) for s in (1, 2)])
    op = InstrumentOperator(masks, 28, 2, DRIFT, 2, 1)
    x = torch.rand(2, 28, 64, 64)
    for i in range(2):
        torch.testing.assert_close(op(x)[i:i + 1], InstrumentOperator(masks[i], 28, 2, DRIFT, 2, 1)(x[i:i + 1]))
    single = InstrumentOperator(masks[0], 28, 2, DRIFT, 2, 1)
    torch.manual_seed(0)
    for name in ("mst_s", "hsra_dum_3stg"):
        model = create_model(name).eval()
        with torch.no_grad():
            out = model.reconstruction(model(**model.prepare_inputs(single(x[:1]), single)))
        assert out.shape == (1, 28, 64, 64) and torch.isfinite(out).all()


def test_gap_tv_through_the_model_beats_the_native_operator_on_simulator_data():
    cube, _ = synthetic_scene(48, 48, 28, seed=2)
    x = torch.from_numpy(cube)[None]
    mask = _mask(48, 48).float()
    y = simulate_measurement(x, mask, DRIFT, spatial=4, spectral=2)
    errors = {}
    for label, op in (("native", CassiOperator(mask, 28, 2, DRIFT)), ("model", InstrumentOperator(mask, 28, 2, DRIFT))):
        errors[label] = float((gap_tv(y, op, iterations=30) - x).norm())
    assert errors["model"] < errors["native"], errors


def test_operator_file_records_the_forward_model(tmp_path):
    mask = _mask().float()
    path = save_operator(tmp_path / "op.npz", instrument_operator(mask, 28, 2, DRIFT, (4, 2)))
    record = read_operator_file(path)
    assert record.oversample == (4, 2) and record.mismatch.to_dict() == pytest.approx(DRIFT.to_dict())
    back = load_instrument(path)
    assert isinstance(back, InstrumentOperator) and back.oversample == (4, 2)
    x = torch.rand(1, 28, 20, 24)
    torch.testing.assert_close(back(x), InstrumentOperator(mask, 28, 2, DRIFT)(x))
    with pytest.raises(ValueError, match="load_instrument"):
        load_operator(path)
    native = save_operator(tmp_path / "native.npz", instrument_operator(mask, 28, 2, DRIFT, (1, 1)))
    assert type(load_instrument(native)) is CassiOperator and read_operator_file(native).oversample == (1, 1)
    old = dict(np.load(native))                  # files written before N, K were recorded are native
    del old["spatial"], old["spectral"]
    np.savez(tmp_path / "old.npz", **old)
    assert load_operator(tmp_path / "old.npz").oversample == (1, 1)


def test_operator_file_records_the_mask_reading(tmp_path):
    """A cubic native-grid calibration: the file records the reading, load_instrument rebuilds that model
    (not the bilinear native operator), load_operator refuses it; files without the key read bilinearly;
    a bad reading, or cubic with N > 1, is a clear error naming the file and key."""
    mask = _mask().float()
    op = instrument_operator(mask, 28, 2, DRIFT, (1, 1), "cubic")
    assert isinstance(op, InstrumentOperator) and op.mask_interpolation == "cubic"
    assert instrument_operator(mask, 28, 2, DRIFT).mask_interpolation == "linear"
    path = save_operator(tmp_path / "cubic.npz", op)
    assert read_operator_file(path).mask_interpolation == "cubic"
    back = load_instrument(path)
    assert back.mask_interpolation == "cubic" and back.oversample == (1, 1)
    x = torch.rand(1, 28, 20, 24, dtype=torch.float64)
    cubic = EnlargedGridOperator(mask.double(), DRIFT, 28, 2, 1, 1, interpolation="cubic")
    torch.testing.assert_close(back.double()(x), cubic(x), rtol=0, atol=1e-6)
    assert (back.double()(x) - CassiOperator(mask.double(), 28, 2, DRIFT)(x)).abs().max() > 1e-3   # not bilinear
    with pytest.raises(ValueError, match="cubic.*load_instrument"):
        load_operator(path)
    old = dict(np.load(path))                    # files written before the reading was recorded are bilinear
    del old["mask_interpolation"]
    np.savez(tmp_path / "old.npz", **old)
    assert read_operator_file(tmp_path / "old.npz").mask_interpolation == "linear"
    assert type(load_operator(tmp_path / "old.npz")) is CassiOperator
    for name, changes in {"bad": {"mask_interpolation": np.str_("nearest")},
                          "wide": {"spatial": np.int64(4), "spectral": np.int64(2)},
                          "number": {"mask_interpolation": np.float64(1.0)}}.items():
        np.savez(tmp_path / f"{name}.npz", **{**dict(np.load(path)), **changes})
        with pytest.raises(ValueError, match=rf"{name}\.npz.*mask_interpolation"):
            load_instrument(tmp_path / f"{name}.npz")
