"""Training objectives of the reconstruction networks, chosen by name in the configs.

Each objective maps ``(network output, ground-truth cube, operator, epoch)`` to a dict of scalar tensors
whose ``"loss"`` entry is optimised; the other entries are logged. The losses themselves live in
:mod:`models.losses`; this module only selects them and applies the schedules of the papers.

* ``rmse``: MST toolbox (simulation): sqrt(MSE) of the final cube.
* ``l1``: MST toolbox (real-data training): mean absolute error of the final cube.
* ``charbonnier``: smooth L1 of the final cube (``eps`` in ``loss_kwargs``).
* ``s2_mask_aware``: S²-Transformer (Wang et al., Sec. 3.4 / 4.1): L_ME (alpha 1.5) for epochs
  ``< switch_epoch``, then L_MA (alpha 1.0, beta 10); k_ME = 2. The paper switches after 150 of 300 epochs.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from cassi import CassiOperator
from models.losses import CharbonnierLoss, MaskAwareLoss, MaskEncodingLoss, RMSELoss

Objective = Callable[[Any, Tensor, CassiOperator, int], dict[str, Tensor]]
OBJECTIVES = ("rmse", "l1", "charbonnier", "s2_mask_aware")


class CubeLoss(nn.Module):
    """A pixel loss on the network's final cube (``reconstruction(output)``)."""

    def __init__(self, loss: nn.Module, reconstruction: Callable[[Any], Tensor]):
        super().__init__()
        self.loss, self.reconstruction = loss, reconstruction

    def forward(self, output: Any, cube: Tensor, op: CassiOperator, epoch: int) -> dict[str, Tensor]:
        return {"loss": self.loss(self.reconstruction(output), cube)}


class MaskAwareSchedule(nn.Module):
    """S²-Transformer's two-phase mask-aware learning: L_ME before ``switch_epoch``, L_MA from it on.

    Epochs count from 0 (Lightning's ``current_epoch``), so ``switch_epoch=150`` trains epochs 0-149 with
    L_ME, as the paper's "first 150 epochs". The mask is the one the operator applies (``op.mask3d``).
    """

    def __init__(self, switch_epoch: int = 150, me_alpha: float = 1.5, ma_alpha: float = 1.0, beta: float = 10.0,
                 k_me: int = 2, eps: float = 1e-3):
        super().__init__()
        if switch_epoch < 0:
            raise ValueError(f"switch_epoch must be >= 0, got {switch_epoch}")
        self.switch_epoch = switch_epoch
        self.encoding = MaskEncodingLoss(alpha=me_alpha, k_me=k_me)
        self.aware = MaskAwareLoss(alpha=ma_alpha, beta=beta, k_me=k_me, eps=eps)

    def phase(self, epoch: int) -> MaskEncodingLoss:
        return self.encoding if epoch < self.switch_epoch else self.aware

    def forward(self, output: Any, cube: Tensor, op: CassiOperator, epoch: int) -> dict[str, Tensor]:
        loss = self.phase(epoch)
        mask = op.mask3d.to(cube.dtype)
        with torch.no_grad():
            terms = loss.terms(output, cube, mask)  # unweighted, for logging
        return {"loss": loss(output, cube, mask), **terms}


def build_objective(name: str, reconstruction: Callable[[Any], Tensor], **kwargs: Any) -> nn.Module:
    """The objective ``name`` (one of :data:`OBJECTIVES`) for a network whose final cube is
    ``reconstruction(output)``; ``kwargs`` go to the loss (e.g. ``eps``, ``switch_epoch``)."""
    if name == "rmse":
        return CubeLoss(RMSELoss(**kwargs), reconstruction)
    if name == "l1":
        return CubeLoss(nn.L1Loss(**kwargs), reconstruction)
    if name == "charbonnier":
        return CubeLoss(CharbonnierLoss(**kwargs), reconstruction)
    if name == "s2_mask_aware":
        return MaskAwareSchedule(**kwargs)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(OBJECTIVES)}")
