"""The KAIST evaluation protocol: per-scene metrics, timing and detector noise (the table's rows:
:mod:`cassi.kaist_table`).

Metrics of a reconstruction against its ground truth (both (L, H, W)), as the toolbox's MATLAB scripts
compute them (:func:`cassi.metrics.kaist_metrics`, shared with ``train.py test``): the prediction is clipped
to [0, 1] and both cubes are quantised to 8 bits, then PSNR and SSIM (11 x 11 Gaussian, sigma 1.5, 'valid')
per band, averaged over bands; SAM (degrees) and ERGAS on the same 8-bit cubes.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from torch import Tensor

from cassi import CassiOperator
from cassi.metrics import KAIST_METRICS
from cassi.noise import add_noise, check_noise

METRICS = KAIST_METRICS
DRIFTED_SCENARIOS = ("II", "III", "IV")   # scenarios measured through the drifted instrument (they need a mismatch)
PROTOCOL = ("KAIST protocol: prediction clipped to [0, 1], both cubes quantised to 8 bits; PSNR (dB) and "
            "SSIM (Gaussian 11x11, sigma 1.5, valid) per band and averaged; SAM (degrees) and ERGAS on the "
            "same 8-bit cubes; seconds = wall-clock reconstruction time of one scene (numba kernels compiled "
            "before the first one)")


@dataclass(frozen=True)
class Noise:
    """Detector noise added to every simulated measurement (``cassi.noise.add_noise``); scene i uses seed + i.

    ``peak``: photons at the brightest clean pixel (None: no shot noise); ``read``: Gaussian sigma relative
    to the clean maximum.
    """

    peak: float | None = None
    read: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_noise(self.peak, self.read)

    @property
    def active(self) -> bool:
        return self.peak is not None or self.read > 0

    def apply(self, y: Tensor, index: int) -> Tensor:
        return add_noise(y, self.peak, self.read, self.seed + index) if self.active else y

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def timed(method: Callable[[Tensor, CassiOperator], Tensor], y: Tensor, op: CassiOperator) -> tuple[Tensor, float]:
    """``method(y, op)`` and its wall-clock seconds (call :func:`cassi.gap_tv.compile_tv_kernel` once before)."""
    start = time.perf_counter()
    out = method(y, op)
    return out, time.perf_counter() - start


