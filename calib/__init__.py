"""Blind calibration of a CASSI instrument: recover (dx, dy, theta, a1, alpha) from one snapshot.

``calibrate(y, mask)`` -> :class:`CalibrationResult`. Modules: ``forward_model`` (the enlarged-grid
instrument on the detector grid), ``placement`` (its placement sums: torch ops on any device) and
``kernels`` (the fused numba CPU kernels), ``score`` (the blind held-out criterion), ``search``
(Algorithm 1), ``refine`` (Algorithm 2), ``noise_term`` (the last refinement, on the criterion less the
noise it carries), ``solvers`` (GAP-TV / frozen MST), ``result``, ``plots``.

The names below load on first use, so ``import calib.instrument`` (train.py's simulated instrument) does not
import the pipeline, its solvers and numba.
"""
from __future__ import annotations

from cassi.lazy import lazy_exports

_EXPORTS = {
    "calib.forward_model": ("EnlargedGridOperator",),
    "calib.pipeline": ("calibrate",),
    "calib.ranges": ("Ranges",),
    "calib.result": ("CalibrationResult",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
