"""Forward-model selection by the data (calib.model_selection): the native grid for native-grid data,
the enlarged grid for enlarged-grid data (tests/test_calib_cli.py, the CLI's default run), the scores
recorded, a choice inside the criterion's noise said, and an explicit model bypassing the selection."""
from __future__ import annotations

import pytest
import torch

from calib import calibrate
from calib.model_selection import ModelFit, choose
from calib.ranges import pixel_scales
from calib.result import StageClock
from cassi import Mismatch
from cassi.warp import warp_mask
from test_calib_status import NEAR, QUICK, kaist_rows

WARP = Mismatch(dx=0.6, dy=-1.4)


def warped_kaist_rows(warp: Mismatch = WARP) -> tuple[torch.Tensor, torch.Tensor]:
    """32 rows of KAIST snapshot 01 (native grid) and of the KAIST mask handed over warped by the inverse
    of (dx, dy) (default (0.6, -1.4) px; theta 0: the inverse is the opposite shift, bilinear)."""
    from data.io import load_mask
    from conftest import shared_path

    y, _ = kaist_rows()
    mask = torch.from_numpy(load_mask(shared_path("data", "kaist", "mask.mat")))
    handed = warp_mask(mask.double(), -warp.dx, -warp.dy, 0.0).float()[112:144].contiguous()
    return y, handed


@pytest.fixture(scope="module")
def fractional():
    """The default calibration of the mask handed over warped by the fractional (0.6, -1.4) px (with the
    solver check), the un-shifted reading (calib.unshift, tests/test_calib_unshift.py) refused: the plain
    readings, as when its gate says no."""
    import calib.unshift

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calib.unshift, "MARGIN", float("inf"))
        return calibrate(*warped_kaist_rows(), ranges=NEAR, **{**QUICK, "solver_check": True})


def test_auto_picks_the_native_grid_for_native_grid_data(fractional):
    result = fractional
    selection = result.settings["model_selection"]
    assert selection["mode"] == "auto" and selection["chosen"] == [1, 1] == result.settings["oversample"]
    assert selection["compared_at"] == "search estimates"                  # decisive: only N=1 was refined
    scores = {tuple(c["oversample"]): c["score"] for c in selection["candidates"]}
    assert set(scores) == {(1, 1), (4, 2)} and scores[(1, 1)] < scores[(4, 2)]
    assert selection["resolved"] and selection["margin_in_standard_errors"] > 2
    assert abs(result.estimate.dx - WARP.dx) < 0.5 and abs(result.estimate.dy - WARP.dy) < 0.3, result.estimate
    assert any("(N=4, K=2)" in key for key in result.timings)      # the other model's cost is counted


def test_a_fractional_warp_of_the_handed_mask_is_ambiguous_not_ok(fractional):
    """The bilinearly warped mask is a resampled image: read again bilinearly it pulls the fit towards
    integer shifts (dx +0.35 px here), read with Keys' cubic kernel less (+0.25), and no reading is exact.
    The data prefer the cubic reading, the estimates of the two differ: "ambiguous", not a confident
    wrong "ok" (the status was "ok" before the check)."""
    selection = fractional.settings["model_selection"]["interpolation"]
    assert [c["interpolation"] for c in selection["candidates"]] == ["linear", "cubic"]
    assert selection["chosen"] == "cubic" == fractional.settings["mask_interpolation"]
    assert selection["resolved"] and selection["estimate_spread_pixel_units"] > 0.05
    linear, cubic = (c["estimate"] for c in selection["candidates"])
    assert abs(cubic["dx"] - WARP.dx) < abs(linear["dx"] - WARP.dx)          # the sharper reading is less biased
    assert fractional.estimate.to_dict() == pytest.approx(cubic)
    assert fractional.status == "ambiguous"
    assert any("depends on how the mask is read" in reason for reason in fractional.reasons), fractional.reasons
    handed = fractional.settings["handed_mask"]       # the KAIST mask is a grey capture, not a resampled binary code
    assert not handed["detected"] and "continuum of grey levels" in handed["reason"] and fractional.code is None
    unshift = handed["unshift"]                       # un-shifting was tried (the readings disagree) and refused
    assert unshift["tried"] and not unshift["kept"] and "standard errors" in unshift["reason"]
    from calibrate import summary

    assert "mask reading (native grid): cubic kept (linear " in summary(fractional)       # what the CLI prints


def test_the_cubic_reading_is_handed_on(fractional, tmp_path):
    """What the calibration hands on is the model it calibrated: the solver check and operator.npz use the
    cubic reading, and load_instrument rebuilds it."""
    from calib.instrument import load_instrument
    from calibrate import summary
    from calib.outputs import write_outputs

    assert fractional.checks["mask_interpolation"] == "cubic" and fractional.checks["oversample"] == [1, 1]
    assert "through the N=1, K=1 model (cubic mask reading)" in summary(fractional)
    _, mask = warped_kaist_rows()
    files = write_outputs(fractional, mask, 28, 2, tmp_path)
    op = load_instrument(files["operator"])
    assert op.mask_interpolation == "cubic" and op.oversample == (1, 1)
    assert op.mismatch.to_dict() == pytest.approx(fractional.estimate.to_dict())
    from calib.pipeline import REFINE_SCORE                   # --solver gap_tv polishes through that model too
    from calib.solver_score import inner_solver

    y, _ = warped_kaist_rows()
    criterion = inner_solver("gap_tv", None, y, mask, 28, 2).criterion(
        y, mask, 28, 2, REFINE_SCORE.with_(spatial=1, spectral=1, interpolation="cubic"), None)
    assert criterion.operator(torch.zeros(1, 5, dtype=torch.float64)).interpolation == "cubic"


def test_an_integer_warp_of_the_handed_mask_is_exact_and_ok():
    """No resampling: the two readings agree (at whole-pixel shifts they are one model) and the estimate is exact."""
    warp = Mismatch(dx=1.0, dy=-1.0)
    result = calibrate(*warped_kaist_rows(warp), ranges=NEAR, **QUICK)
    selection = result.settings["model_selection"]["interpolation"]
    assert selection["chosen"] == "linear" and selection["estimate_spread_pixel_units"] < 0.025
    assert result.status == "ok", result.reasons
    errors = {k: v - warp.to_dict()[k] for k, v in result.estimate.to_dict().items()}
    assert all(abs(e) < 0.01 for e in errors.values()), errors
    assert "unshift" not in result.settings["handed_mask"]            # the readings agree: never un-shifted


def test_without_a_decisive_lead_every_model_is_refined_and_compared_again(monkeypatch):
    import calib.model_selection

    monkeypatch.setattr(calib.model_selection, "DECISIVE", float("inf"))
    y, mask = warped_kaist_rows()
    result = calibrate(y, mask, ranges=NEAR, **QUICK)
    selection = result.settings["model_selection"]
    assert selection["compared_at"] == "refined estimates" and selection["search"]["chosen"] == [1, 1]
    assert selection["chosen"] == [1, 1] and selection["resolved"]
    assert any(key.startswith("2C joint (N=4, K=2)") for key in result.timings)     # both were refined


def test_an_explicit_model_bypasses_the_selection():
    y, mask = warped_kaist_rows()
    result = calibrate(y, mask, ranges=NEAR, oversample=(1, 1), **QUICK)
    selection = dict(result.settings["model_selection"])
    assert selection.pop("interpolation")["chosen"] == "cubic"         # the native grid's reading is still checked
    assert selection == {"mode": "explicit", "chosen": [1, 1]}
    assert not any("N=" in key for key in result.timings)                  # one search only
    assert any("(linear mask)" in key for key in result.timings)


def fit(oversample: tuple[int, int], parts: list[float], point: list[float]) -> ModelFit:
    """A searched model with these refinement-setting block scores at its search estimate ``point``."""
    return ModelFit(oversample, None, None, None, torch.tensor(point, dtype=torch.float64), [], {},
                    torch.tensor(parts) * 2, StageClock(), torch.tensor(parts))


def test_a_choice_inside_the_noise_is_said_when_the_estimates_differ():
    scales = pixel_scales(64, 64, 28, 2)
    native = fit((1, 1), [1.0, 1.2, 0.9, 1.1], [0.0, 0.0, 0.0, 2.0, 0.0])
    close = fit((4, 2), [1.1, 1.1, 1.0, 1.05], [0.5, 0.0, 0.0, 2.0, 0.0])
    chosen, record, reasons = choose([close, native], scales, z=2.0)
    assert chosen is native and record["chosen"] == [1, 1] and not record["resolved"]
    assert record["estimate_spread_pixel_units"] == 0.5
    assert len(reasons) == 1 and "do not decide the forward model" in reasons[0]
    same_place = fit((4, 2), [1.1, 1.1, 1.0, 1.05], [0.02, 0.0, 0.0, 2.0, 0.0])
    assert choose([native, same_place], scales, z=2.0)[2] == []            # they agree: nothing to say
    far_worse = fit((4, 2), [2.0, 2.2, 1.9, 2.1], [0.5, 0.0, 0.0, 2.0, 0.0])
    _, record, reasons = choose([native, far_worse], scales, z=2.0)
    assert record["resolved"] and record["margin_in_standard_errors"] > 2 and reasons == []
