"""The calibration accuracy this project works to (pure Python: the command lines' ``--help`` reads it).

|dx|, |dy| <= 0.1 px, |theta| <= 0.05 deg, |a1 - true| <= 0.01 px/band, |alpha| <= 0.15 deg: the
benchmark's tolerances, and what a calibration status "ok" vouches for unless the user names others
(``calibrate.py --tolerance``, :class:`calib.status.StatusSettings`).
"""
from __future__ import annotations

CALIBRATION_TOLERANCE: dict[str, float] = {"dx": 0.1, "dy": 0.1, "theta": 0.05, "a1": 0.01, "alpha": 0.15}
