"""CASSI physics: dispersion shifts, mask warps, the differentiable operator, the simulator."""
from cassi.mismatch import Mismatch, PARAMETER_UNITS, dispersion_offsets
from cassi.operator import CassiOperator
from cassi.shifts import band_offsets, shift, shift_back
from cassi.warp import warp_mask

__all__ = ["CassiOperator", "Mismatch", "PARAMETER_UNITS", "band_offsets", "dispersion_offsets",
           "shift", "shift_back", "warp_mask"]
