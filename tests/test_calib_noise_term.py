"""The held-out score corrected for the noise it carries (calib.noise_term): the blind variance fit
tracks the measurement's noise, the pure-noise inputs carry only the predictor's noise, and the
pipeline records the stage (its effect on the benchmark: README, "Blind score")."""
from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from calib import calibrate
from calib.forward_model import params_tensor
from calib.noise_term import (CaptureBatch, NoiseCorrectedScore, NoiseCorrection, corrected_refinement,
                              fit_noise_variance, outcome)
from calib.ranges import Ranges
from calib.score import HeldOutScore, ScoreSettings
from calibrate import summary
from cassi import Mismatch
from cassi.noise import add_noise
from cassi.simulator import simulate_measurement
from conftest import shared_path
from data.synthetic import random_mask, synthetic_scene

TRUTH = Mismatch(dx=0.6, dy=-0.8, theta=0.3, a1=2.02, alpha=0.4)
SETTINGS = ScoreSettings(stripes=2, rows=24, iterations=12)


@pytest.fixture(scope="module")
def scene():
    cube, _ = synthetic_scene(64, 64, 28, seed=11)
    mask = torch.from_numpy(random_mask(64, 64, seed=12))
    clean = simulate_measurement(torch.from_numpy(cube)[None], mask, TRUTH, spatial=4, spectral=2)
    return clean, mask


def true_variance(clean: torch.Tensor, peak: float, read: float) -> torch.Tensor:
    """What cassi.noise.add_noise adds: Poisson with ``peak`` photons at the clean maximum, Gaussian
    ``read`` x that maximum."""
    top = float(clean.max())
    return clean * (top / peak) + (read * top) ** 2


def fitted_over_true(clean: torch.Tensor, mask: torch.Tensor, settings: ScoreSettings, peak: float) -> float:
    """Mean fitted variance over the mean true variance, the fit at the truth."""
    y = add_noise(clean, peak=peak, read_noise=0.005, seed=0)
    fit = fit_noise_variance(y, mask, 28, 2, settings, params_tensor(TRUTH)[0])
    fitted = fit["gain"] * y.clamp_min(0) + fit["read_variance"]
    return float(fitted.mean() / true_variance(clean, peak, 0.005).mean())


def test_the_blind_variance_fit_is_an_upper_bound_that_follows_the_noise(scene):
    """The clean prediction error counts as noise: on the generator's scenes (spectra the 6-cosine prior
    fits less well than real ones) the fit is 2.9x the true variance at 1e4 photons, 1.7x at 2.5e3 --
    never below it, and it grows with the noise."""
    clean, mask = scene
    ratios = {peak: fitted_over_true(clean, mask, SETTINGS, peak) for peak in (1e4, 2.5e3)}
    assert all(ratio > 0.9 for ratio in ratios.values()), ratios
    assert 2.0 < ratios[2.5e3] * 4 / ratios[1e4] < 4.5, ratios       # the true variance grows ~4x


def test_the_blind_variance_fit_is_close_on_a_realistic_scene():
    """A pseudo-KAIST cube (smooth real spectra): within -15 % / +25 % of the true variance (the
    benchmark's 20 scenes: 0.77-1.27)."""
    from data.io import load_cube, load_mask

    cube = torch.from_numpy(load_cube(shared_path("data", "pseudo_kaist", "scene04.npz")))
    mask = torch.from_numpy(load_mask(shared_path("data", "kaist", "mask.mat")))
    clean = simulate_measurement(cube[None], mask, TRUTH, spatial=4, spectral=2)
    ratio = fitted_over_true(clean, mask, ScoreSettings(stripes=4, rows=24, iterations=12), 1e4)
    assert 0.85 < ratio < 1.25, ratio


def test_noise_inputs_carry_only_the_predictors_noise_and_errors_are_absolute(scene):
    clean, mask = scene
    y = add_noise(clean, peak=1e4, read_noise=0.005, seed=0)
    point = params_tensor(TRUTH)
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)) * 0.01
    full, carried = [CaptureBatch([y, noise], mask, 28, 2, SETTINGS, point, predicted_only=only)
                     for only in (False, True)]
    errors = full.errors(point)[0]
    # the difference is the noise input's own held-out values: n - P n_f against - P n_f
    held_out = (1 - full.score.fits) * full.score.interior.repeat_interleave(len(full.score.folds), 0)
    own = (full.score.y_folds * held_out)[held_out.shape[0] // 2:].flatten().double()
    assert torch.allclose(errors[1] - carried.errors(point)[0][1], own, atol=1e-6)
    plain = HeldOutScore(y, mask, settings=SETTINGS, reference=point)
    energy = float((plain.y ** 2 * plain.interior).sum())
    assert torch.allclose(errors[0], plain.residuals(point)[0].double() * energy ** 0.5, rtol=1e-4, atol=1e-7)


def test_the_pipeline_records_the_corrected_stage_and_can_skip_it(scene):
    clean, mask = scene
    y = add_noise(clean, peak=1e4, read_noise=0.005, seed=0)[0]
    quick = {"oversample": (4, 2), "solver_check": False, "progress": False,
             "refine_score": SETTINGS}
    result = calibrate(y, mask, noise_correction=NoiseCorrection(steps=2), **quick)
    record = result.settings["noise_correction"]
    assert set(record["variance"]) >= {"gain", "read_variance", "explained"} and 1 <= len(record["steps"]) <= 2
    assert record["outcome"] == outcome(record) and f"step(s); {record['outcome']}" in summary(result)
    assert [r.name for r in result.history].count("2F noise-corrected") == 1
    assert "2F noise-corrected_s" in result.timings
    skipped = calibrate(y, mask, noise_correction=None, **quick)
    assert skipped.settings["noise_correction"] is None
    assert "2F noise-corrected" not in [r.name for r in skipped.history]


class FakeScore:
    """A stand-in for :class:`calib.noise_term.NoiseCorrectedScore` over a given measurement residual
    ``residual(points (P, 5)) -> (P, N)``, the noise input's errors zero: the corrected score is its squared norm."""

    value = NoiseCorrectedScore.value

    def __init__(self, residual) -> None:
        self.residual, self.weights = residual, torch.tensor([1.0, -1.0], dtype=torch.float64)

    def errors(self, points: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        measured = self.residual(points)
        return torch.stack([measured, torch.zeros_like(measured)], 1)


START = params_tensor(Mismatch())[0]


def refine(residual) -> tuple[torch.Tensor, dict]:
    correction = NoiseCorrection()
    point, steps = corrected_refinement(FakeScore(residual), START, Ranges(), torch.ones(5, dtype=torch.float64),
                                        correction)
    return point, {"steps": steps, "settings": asdict(correction)}


def test_a_refused_step_says_why_the_point_was_kept():
    """Started at the minimum (the KAIST snapshots, the demo and a simulated pseudo-KAIST scene01 start within the
    difference step of it: README "Noise-corrected refinement"), the stage keeps the point, and the record and the
    terminal say that every parameter +- the difference step was tried and none lowers the score; where one does
    (here dy - 0.05, a dip the forward differences do not see), they name it."""
    matrix = torch.randn(30, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    point, record = refine(lambda p: (p - START) @ matrix.T)
    refused = record["steps"][-1]["refused"]
    assert torch.equal(point, START) and len(record["steps"]) == 1 and refused["minimum"]
    assert len(refused["trial_rises"]) == 3 and min(refused["probe_rises"].values()) > 0
    assert set(refused["probe_rises"]) == {f"{n} {s}0.05" for n in ("dx", "dy", "theta", "a1", "alpha") for s in "+-"}
    assert outcome(record).startswith("kept the refined point: neither the step nor 0.4, 0.1 of it lowered")
    assert "a minimum of the corrected score at the stage's difference step" in outcome(record)

    def dip(p: torch.Tensor) -> torch.Tensor:      # dy: rising at +0.05 and at -0.1, -0.4, -1; lower at -0.05
        d = p[:, 1:2] - START[1]
        return 1 + 0.5 * d.clamp_min(0) + 40 * d.clamp_max(0) ** 2 + 3 * d.clamp_max(0)

    point, record = refine(dip)
    refused = record["steps"][-1]["refused"]
    assert torch.equal(point, START) and not refused["minimum"] and min(refused["trial_rises"]) > 0
    assert outcome(record).endswith("but dy -0.05 pixel units lowered it by 0.097: a lower point the Gauss-Newton "
                                    "step missed")
