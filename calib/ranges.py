"""Search ranges of the five mismatch parameters and their natural step sizes."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from calib.forward_model import PARAMETER_NAMES
from cassi.checks import MAX_ANGLE_DEG


@dataclass(frozen=True)
class Ranges:
    """Closed intervals searched for (dx, dy) px, theta deg, a1 px/band, alpha deg."""

    dx: tuple[float, float] = (-3.5, 3.5)
    dy: tuple[float, float] = (-3.5, 3.5)
    theta: tuple[float, float] = (-1.25, 1.25)
    a1: tuple[float, float] = (1.93, 2.07)
    alpha: tuple[float, float] = (-1.5, 1.5)

    def __post_init__(self) -> None:
        for name in PARAMETER_NAMES:
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"range of {name} must be a finite interval lo < hi, got {(lo, hi)}")
        lo, hi = self.a1
        if lo <= 0 <= hi:
            raise ValueError(f"range of a1 {(lo, hi)} contains a1 = 0 (no dispersion): keep it on one side of 0 "
                             "(nominal 2 px/band; negative for a mirrored disperser)")
        for name in ("theta", "alpha"):
            if max(abs(v) for v in getattr(self, name)) > MAX_ANGLE_DEG:
                raise ValueError(f"range of {name} {getattr(self, name)} reaches beyond {MAX_ANGLE_DEG:g} deg, "
                                 "which this instrument model does not describe")

    @classmethod
    def from_dict(cls, values: dict) -> "Ranges":
        unknown = set(values) - set(PARAMETER_NAMES)
        if unknown:
            raise ValueError(f"unknown range name(s) {sorted(unknown)}; expected {list(PARAMETER_NAMES)}")
        return cls(**{k: (float(v[0]), float(v[1])) for k, v in values.items()})

    def bounds(self) -> Tensor:
        """(5, 2) float64 [lo, hi] per parameter."""
        return torch.tensor([getattr(self, n) for n in PARAMETER_NAMES], dtype=torch.float64)

    def centre(self) -> Tensor:
        return self.bounds().mean(1)

    def clamp(self, params: Tensor) -> Tensor:
        b = self.bounds().to(params)
        return torch.maximum(torch.minimum(params, b[:, 1]), b[:, 0])

    def to_dict(self) -> dict[str, list[float]]:
        return {n: list(getattr(self, n)) for n in PARAMETER_NAMES}


def pixel_scales(height: int, width: int, bands: int, step: float) -> Tensor:
    """Parameter change that moves some detector sample by ~1 px: (5,) float64.

    dx, dy: 1 px; theta: the rotation that moves the mask corner column by 1 px; a1: the slope
    change that moves the outermost band by 1 px; alpha: the tilt that moves it by 1 px vertically.
    """
    half_extent = max(height, width) / 2
    half_spread = step * (bands - 1) / 2
    return torch.tensor([1.0, 1.0, math.degrees(1 / half_extent), 1 / ((bands - 1) / 2),
                         math.degrees(1 / half_spread)], dtype=torch.float64)
