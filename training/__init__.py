"""Training: LightningModules, the simulated instrument, objectives, callbacks and the ``train.py`` CLI.

The names below are loaded on first use, so ``import training.help_cache`` (``train.py --help``) does not
import Lightning.
"""
from __future__ import annotations

from cassi.lazy import lazy_exports

_EXPORTS = {"training.modules": ("CassiModule", "JointModule", "ReconstructionModule")}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
