"""The estimate's uncertainty (calib.uncertainty: standard errors under the criterion's own noise, the prior
sensitivity) and the status test that reads it (calib.status.uncertainty_test)."""
from __future__ import annotations

import math

import pytest
import torch

from calib.status import StatusSettings, uncertainty_test
from calib.uncertainty import (capture_standard_errors, gauss_newton_offset, prior_sensitivity,
                               sandwich_standard_errors)

COMPONENTS, PER_COMPONENT, PARAMETERS = 60, 40, 5
CAPTURES = 6                                              # of COMPONENTS, an equal count each (joint fits)


def linear_problem(seed: int, capture_spread: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A least-squares fit whose errors are correlated within a component (a shared offset per component, on
    top of independent noise whose level varies with the sample): (errors at the fit (N,), their Jacobian
    in the parameters (P, N), the fitted parameters (P,)). The design is fixed; ``seed`` draws the noise.
    ``capture_spread``: the data are CAPTURES captures of one instrument (consecutive equal runs of
    components) that disagree: each follows the parameters moved by its own offset of that sd (what a model
    that lacks something does, differently per scene)."""
    design = torch.randn(COMPONENTS * PER_COMPONENT, PARAMETERS, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    level = 0.5 + design[:, 0].abs()
    shared = torch.randn(COMPONENTS, 1, generator=gen, dtype=torch.float64).repeat(1, PER_COMPONENT).flatten()
    data = design @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64) + level * torch.randn(
        len(design), generator=gen, dtype=torch.float64) + 0.7 * shared * design[:, 1]
    if capture_spread:
        offsets = capture_spread * torch.randn(CAPTURES, PARAMETERS, generator=gen, dtype=torch.float64)
        data = data + (design * offsets.repeat_interleave(len(design) // CAPTURES, 0)).sum(1)
    fit = torch.linalg.lstsq(design, data[:, None]).solution[:, 0]
    return data - design @ fit, -design.T, fit


def test_the_sandwich_matches_the_scatter_of_the_estimate_over_noise_draws():
    """Against the scatter of the fit over 400 draws of the noise: the sandwich variance, averaged over 100
    other draws, within 15 % per parameter (one draw's own figure within 40 %). The naive Gauss-Newton error
    (residual variance x (J J^T)^-1) misses the correlation within components and comes out far too small,
    so the test separates the two."""
    components = torch.arange(COMPONENTS).repeat_interleave(PER_COMPONENT)
    scatter = torch.stack([linear_problem(seed)[2] for seed in range(1, 401)]).std(0)
    draws = [linear_problem(seed)[:2] for seed in range(1000, 1100)]
    sandwich = torch.stack([sandwich_standard_errors(e, j, components, torch.ones(PARAMETERS)) for e, j in draws])
    assert sandwich.shape == (100, PARAMETERS)
    assert torch.allclose(sandwich.pow(2).mean(0).sqrt(), scatter, rtol=0.15), (sandwich.pow(2).mean(0).sqrt(), scatter)
    assert torch.allclose(sandwich[0], scatter, rtol=0.4), (sandwich[0], scatter)
    errors, jacobian = draws[0]
    naive = (errors.var() * torch.linalg.inv(jacobian @ jacobian.T).diagonal()).sqrt()
    assert naive[1] < 0.6 * scatter[1]                    # the shared offsets ride on parameter 1


def test_the_errors_come_in_the_parameters_units_and_a_free_parameter_is_infinitely_uncertain():
    errors, jacobian, _ = linear_problem(3)
    components = torch.arange(COMPONENTS).repeat_interleave(PER_COMPONENT)
    unit = sandwich_standard_errors(errors, jacobian, components, torch.ones(PARAMETERS))
    scaled = sandwich_standard_errors(errors, jacobian, components, torch.tensor([2.0, 1.0, 0.1, 1.0, 5.0]))
    assert torch.allclose(scaled, unit * torch.tensor([2.0, 1.0, 0.1, 1.0, 5.0], dtype=torch.float64))
    free = jacobian.clone()
    free[2] = 0                                           # the errors do not depend on parameter 2
    assert torch.isinf(sandwich_standard_errors(errors, free, components, torch.ones(PARAMETERS))).all()


def prior_variants(errors: torch.Tensor, jacobian: torch.Tensor, moves: list[list[float]]) -> list[tuple]:
    """Criterion variants whose Gauss-Newton minimum sits ``moves`` (each (P,)) from the plain one's."""
    return [(errors - jacobian.T @ torch.tensor(m, dtype=torch.float64), jacobian) for m in moves]


def test_the_prior_sensitivity_is_the_rms_move_of_the_minimum_over_the_variants():
    errors, jacobian, _ = linear_problem(4)
    scales = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    offset = gauss_newton_offset(errors, jacobian, scales)
    assert offset.abs().max() < 1e-9                       # the least-squares fit is the plain minimum
    moves = [[0.0, 0.0, 0.3, 0.0, 0.1], [0.0, 0.0, -0.1, 0.0, 0.1]]
    variants = [gauss_newton_offset(e, j, scales) for e, j in prior_variants(errors, jacobian, moves)]
    expected = torch.tensor([0.0, 0.0, 2 * (0.05 ** 0.5), 0.0, 0.1], dtype=torch.float64)
    assert torch.allclose(prior_sensitivity(variants, offset), expected, atol=1e-9)


@pytest.mark.parametrize("prior_move, flagged", [(0.0, []), (0.5, ["theta"])])
def test_the_status_vouches_only_for_what_the_uncertainty_allows(prior_move, flagged):
    """A parameter whose 2 uncertainties (noise and prior sensitivity in quadrature) exceed the tolerance is a
    reason for "ambiguous", naming it: here theta's tolerance admits its noise but not a prior that moves its
    minimum by 0.5."""
    errors, jacobian, _ = linear_problem(5)
    components = torch.arange(COMPONENTS).repeat_interleave(PER_COMPONENT)
    scales = torch.ones(5, dtype=torch.float64)
    noise = sandwich_standard_errors(errors, jacobian, components, scales)
    tolerance = (10.0, 10.0, 2 * float(noise[2]) + 0.1, 10.0, 10.0)
    variants = prior_variants(errors, jacobian, [[0.0, 0.0, prior_move, 0.0, 0.0]] * 2)
    tests = {}
    reasons = uncertainty_test(errors, jacobian, variants, components, scales, StatusSettings(tolerance=tolerance),
                               tests)
    record = tests["uncertainty"]
    assert record["components"] == COMPONENTS and record["z"] == 2
    assert record["prior_sensitivity"]["theta"] == pytest.approx(prior_move)
    assert record["uncertainty"]["theta"] == pytest.approx((float(noise[2]) ** 2 + prior_move ** 2) ** 0.5)
    assert [r.split()[0] for r in reasons] == flagged, reasons
    assert all("uncertain by" in r and "vouches for" in r and "prior sensitivity 0.5" in r for r in reasons)


def test_learned_spectral_directions_are_as_uncertain_as_the_cosines_move_the_minimum():
    """With a network's learned spectral directions in the criterion, the same criterion with the DCT cosines
    (``basis_variant``) puts its Gauss-Newton minimum 0.12 away in dx: dx's uncertainty holds that 0.12 in
    quadrature, and a tolerance that admits the noise alone is not met (measured: an "ok" 0.10 px off in dx
    whose noise and prior terms said +-0.018)."""
    errors, jacobian, _ = linear_problem(7)
    components = torch.arange(COMPONENTS).repeat_interleave(PER_COMPONENT)
    scales = torch.ones(5, dtype=torch.float64)
    noise = sandwich_standard_errors(errors, jacobian, components, scales)
    settings = StatusSettings(tolerance=(2 * float(noise[0]) + 0.1, 10.0, 10.0, 10.0, 10.0))
    tests = {}
    assert uncertainty_test(errors, jacobian, [], components, scales, settings, tests) == []
    assert "basis_sensitivity" not in tests["uncertainty"]
    cosines = prior_variants(errors, jacobian, [[0.12, 0.0, 0.0, 0.0, 0.0]])[0]
    reasons = uncertainty_test(errors, jacobian, [], components, scales, settings, tests, basis_variant=cosines)
    record = tests["uncertainty"]
    assert record["basis_sensitivity"]["dx"] == pytest.approx(0.12)
    assert record["basis_sensitivity"]["a1"] == pytest.approx(0.0, abs=1e-9)
    assert record["uncertainty"]["dx"] == pytest.approx((float(noise[0]) ** 2 + 0.12 ** 2) ** 0.5)
    assert len(reasons) == 1 and reasons[0].startswith("dx is uncertain by") and "spectral basis 0.12" in reasons[0]


def test_an_estimate_another_solver_decided_is_as_uncertain_as_the_two_criteria_disagree():
    """With the held-out criterion's own estimate 0.3 away in a1, a1's uncertainty holds that 0.3 (in
    quadrature with the other terms) and an a1 tolerance that admits the noise alone is not met."""
    errors, jacobian, _ = linear_problem(6)
    components = torch.arange(COMPONENTS).repeat_interleave(PER_COMPONENT)
    scales = torch.ones(5, dtype=torch.float64)
    noise = sandwich_standard_errors(errors, jacobian, components, scales)
    tolerance = (10.0, 10.0, 10.0, 2 * float(noise[3]) + 0.1, 10.0)
    settings = StatusSettings(tolerance=tolerance)
    tests = {}
    assert uncertainty_test(errors, jacobian, [], components, scales, settings, tests) == []
    assert "solver_disagreement" not in tests["uncertainty"]
    offset = torch.tensor([0.0, 0.0, 0.0, -0.3, 0.0], dtype=torch.float64)
    reasons = uncertainty_test(errors, jacobian, [], components, scales, settings, tests, offset)
    record = tests["uncertainty"]
    assert record["solver_disagreement"]["a1"] == pytest.approx(0.3)
    assert record["uncertainty"]["a1"] == pytest.approx((float(noise[3]) ** 2 + 0.09) ** 0.5)
    assert len(reasons) == 1 and reasons[0].startswith("a1 is uncertain by") and "held-out vs solver 0.3" in reasons[0]



@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_a_joint_fit_of_captures_that_disagree_is_as_uncertain_as_their_scatter_says(spread):
    """Against the scatter of a joint fit over 400 draws (of the captures' offsets and the noise): the
    per-component sandwich sees the offsets as independent noise and comes out far too small when the captures
    disagree (0.4-0.6x); uncertainty_test, told the captures, takes the sandwich over whole captures there (RMS
    over 100 draws within 25 % of the scatter) and stays near the per-component figure when they agree."""
    components = torch.arange(COMPONENTS).repeat_interleave(PER_COMPONENT)
    scatter = torch.stack([linear_problem(seed, spread)[2] for seed in range(1, 401)]).std(0)
    ones, settings = torch.ones(PARAMETERS, dtype=torch.float64), StatusSettings(tolerance=(1.0,) * PARAMETERS)
    plain, joint = [], []
    for seed in range(1000, 1100):
        errors, jacobian, _ = linear_problem(seed, spread)
        tests: dict = {}
        uncertainty_test(errors, jacobian, [], components, ones, settings, tests, captures=CAPTURES)
        record = tests["uncertainty"]
        plain.append(list(record["standard_error_by_component"].values()))
        joint.append(list(record["standard_error"].values()))
        assert all(value == max(record["standard_error_by_component"][k], record["standard_error_by_capture"][k])
                   for k, value in record["standard_error"].items())
    plain_rms = torch.tensor(plain).pow(2).mean(0).sqrt() / scatter
    joint_rms = torch.tensor(joint).pow(2).mean(0).sqrt() / scatter
    assert ((joint_rms > 0.85) & (joint_rms < 1.25)).all(), joint_rms
    if spread:
        assert (plain_rms < 0.7).all(), plain_rms


def test_one_capture_has_no_sandwich_over_captures():
    errors, jacobian, _ = linear_problem(6)
    components = torch.arange(COMPONENTS).repeat_interleave(PER_COMPONENT)
    tests: dict = {}
    uncertainty_test(errors, jacobian, [], components, torch.ones(PARAMETERS), StatusSettings(), tests)
    assert "standard_error_by_capture" not in tests["uncertainty"]
    for captures in (1, 7):                                # 60 components: 7 captures cannot share them equally
        with pytest.raises(ValueError, match="at least 2 captures with an equal number"):
            capture_standard_errors(errors, jacobian, components, captures, torch.ones(PARAMETERS))


def test_an_uncertainty_that_cannot_be_computed_is_said_so_without_nan_in_the_reasons():
    """A criterion that does not change with the parameters (a mask without code: zero Jacobian) has no finite
    uncertainty: one reason naming the parameters, no "+-nan" or "inf" figures."""
    errors, jacobian, _ = linear_problem(7)
    components = torch.arange(COMPONENTS).repeat_interleave(PER_COMPONENT)
    scales = torch.ones(5, dtype=torch.float64)
    flat = torch.zeros_like(jacobian)
    tests = {}
    reasons = uncertainty_test(errors, flat, [(errors, flat)] * 2, components, scales, StatusSettings(), tests)
    assert len(reasons) == 1 and reasons[0].startswith("the uncertainty of dx, dy, theta, a1, alpha cannot be"), reasons
    assert "nan" not in reasons[0] and "inf" not in reasons[0]
