"""Training: LightningModules, the simulated instrument, objectives, callbacks and the ``train.py`` CLI."""
from training.modules import CassiModule, JointModule, ReconstructionModule

__all__ = ["CassiModule", "JointModule", "ReconstructionModule"]
