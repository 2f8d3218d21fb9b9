"""Algorithm 2's Levenberg-Marquardt step: the gradient from differences (default) or autograd."""
from __future__ import annotations

import pytest
import torch

from calib.forward_model import params_tensor
from calib.ranges import Ranges, pixel_scales
from calib.refine import RefineSettings, gauss_newton_step
from calib.score import HeldOutScore, ScoreSettings
from cassi import Mismatch
from cassi.noise import add_noise
from cassi.simulator import simulate_measurement
from data.synthetic import random_mask, synthetic_scene

TRUTH = Mismatch(dx=0.4, dy=-0.3, theta=0.2, a1=2.01, alpha=0.3)


@pytest.fixture(scope="module")
def score():
    cube, _ = synthetic_scene(48, 48, 28, seed=4)
    mask = torch.from_numpy(random_mask(48, 48, seed=5))
    y = add_noise(simulate_measurement(torch.from_numpy(cube)[None], mask, TRUTH, spatial=4, spectral=2),
                  peak=1e4, read_noise=0.005, seed=0)[0]
    return HeldOutScore(y, mask, settings=ScoreSettings(stripes=2, rows=16, iterations=8, reference_iterations=60,
                                                        rebase_iterations=30))


@pytest.mark.parametrize("gradient", ["differences", "autograd"])
def test_a_step_from_off_the_truth_lowers_the_score_and_moves_towards_it(score, gradient):
    truth = params_tensor(TRUTH)[0]
    start = truth + torch.tensor([0.35, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    settings = RefineSettings(gradient=gradient)
    point, value, entry = gauss_newton_step(score, start, [0, 1, 2], Ranges(), pixel_scales(48, 48, 28, 2), settings)
    assert value < entry["score"]
    assert abs(float(point[0] - truth[0])) < 0.35 - 0.03, entry                 # closer to the truth in dx
    assert entry["gradient_source"] == gradient
    # the default gradient is 2 J^T e of the differences that also build J^T J
    assert entry["gradient_differences"]["dx"] > 0                               # dx is 0.35 px too large
    if gradient == "differences":
        assert entry["gradient"] == entry["gradient_differences"]


def test_unknown_gradient_source_is_refused(score):
    with pytest.raises(ValueError, match="refinement gradient"):
        gauss_newton_step(score, params_tensor(TRUTH)[0], [0], Ranges(), pixel_scales(48, 48, 28, 2),
                          RefineSettings(gradient="adjoint"))
