"""calib.calibrate end to end at small size with a frozen-network solver (the status: test_calib_status)."""
from __future__ import annotations

import math

import pytest
import torch

from calib import calibrate
from calib.forward_model import PARAMETER_NAMES
from calib.refine import RefineSettings
from calib.search import SearchSettings
from cassi import Mismatch
from cassi.noise import add_noise
from cassi.simulator import simulate_measurement
from data.synthetic import random_mask, synthetic_scene

QUICK = {"search": SearchSettings(beams=2, polish_rounds=1),
         "refinement": RefineSettings(stages=(("2C joint", PARAMETER_NAMES, 1),))}


def measure(size: int, truth: Mismatch, mask: torch.Tensor | None = None, seed: int = 0):
    cube, _ = synthetic_scene(size, size, 28, seed=seed)
    mask = torch.from_numpy(random_mask(size, size, seed=seed + 1)) if mask is None else mask
    y = simulate_measurement(torch.from_numpy(cube)[None], mask, truth, spatial=4, spectral=2)
    return add_noise(y, peak=1e4, read_noise=0.005, seed=seed)[0], mask


def test_frozen_mst_solver_runs_in_the_pipeline(tmp_path):
    from models import create_model

    torch.manual_seed(0)
    path = tmp_path / "mst_s_random.pth"
    torch.save(create_model("mst_s").state_dict(), path)
    y, mask = measure(32, Mismatch(dx=0.4, a1=2.01))
    result = calibrate(y, mask, solver="mst_s", ckpt=str(path), progress=False, network_stage=True, **QUICK)
    assert result.checks["solver"] == "mst_s" and result.settings["network_stage"] is True
    assert result.settings["noise_correction"]["steps"]          # the network starts from the corrected point
    names = [r.name for r in result.history]
    assert names.index("2F noise-corrected") < names.index("1e polish (solver)")
    assert math.isfinite(result.checks["residual_nominal"]) and math.isfinite(result.checks["residual_calibrated"])
    with pytest.raises(ValueError, match="checkpoint"):
        calibrate(y, mask, solver="mst_s", progress=False)


def test_an_inner_solver_s_stages_are_named_and_timed_apart_from_the_held_out_ones():
    """With --solver S the refinement stages S decides repeat the held-out ones ("2C joint"): they are recorded as
    "2C joint (solver)" in ``history`` and ``timings``, each with its own seconds (the shared name had added the
    held-out stage's time to S's), and stages.png labels them with S's criterion."""
    from calib.plots import stage_criteria

    y, mask = measure(32, Mismatch(dx=0.4, a1=2.01))
    result = calibrate(y, mask, solver="gap_tv", progress=False, solver_check=False, **QUICK)
    names = [r.name for r in result.history]
    assert len(names) == len(set(names)) and {"2C joint", "2C joint (solver)", "1e polish (solver)"} <= set(names)
    solver_stages = [r for r in result.history if r.name.endswith(" (solver)")]
    for record in solver_stages:
        assert record.seconds == pytest.approx(result.timings[f"{record.name}_s"], abs=2e-3), record.name
    labels = dict(zip(["nominal", *names], stage_criteria(result)))
    assert {labels[r.name] for r in solver_stages} == {"solver criterion"} and labels["2C joint"] != "solver criterion"


def test_a_mask_too_short_for_the_blind_score_is_refused_before_any_work():
    """Every stripe of the blind score leaves out its border rows (2 held-out, 3 GAP-TV): a mask of no more rows than
    both borders is refused naming the minimum (it ran the search, then failed with 'not enough values to unpack')."""
    y, mask = measure(4, Mismatch())
    with pytest.raises(ValueError, match=r"the mask has 4 rows; .* leaves out 2 rows .* needs at least 5$"):
        calibrate(y, mask, progress=False, **QUICK)
    y, mask = measure(6, Mismatch())
    with pytest.raises(ValueError, match=r"the mask has 6 rows; .* leaves out 3 rows .* needs at least 7$"):
        calibrate(y, mask, solver="gap_tv", progress=False, **QUICK)


@pytest.mark.parametrize("bands", [1, 3])
def test_fewer_bands_than_the_spectral_basis_are_refused_before_any_work(bands):
    """The blind score keeps each spectrum in the span of the first 6 DCT cosines over the band index: 3 bands ended
    in 'spectral basis size must be in [1, 3], got 6' from inside the search, 1 band in a ZeroDivisionError (a1's
    pixel scale). Without the basis, one band is still refused: a1 and alpha move one band against another."""
    from calib.pipeline import REFINE_SCORE, SEARCH_SCORE

    mask = torch.from_numpy(random_mask(16, 16, seed=1))
    y = torch.rand(16, 16 + 2 * (bands - 1)) + 0.1
    with pytest.raises(ValueError, match=rf"^{bands} spectral band\(s\): the calibration needs at least 6 \(the "
                                         r"blind score keeps each spectrum in the span of the first 6 DCT cosines"):
        calibrate(y, mask, bands=bands, progress=False, **QUICK)
    free = {"search_score": SEARCH_SCORE.with_(spectral_basis=0), "refine_score": REFINE_SCORE.with_(spectral_basis=0)}
    with pytest.raises(ValueError, match=r"^1 spectral band\(s\): the calibration needs at least 2 \(a1 and alpha"):
        calibrate(y[:, :16], mask, bands=1, progress=False, **QUICK, **free)
