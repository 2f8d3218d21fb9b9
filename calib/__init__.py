"""Blind calibration of a CASSI instrument: recover (dx, dy, theta, a1, alpha) from one snapshot.

``calibrate(y, mask)`` -> :class:`CalibrationResult`. Modules: ``forward_model`` (the enlarged-grid
instrument on the detector grid), ``placement`` (its placement sums: torch ops on any device) and
``kernels`` (the fused numba CPU kernels), ``score`` (the blind held-out criterion), ``search``
(Algorithm 1), ``refine`` (Algorithm 2), ``solvers`` (GAP-TV / frozen MST), ``result``, ``plots``.
"""
from calib.forward_model import EnlargedGridOperator
from calib.pipeline import calibrate
from calib.ranges import Ranges
from calib.result import CalibrationResult

__all__ = ["CalibrationResult", "EnlargedGridOperator", "Ranges", "calibrate"]
