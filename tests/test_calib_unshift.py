"""The handed mask un-shifted by a bilinear phase (calib.unshift): the deconvolution inverts warp_mask's
2-tap filter at the true phase and overshoots at a wrong one or on a mask never shifted; on 48 rows of
KAIST snapshot 01 with the KAIST mask handed over shifted by the fractional (0.6, -1.4) px the phase is
chosen by the held-out score, the reading kept and the estimate given for the handed mask within tolerance;
where the data are explained by the mask as handed (not shifted, or shifted by whole pixels) it never runs."""
from __future__ import annotations

import pytest
import torch

from calib import calibrate
from calib.unshift import OVERSHOOT, overshoot, range_refusal, unshift_mask
from cassi import Mismatch
from cassi.tolerance import CALIBRATION_TOLERANCE
from cassi.warp import warp_mask
from test_calib_status import NEAR, QUICK



def grey_mask(size: int = 96, seed: int = 0) -> torch.Tensor:
    """A grey random mask with 2x2 cells, values in [0, 1], about a fifth of them at either end (as the
    KAIST mask), float64."""
    cells = torch.rand(size // 2, size // 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (1.6 * cells - 0.3).clamp(0, 1).repeat_interleave(2, 0).repeat_interleave(2, 1)


@pytest.mark.parametrize("dx, dy", [(0.6, -1.4), (-0.3, 0.2), (1.75, 0.1)])
def test_the_true_phase_inverts_the_bilinear_shift_and_a_wrong_one_overshoots(dx, dy):
    mask = grey_mask()
    handed = warp_mask(mask, -dx, -dy, 0.0).float()                   # handed(o) = mask(o + (dy, dx))
    fy, fx = dy % 1.0, dx % 1.0
    code, (py, px) = unshift_mask(handed, fy, fx)
    assert -0.5 <= py < 0.5 and -0.5 <= px < 0.5 and py == pytest.approx(fy - (fy >= 0.5))
    # handed(o) = code(o + (py, px)): the un-shifted mask is the original moved by the whole pixels dx - px,
    # dy - py (away from the edges, where the recursion's start value still rings; float32 rounding)
    whole = warp_mask(mask, -float(round(dx - px)), -float(round(dy - py)), 0.0)
    assert (code.double() - whole)[20:-20, 20:-20].abs().max() < 1e-3
    right = overshoot(handed, code, fy, fx)
    assert right < 2e-3
    for wrong in (0.1, -0.1):                        # 0.02-0.06 away from 1/2, 0.15-0.2 towards it
        fx_ = (fx + wrong) % 1.0
        assert overshoot(handed, unshift_mask(handed, fy, fx_)[0], fy, fx_) > max(0.015, 10 * right)


def test_a_mask_too_small_for_the_range_check_is_refused_saying_so():
    """On a 16 px crop at phase 0.3 the check's ringing margins leave no pixel: the refusal says the mask is too
    small (it said the mask left the range "by inf of its maximum"); a large mask is judged by its overshoot."""
    small = grey_mask(16)
    code = unshift_mask(small, 0.3, 0.3)[0]
    excess, reason = range_refusal(small, code, 0.3, 0.3)
    assert excess == overshoot(small, code, 0.3, 0.3) == float("inf")
    assert "too small" in reason and "8 rows and 8 columns" in reason
    assert not any(word in reason for word in ("inf", "nan")), reason
    large = grey_mask(96)
    assert range_refusal(large, unshift_mask(large, 0.3, 0.3)[0], 0.3, 0.3)[1].startswith("the un-shifted mask leaves")


def test_a_mask_never_shifted_overshoots_at_every_phase():
    mask = grey_mask(seed=1).float()
    for fy in (0.1, 0.3, 0.7, 0.9):
        for fx in (0.0, 0.2, 0.6, 0.8):
            assert overshoot(mask, unshift_mask(mask, fy, fx)[0], fy, fx) > OVERSHOOT


@pytest.mark.parametrize("folder", ["kaist", "real"])
def test_the_shipped_masks_as_they_are_overshoot(folder):
    """The KAIST and TSA masks are captures, not a resampled copy: un-shifting them at a phase overshoots."""
    from conftest import shared_path
    from data.io import load_mask

    mask = torch.from_numpy(load_mask(shared_path("data", folder, "mask.mat")))
    for fy, fx in ((0.6, 0.6), (0.2, 0.8), (0.0, 0.3)):
        assert overshoot(mask, unshift_mask(mask, fy, fx)[0], fy, fx) > OVERSHOOT


WARP = Mismatch(dx=0.6, dy=-1.4)
ROWS = slice(104, 152)


@pytest.fixture(scope="module")
def unshifted():
    """48 rows of KAIST snapshot 01 and of the KAIST mask handed over by the inverse of the fractional warp
    (0.6, -1.4) px (bilinear), calibrated with defaults (the solver check on)."""
    from conftest import shared_path
    from data.io import load_mask, load_measurement

    y = torch.from_numpy(load_measurement(shared_path("data", "kaist_meas", "scene01_snapshot.npz")))[ROWS]
    mask = torch.from_numpy(load_mask(shared_path("data", "kaist", "mask.mat")))
    handed = warp_mask(mask.double(), -WARP.dx, -WARP.dy, 0.0).float()[ROWS].contiguous()
    return y, handed, calibrate(y, handed, ranges=NEAR, **{**QUICK, "solver_check": True})


def test_the_fractional_warp_is_un_shifted_and_recovered(unshifted):
    _, _, result = unshifted
    record = result.settings["handed_mask"]
    assert record["detected"] and record["unshift"]["kept"], record
    phase = record["unshift"]["phase"]
    assert phase["fy"] == pytest.approx(0.6, abs=0.03) and phase["fx"] == pytest.approx(0.6, abs=0.03)
    margins = record["unshift"]["margins"]
    assert set(margins) == {"linear", "cubic"}
    assert all(m["margin_in_standard_errors"] > record["unshift"]["margin_required_standard_errors"]
               for m in margins.values())
    assert record["unshift"]["overshoot"] <= OVERSHOOT
    errors = {k: v - WARP.to_dict()[k] for k, v in result.estimate.to_dict().items()}
    assert all(abs(errors[k]) <= CALIBRATION_TOLERANCE[k] for k in CALIBRATION_TOLERANCE), errors
    assert not any("depends on how the mask is read" in r for r in result.reasons), result.reasons
    # everything is given for the handed mask: ranges, the last stage's best point, the slices
    assert result.settings["ranges"]["dx"] == list(NEAR["dx"])
    assert result.history[-1].best == pytest.approx(result.estimate.to_dict())
    for name in ("dx", "dy"):
        values = result.landscape[name]["values"]
        assert min(values) < result.estimate.to_dict()[name] < max(values)
    assert any("(un-shifted mask)" in key for key in result.timings)


def test_operator_npz_holds_the_un_shifted_mask(unshifted, tmp_path):
    from calibrate import summary
    from calib.outputs import write_outputs
    from cassi.operator_file import read_operator_file

    _, handed, result = unshifted
    record = read_operator_file(write_outputs(result, handed, 28, 2, tmp_path)["operator"])
    assert torch.equal(torch.as_tensor(record.mask).float(), result.code.float())
    phase = result.settings["handed_mask"]["phase"]
    assert record.mismatch.dx == pytest.approx(result.estimate.dx - phase["fx"])
    assert record.mismatch.dy == pytest.approx(result.estimate.dy - phase["fy"])
    assert "handed mask: un-shifted by the bilinear phase (fy, fx) = (0." in summary(result)


def test_the_mask_as_the_data_were_made_with_is_never_un_shifted():
    """The KAIST mask as it is with rows of snapshot 01 (made with it): the two readings agree, nothing is tried."""
    from test_calib_status import kaist_rows

    result = calibrate(*kaist_rows(), ranges=NEAR, **QUICK)
    assert "unshift" not in result.settings["handed_mask"] and result.code is None
    assert result.settings["model_selection"]["interpolation"]["chosen"] == "linear"


def test_a_sharp_mask_displaced_in_the_data_is_refused_even_when_tried(monkeypatch):
    """The realistic case: native-grid data made with the sharp mask displaced by (0.6, -1.4) px (pseudo-KAIST
    cube 01, the benchmark's noise), the sharp mask handed over. The two readings are forced to "disagree"
    so that un-shifting is tried: the gate refuses it and the plain reading stays."""
    import calib.model_selection
    from conftest import shared_path
    from data.io import load_cube, load_mask
    from evaluation.protocol import Noise
    from cassi import CassiOperator

    monkeypatch.setattr(calib.model_selection, "AGREEMENT", 0.0)
    mask = torch.from_numpy(load_mask(shared_path("data", "kaist", "mask.mat"))).double()
    cube = torch.from_numpy(load_cube(shared_path("data", "pseudo_kaist", "scene01.npz")))[:, ROWS]
    displaced = warp_mask(mask, WARP.dx, WARP.dy, 0.0).float()[ROWS].contiguous()
    y = Noise(peak=1e4, read=0.005, seed=0).apply(CassiOperator(displaced, 28, 2)(cube[None]), 0)[0]
    result = calibrate(y, mask.float()[ROWS].contiguous(), ranges=NEAR, **QUICK)
    record = result.settings["handed_mask"]
    assert record["unshift"]["tried"] and not record["unshift"]["kept"] and not record["detected"], record
    assert result.code is None and result.status != "ok"
