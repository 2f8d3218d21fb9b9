"""CASSI physics: dispersion shifts, mask warps, the differentiable operator, the simulator.

The names below load on first use, so ``import cassi.errors`` (the command-line tools' error
handling, imported before their arguments are parsed) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "cassi.mismatch": ("Mismatch", "PARAMETER_UNITS", "dispersion_offsets"),
    "cassi.operator": ("CassiOperator",),
    "cassi.shifts": ("band_offsets", "shift", "shift_back"),
    "cassi.warp": ("warp_mask",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'cassi' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
