"""calib.calibrate end to end at small size: recovery, the ambiguity checks, a frozen-network solver."""
from __future__ import annotations

import math

import pytest
import torch

from calib import Ranges, calibrate
from calib.forward_model import PARAMETER_NAMES
from calib.pipeline import _status, mask_structure_reasons
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


def test_status_flags_a_range_edge_and_a_flat_parameter():
    ranges = Ranges()
    steps = torch.tensor([1.0, 1.0, 0.45, 0.056, 1.2], dtype=torch.float64)
    point = torch.tensor([3.49, 0.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    slices = {n: {"values": [float(point[i] - steps[i]), float(point[i]), float(point[i] + steps[i])],
                  "scores": [1.2, 1.0, 1.3]} for i, n in enumerate(PARAMETER_NAMES)}
    slices["a1"]["scores"] = [1.001, 1.0, 1.002]
    status, reasons = _status(point, 1.0, slices, ranges, steps)
    assert status == "ambiguous"
    assert any("dx" in r and "edge" in r for r in reasons)
    assert any("flat landscape in a1" in r for r in reasons)
    assert not any(r.startswith("flat landscape in dy") for r in reasons)
    assert _status(point.clone().fill_(math.nan), 1.0, slices, ranges, steps)[0] == "failed"


def test_a_mask_without_structure_is_ambiguous_not_ok():
    # a uniform aperture carries no code: only its outline moves with the warp, and the result must say so
    y, mask = measure(40, Mismatch(dx=0.5, dy=-0.5), mask=torch.full((40, 40), 0.5))
    result = calibrate(y, mask, progress=False, solver_check=False, **QUICK)
    assert result.status != "ok"
    assert any("no code" in r for r in result.reasons), result.reasons


def test_mask_structure_check_tells_a_code_from_an_open_aperture():
    framed = torch.zeros(50, 50)
    framed[5:45, 5:45] = 0.8                       # an open square in an opaque frame: no code either
    assert any("no code" in r for r in mask_structure_reasons(framed))
    assert mask_structure_reasons(torch.from_numpy(random_mask(50, 50, seed=0))) == []


def test_frozen_mst_solver_runs_in_the_pipeline(tmp_path):
    from models import create_model

    torch.manual_seed(0)
    path = tmp_path / "mst_s_random.pth"
    torch.save(create_model("mst_s").state_dict(), path)
    y, mask = measure(32, Mismatch(dx=0.4, a1=2.01))
    result = calibrate(y, mask, solver="mst_s", ckpt=str(path), progress=False, **QUICK)
    assert result.checks["solver"] == "mst_s"
    assert math.isfinite(result.checks["residual_nominal"]) and math.isfinite(result.checks["residual_calibrated"])
    with pytest.raises(ValueError, match="checkpoint"):
        calibrate(y, mask, solver="mst_s", progress=False)
