"""CASSI physics: dispersion shifts, mask warps, the differentiable operator, the simulator.

The names below load on first use, so ``import cassi.errors`` (the command-line tools' error
handling, imported before their arguments are parsed) does not import torch.
"""
from __future__ import annotations

from cassi.lazy import lazy_exports

_EXPORTS = {
    "cassi.mismatch": ("Mismatch", "PARAMETER_UNITS", "dispersion_offsets"),
    "cassi.operator": ("CassiOperator",),
    "cassi.shifts": ("band_offsets", "shift", "shift_back"),
    "cassi.warp": ("warp_mask",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
