"""The blind criterion: takes only the measurement and the nominal mask, and points at the truth."""
from __future__ import annotations

import inspect
import json
import math

import pytest
import torch

import calib
from calib.forward_model import EnlargedGridOperator, params_tensor
from calib.score import (HeldOutScore, ScoreSettings, SpectralSubspace, _smoothness, band_roughness, dct_basis,
                         stripe_windows)
from cassi import Mismatch
from cassi.noise import add_noise
from cassi.simulator import simulate_measurement
from data.synthetic import random_mask, synthetic_scene

TRUTH = Mismatch(dx=0.6, dy=-0.8, theta=0.3, a1=2.02, alpha=0.4)


@pytest.fixture(scope="module")
def measurement():
    cube, _ = synthetic_scene(64, 64, 28, seed=11)
    mask = torch.from_numpy(random_mask(64, 64, seed=12))
    y = simulate_measurement(torch.from_numpy(cube)[None], mask, TRUTH, spatial=4, spectral=2)
    return add_noise(y, peak=1e4, read_noise=0.005, seed=0)[0], mask


def test_the_calibration_path_takes_no_scene():
    for fn in (calib.calibrate, HeldOutScore.__init__):
        names = set(inspect.signature(fn).parameters)
        assert {"y", "mask"} <= names
        assert not names & {"x", "cube", "truth", "scene", "ground_truth", "target"}, names


def test_dct_basis_is_orthonormal_and_diagonalises_band_differences():
    basis = dct_basis(28, 6).double()
    assert torch.allclose(basis.T @ basis, torch.eye(6, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(basis[:, 0], torch.full((28,), 28 ** -0.5, dtype=torch.float64))
    # the band-difference penalty of U z equals the coefficient-space penalty with band_roughness, whose values on
    # the cosines are the eigenvalues 4 sin^2(pi j / 2L) of the Neumann band differences
    roughness = band_roughness(basis).double()
    assert torch.allclose(roughness, 4 * torch.sin(math.pi * torch.arange(6.0, dtype=torch.float64) / 56) ** 2,
                          atol=1e-6)
    z = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    x = torch.einsum("lk,bkhw->blhw", basis, z)
    on_bands = (x * _smoothness(x, 0.0, 1.0)).sum()
    on_coefficients = (z * _smoothness(z, 0.0, 1.0, roughness)).sum()
    assert float(on_coefficients) == pytest.approx(float(on_bands), rel=1e-5)
    with pytest.raises(ValueError, match="spectral basis size"):
        dct_basis(28, 29)


def test_subspace_operator_passes_the_dot_product_test():
    mask = torch.from_numpy(random_mask(12, 16, seed=1))
    op = SpectralSubspace(EnlargedGridOperator(mask.double(), params_tensor(TRUTH), 28, 2, 2, 2), dct_basis(28, 5))
    z = torch.randn(1, 5, 12, 16, dtype=torch.float64)
    y = torch.randn(1, 12, 16 + 54, dtype=torch.float64)
    assert float((op(z) * y).sum()) == pytest.approx(float((z * op.adjoint(y)).sum()), rel=1e-9)


def test_stripes_are_inside_the_image_and_spread():
    assert stripe_windows(256, 4, 24) == [(20, 44), (84, 108), (148, 172), (212, 236)]
    assert stripe_windows(30, 4, 24) == [(3, 27)]


def test_score_is_lowest_near_the_truth(measurement):
    y, mask = measurement
    score = HeldOutScore(y, mask, settings=ScoreSettings(stripes=2, rows=24, iterations=30))
    score.set_reference(params_tensor(Mismatch()))
    for i, (name, step) in enumerate((("dx", 0.25), ("dy", 0.25), ("a1", 0.01), ("alpha", 0.25))):
        index = ["dx", "dy", "theta", "a1", "alpha"].index(name)
        offsets = torch.arange(-4, 5, dtype=torch.float64) * step
        points = params_tensor(TRUTH).repeat(len(offsets), 1)
        points[:, index] += offsets
        values = score(points)
        assert abs(float(offsets[values.argmin()])) <= step, (name, values)
        assert float(values.max() / values.min()) > 1.01, (name, values)     # not flat


def test_score_is_deterministic_and_its_gradient_matches_differences(measurement):
    y, mask = measurement
    score = HeldOutScore(y, mask, settings=ScoreSettings(stripes=1, rows=16, iterations=4, reference_iterations=10))
    p = params_tensor(TRUTH) + torch.tensor([[0.3, 0.3, 0.2, 0.01, 0.3]], dtype=torch.float64)
    assert torch.equal(score(p), score(p))
    q = p.clone().requires_grad_(True)
    grad = torch.autograd.grad(score.loss(q), q)[0][0]
    # a1 moves ~200 fine bands across fine-pixel boundaries (kinks of the bilinear weights) every
    # ~1e-4 or so, so its central difference needs a step below that spacing
    for i, h in ((0, 1e-3), (1, 1e-3), (3, 3e-5), (4, 1e-3)):      # dx, dy, a1, alpha
        e = torch.zeros_like(p)
        e[0, i] = h
        numeric = (score(p + e) - score(p - e))[0] / (2 * h)
        assert abs(float(grad[i] - numeric)) <= 0.03 * abs(float(numeric)), (i, grad[i], numeric)


def _small_score(y, mask, backend=None):
    return HeldOutScore(y, mask, settings=ScoreSettings(stripes=2, rows=12, iterations=4, reference_iterations=20,
                                                        rebase_iterations=10), backend=backend)


def test_torch_ops_score_as_the_numba_kernels(measurement):
    """The criterion as run on a GPU (torch backend) equals the CPU one: scores and gradient."""
    y, mask = measurement
    points = params_tensor(TRUTH).repeat(3, 1) + torch.tensor([[0.0] * 5, [0.4, -0.3, 0.2, 0.01, 0.3],
                                                               [-0.5, 0.2, 0.0, -0.01, -0.4]], dtype=torch.float64)
    scores, grads = [], []
    for backend in ("numba", "torch"):
        score = _small_score(y, mask, backend)
        score.set_reference(points[:1])
        scores.append(score(points))
        q = points[1].clone().requires_grad_(True)
        grads.append(torch.autograd.grad(score.loss(q[None]), q)[0])
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-4, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0.02, atol=1e-3 * float(grads[0].abs().max()))


def test_several_captures_score_as_the_mean_of_their_scores(measurement):
    y, mask = measurement
    other = add_noise(simulate_measurement(torch.from_numpy(synthetic_scene(64, 64, 28, seed=5)[0])[None], mask,
                                           TRUTH, spatial=4, spectral=2), peak=1e4, read_noise=0.005, seed=1)[0]
    points = params_tensor(TRUTH).repeat(2, 1) + torch.tensor([[0.0] * 5, [0.3, 0.3, 0.1, 0.0, 0.2]],
                                                               dtype=torch.float64)
    alone = [_small_score(capture, mask)(points) for capture in (y, other)]
    joint = _small_score(torch.stack([y, other]), mask)
    torch.testing.assert_close(joint(points), (alone[0] + alone[1]) / 2, rtol=1e-4, atol=0)
    assert joint.residuals(points).shape[1] == 2 * _small_score(y, mask).residuals(points).shape[1]
    q = points[1].clone().requires_grad_(True)
    assert torch.isfinite(torch.autograd.grad(joint.loss(q[None]), q)[0]).all()


def test_a_learned_spectral_basis_spans_the_cube_it_is_learned_from_and_replaces_the_cosines():
    """calib.score.SpectralBasis: the principal directions of a cube's spectra; in ScoreSettings.learned_basis the
    held-out solves use its first k directions instead of k DCT cosines, and calibration.json records its source."""
    gen = torch.Generator().manual_seed(0)
    spectra = torch.linalg.qr(torch.randn(28, 3, generator=gen, dtype=torch.float64))[0]        # a 3-D subspace
    cube = torch.einsum("lk,khw->lhw", spectra, torch.rand(3, 8, 9, generator=gen, dtype=torch.float64))
    learned = calib.score.SpectralBasis.from_cube(cube, "a test cube")
    first = learned.matrix(28, 3).double()
    assert torch.allclose(first.T @ first, torch.eye(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(first @ (first.T @ spectra), spectra, atol=1e-5)      # the first 3 span the cube's spectra
    settings = ScoreSettings(learned_basis=learned)
    assert torch.equal(settings.basis(28), learned.matrix(28, 6))
    assert torch.equal(ScoreSettings().basis(28), dct_basis(28, 6))
    assert settings.record()["learned_basis"] == "a test cube" and json.dumps(settings.record())
    mask = (torch.rand(24, 24, generator=gen) > 0.5).float()
    y = simulate_measurement(torch.rand(1, 28, 24, 24, generator=gen), mask)[0]
    assert torch.equal(HeldOutScore(y, mask, settings=settings.with_(stripes=1)).basis.cpu(), learned.matrix(28, 6))
    with pytest.raises(ValueError, match="has 28 directions of 28 bands; asked for 6 of 31"):
        learned.matrix(31, 6)
    with pytest.raises(ValueError, match=r"finite cube \(L, H, W\), got shape \(28, 72\)"):
        calib.score.SpectralBasis.from_cube(cube.reshape(28, -1), "flat")
