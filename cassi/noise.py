"""Detector noise: Poisson shot noise at a photon peak plus Gaussian read noise, seeded."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def check_noise(peak: float | None = None, read_noise: float = 0.0) -> None:
    """Raise a ValueError for a noise setting no detector has: ``peak`` <= 0 photons, ``read_noise`` < 0,
    or either not finite."""
    if peak is not None and not 0 < peak < math.inf:
        raise ValueError(f"noise peak must be a finite number of photons > 0, got {peak}")
    if not 0 <= read_noise < math.inf:
        raise ValueError(f"read noise must be a finite sigma >= 0, got {read_noise}")


def add_noise(y: Tensor, peak: float | None = None, read_noise: float = 0.0, seed: int = 0) -> Tensor:
    """Noisy copy of a clean measurement ``y`` (any shape, non-negative).

    ``peak``: photons at the brightest clean pixel (None: no shot noise); ``read_noise``: Gaussian
    sigma relative to the clean maximum. The result is not clipped.
    """
    check_noise(peak, read_noise)
    if (y < 0).any():
        raise ValueError("add_noise needs a non-negative clean measurement")
    top = float(y.max())
    if top <= 0:
        raise ValueError("add_noise: the clean measurement is all zeros")
    gen = torch.Generator(device=y.device).manual_seed(seed)
    out = y
    if peak is not None:
        out = torch.poisson(y.double() * (peak / top), generator=gen).to(y.dtype) * (top / peak)
    if read_noise > 0:
        out = out + torch.randn(y.shape, generator=gen, dtype=y.dtype, device=y.device) * (read_noise * top)
    return out
