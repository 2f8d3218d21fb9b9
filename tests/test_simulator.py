"""The enlarged-grid simulator and the noise model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cassi import CassiOperator, Mismatch
from cassi.noise import add_noise
from cassi.simulator import fine_band_count, interpolate_spectra, simulate_measurement

MISMATCH = Mismatch(dx=0.5, dy=-1.0, theta=0.3, a1=2.02, alpha=0.5)


def scene(h: int = 16, w: int = 20, bands: int = 28, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cube = F.interpolate(torch.rand(1, bands, 4, 5, generator=g, dtype=torch.float64), size=(h, w),
                         mode="bilinear", align_corners=False)
    return cube, torch.rand(h, w, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("mismatch", [None, MISMATCH])
def test_n1_k1_equals_the_operator(mismatch):
    cube, mask = scene()
    expected = CassiOperator(mask, mismatch=mismatch)(cube)
    assert torch.equal(simulate_measurement(cube, mask, mismatch), expected)


def test_fine_band_count_and_pchip_keeps_knots():
    assert fine_band_count(28, 4, 2) == 27 * 8 + 1
    cube, _ = scene()
    fine = interpolate_spectra(cube, 4)
    assert fine.shape[1] == 27 * 4 + 1
    assert torch.allclose(fine[:, ::4], cube, atol=1e-12)
    assert (fine >= 0).all()


def test_flat_scene_conserves_light_and_spreads_it_continuously():
    # constant spectra, uniform mask, N = K = 2: fine band k lands k fine pixels right (stride 1),
    # so an interior fine pixel sees 32 of the 109 fine bands, each scaled by L / L_fine = 28 / 109
    cube = torch.ones(1, 28, 12, 16, dtype=torch.float64) * 0.5
    mask = torch.ones(12, 16, dtype=torch.float64)
    coarse = CassiOperator(mask)(cube)
    fine = simulate_measurement(cube, mask, spatial=2, spectral=2)
    assert torch.allclose(fine[:, :, 28:40], torch.full_like(fine[:, :, 28:40], 0.5 * 32 * 28 / 109))
    assert float(fine.sum()) == pytest.approx(float(coarse.sum()), rel=1e-12)


def test_oversampled_shift_moves_the_measurement_like_the_mask():
    # a pure integer mask shift of 1 px at N=2 is a 2-px fine shift: equal to warping the coarse mask
    cube, mask = scene(seed=1)
    a = simulate_measurement(cube, mask, Mismatch(dx=1.0), spatial=2, spectral=1)
    shifted_mask = torch.zeros_like(mask)
    shifted_mask[:, 1:] = mask[:, :-1]
    b = simulate_measurement(cube, shifted_mask, None, spatial=2, spectral=1)
    assert torch.allclose(a, b, atol=1e-12)


def test_simulator_rejects_bad_input():
    cube, mask = scene()
    with pytest.raises(ValueError, match="mask must be"):
        simulate_measurement(cube, mask[:-1])
    with pytest.raises(ValueError, match="oversampling"):
        simulate_measurement(cube, mask, spatial=0)
    with pytest.raises(ValueError, match="cube contains NaN"):
        simulate_measurement(cube * float("nan"), mask)


def test_noise_statistics_and_seed():
    y = torch.full((1, 200, 300), 0.5, dtype=torch.float64)
    y[0, 0, 0] = 1.0
    noisy = add_noise(y, peak=1e4, read_noise=0.005, seed=3)
    assert torch.equal(noisy, add_noise(y, peak=1e4, read_noise=0.005, seed=3))
    assert not torch.equal(noisy, add_noise(y, peak=1e4, read_noise=0.005, seed=4))
    # variance at 0.5: shot 0.5/1e4 (in units of the maximum) + read 0.005^2
    expected = 0.5 / 1e4 + 0.005 ** 2
    assert float((noisy - y)[0, 1:].var()) == pytest.approx(expected, rel=0.05)
    with pytest.raises(ValueError, match="peak"):
        add_noise(y, peak=0)
