"""High-fidelity "true instrument" simulator on an enlarged grid (N x spatial, K x spectral).

Fine band ``k = 0 ... (L-1)*N*K`` sits at coarse band position ``k / (N*K)`` (spectra PCHIP-interpolated
along the band axis, clipped at 0); scene and mask are replicated N x N; the mask is warped on the fine
grid (shifts x N, about the fine centre); each fine band lands at N x its coarse dispersion offset
(bilinear for fractional fine offsets, stride-1 in the enlarged space); the fine detector is
block-averaged N x N and the band sum scaled by ``L / L_fine``. Light that falls outside the detector
(H, W + step*(L-1)) is lost. With N = K = 1 this is exactly :class:`cassi.CassiOperator`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cassi.mismatch import Mismatch, dispersion_offsets
from cassi.operator import CassiOperator, check_finite, check_tensor, mask_tensor
from cassi.translate import bilinear_terms, place
from cassi.warp import warp_mask


def fine_band_count(bands: int, spatial: int, spectral: int) -> int:
    """``(L - 1) * N * K + 1``."""
    return (bands - 1) * spatial * spectral + 1


def interpolate_spectra(cube: Tensor, samples_per_band: int) -> Tensor:
    """PCHIP-resample (B, L, H, W) at band positions ``k / samples_per_band``; clipped at 0; float64."""
    if samples_per_band == 1:
        return cube.to(torch.float64)
    bands = cube.shape[1]
    positions = np.arange((bands - 1) * samples_per_band + 1) / samples_per_band
    from scipy.interpolate import PchipInterpolator  # scipy.interpolate is a heavy import: only when used

    values = PchipInterpolator(np.arange(bands), cube.detach().cpu().double().numpy(), axis=1)(positions)
    return torch.from_numpy(np.clip(values, 0.0, None)).to(cube.device)


@torch.no_grad()
def simulate_measurement(cube: Tensor, mask: Tensor | np.ndarray, mismatch: Mismatch | None = None, step: int = 2,
                         spatial: int = 1, spectral: int = 1) -> Tensor:
    """Measurement (B, H, W + step*(L-1)) of ``cube`` (B, L, H, W) through the true instrument.

    ``mask`` (H, W), a tensor or numpy array (:func:`cassi.operator.mask_tensor`, as the operator takes it);
    ``mismatch`` defaults to the nominal instrument (a1 = step; one left without a1 gets a1 = step); ``spatial``
    = N, ``spectral`` = K oversampling factors. Computed in float64, returned in the cube's dtype.
    """
    check_tensor("cube", cube, "(B, L, H, W)")
    if cube.dim() != 4:
        raise ValueError(f"cube must be (B, L, H, W), got shape {tuple(cube.shape)}")
    mask = mask_tensor(mask)
    if mask.dim() != 2 or tuple(mask.shape) != tuple(cube.shape[-2:]):
        raise ValueError(f"mask must be (H, W) = {tuple(cube.shape[-2:])}, got shape {tuple(mask.shape)}")
    if spatial < 1 or spectral < 1:
        raise ValueError(f"oversampling factors must be >= 1, got N={spatial}, K={spectral}")
    check_finite("cube", cube)
    check_finite("mask", mask)
    mismatch = (mismatch if mismatch is not None else Mismatch()).for_step(step)
    mismatch.check_finite()
    if spatial == 1 and spectral == 1:
        op = CassiOperator(mask.double(), cube.shape[1], step, mismatch)
        return op(cube.double()).to(cube.dtype)

    batch, bands, height, width = cube.shape
    n = spatial
    fine_spectra = interpolate_spectra(cube, spatial * spectral)
    fine_mask = mask.double().repeat_interleave(n, 0).repeat_interleave(n, 1)
    fine_mask = warp_mask(fine_mask, mismatch.dx * n, mismatch.dy * n, mismatch.theta)
    positions = torch.arange(fine_spectra.shape[1], dtype=torch.float64) / (spatial * spectral)
    rows, cols = dispersion_offsets(positions, bands, step, mismatch.a1, mismatch.alpha)
    rows, cols = rows * n, cols * n
    detector = torch.zeros(batch, height * n, (width + step * (bands - 1)) * n, dtype=torch.float64,
                           device=cube.device)
    for k in range(fine_spectra.shape[1]):
        band = fine_spectra[:, k].repeat_interleave(n, 1).repeat_interleave(n, 2)
        place(detector, band, bilinear_terms(rows[k], cols[k]), factor=fine_mask)
    coarse = F.avg_pool2d(detector.unsqueeze(1), n).squeeze(1)
    return (coarse * (bands / fine_spectra.shape[1])).to(cube.dtype)
