"""Training losses for the reconstruction networks.

Sections:

* pixel losses: :class:`RMSELoss`, :class:`CharbonnierLoss` (prediction vs. ground-truth cube);
* S²-Transformer mask-aware learning (Wang et al., Section 3.4): :class:`MaskEncodingLoss` (L_ME,
  pre-training) and :class:`MaskAwareLoss` (L_MA). Paper schedule (Sec. 4.1): 300 epochs in all,
  Adam (0.9, 0.999), lr 4e-4 halved every 50 epochs, batch 4, 256x256 crops; epochs 1-150 with
  ``MaskEncodingLoss(alpha=1.5, k_me=2)``, epochs 151-300 with
  ``MaskAwareLoss(alpha=1.0, beta=10, k_me=2)``. Both take the network output as returned:
  ``loss(model(**inputs), cube, op.mask3d)``.

(CRSDUN's joint reconstruction + segmentation loss lives in :mod:`models.joint_loss`.)
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def _check_same_shape(prediction: Tensor, target: Tensor) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")


# ------------------------------------------------------------------------------------ pixel losses
class RMSELoss(nn.Module):
    """sqrt(mean((prediction - target)^2)) over all elements (the MST toolbox's training loss).

    Its gradient is undefined (NaN) at an exact zero error.
    """

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        _check_same_shape(prediction, target)
        return torch.sqrt(torch.mean((prediction - target) ** 2))


class CharbonnierLoss(nn.Module):
    """mean(sqrt((prediction - target)^2 + eps^2)): a smooth L1; equals ``eps`` for a perfect prediction."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        _check_same_shape(prediction, target)
        return torch.mean(torch.sqrt((prediction - target) ** 2 + self.eps ** 2))


# ----------------------------------------------------------- S²-Transformer mask-aware learning
class MaskEncodingLoss(nn.Module):
    """Mask-encoding loss L_ME (paper Eq. 12), the pre-training objective of S²-Transformer:

        L_ME = alpha * || t - F0 ||_1 + || F_hat - F ||_1,     F0 = F * M,   t = f_h(Z^{k_ME})

    ``F`` the ground-truth cube, ``M`` the mask, ``F_hat`` the network's reconstruction and ``t`` the
    estimate of the *encoded* cube F0 made from the first ``k_ME`` stages: the k_ME-th entry of the
    stage outputs (``RSTB_pin`` of stage k_ME) that the network returns. Eq. 12 is garbled in the
    extracted text; this reading is the one stated in the paper's Remark after Eq. 15
    ("L_MA = alpha ||f_h(Z^kME) - F0||_1 + ||F_hat - F||_1 + MA"). ``||.||_1`` is taken as the mean
    absolute error over all elements (a constant factor only rescales the learning rate).

    Paper settings: alpha = 1.5 during pre-training, k_ME = 2 (of K = 4 stages).

    ``forward(output, target, mask)``:
        output: the network output ``(prediction (B, L, H, W), [K stage outputs (B, L, H, W)])``.
        target: ground truth F (B, L, H, W).
        mask: the 3-D mask M as the operator applies it (e.g. ``op.mask3d``), broadcastable to
            the target ((B or 1, L or 1, H, W)).
    :meth:`terms` returns the terms separately (for logging).
    """

    def __init__(self, alpha: float = 1.5, k_me: int = 2) -> None:
        super().__init__()
        if k_me < 1:
            raise ValueError(f"k_me must be >= 1 (a stage index counted from 1), got {k_me}")
        self.alpha, self.k_me = alpha, k_me

    def encoded_estimate(self, stage_outputs: Sequence[Tensor]) -> Tensor:
        """t = the output of stage k_ME (counted from 1)."""
        if len(stage_outputs) < self.k_me:
            raise ValueError(f"k_me={self.k_me} but the network returned {len(stage_outputs)} stage outputs")
        return stage_outputs[self.k_me - 1]

    def _inputs(self, output: tuple[Tensor, Sequence[Tensor]], target: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        prediction, stage_outputs = output
        _check_same_shape(prediction, target)
        estimate = self.encoded_estimate(stage_outputs)
        _check_same_shape(estimate, target)
        try:
            encoded = target * mask
        except RuntimeError as err:
            raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to target {tuple(target.shape)}") from err
        if encoded.shape != target.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to target {tuple(target.shape)}")
        return prediction, estimate, encoded

    def terms(self, output: tuple[Tensor, Sequence[Tensor]], target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """{"recon": ||F_hat - F||_1, "me": ||t - F0||_1} (unweighted)."""
        prediction, estimate, encoded = self._inputs(output, target, mask)
        return {"recon": (prediction - target).abs().mean(), "me": (estimate - encoded).abs().mean()}

    def forward(self, output: tuple[Tensor, Sequence[Tensor]], target: Tensor, mask: Tensor) -> Tensor:
        terms = self.terms(output, target, mask)
        return self.alpha * terms["me"] + terms["recon"]


class MaskAwareLoss(MaskEncodingLoss):
    """Mask-aware loss L_MA (paper Eqs. 13-14), the objective after L_ME pre-training:

        L_MA = L_ME(alpha) + beta * MA,
        MA   = mean_i  |F_hat_i - F_i| / (|t_i - F0_i| + eps)        (i: every element of the cube)

    Reading chosen (the extracted Eqs. 13-14 are garbled and write MA as a ratio of L1 norms,
    ``beta ||g(t) + t - F||_1 / ||t - M F||_1`` with g(t) + t = F_hat): the ratio is taken *per
    pixel*, because the paper describes the ME term as "a difficulty-level cube" by which "the
    pixel-wise reconstruction [is] weighted", and its Remark argues pixel by pixel that a small
    |f_h(Z_ij)| (a masked pixel, F0_ij = 0, that the early stages estimate well) "yields a larger
    weight beta / |f_h(Z_ij)|" while unmasked pixels are not prioritised. A single global ratio of
    norms would weight all pixels equally and could not do that. ``eps`` (not in the paper) bounds
    the weight where t matches F0 exactly.

    ``detach_difficulty=True`` (default) treats the denominator as a weight ("the ME term serves as
    the weight of the MA term"): MA trains the reconstruction only, and t keeps being trained by
    the ME term alone. With ``False`` the gradient also flows through the denominator, which
    rewards a *worse* estimate t (it grows the denominator) and works against the ME term.

    Paper settings: alpha = 1.0 (attenuated from 1.5), beta = 10, k_ME = 2.
    ``forward(output, target, mask)`` as :class:`MaskEncodingLoss`.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 10.0, k_me: int = 2, eps: float = 1e-3,
                 detach_difficulty: bool = True) -> None:
        super().__init__(alpha=alpha, k_me=k_me)
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.beta, self.eps, self.detach_difficulty = beta, eps, detach_difficulty

    def terms(self, output: tuple[Tensor, Sequence[Tensor]], target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """{"recon", "me"} as L_ME plus "ma": mean |F_hat - F| / (|t - F0| + eps) (unweighted)."""
        prediction, estimate, encoded = self._inputs(output, target, mask)
        error = (prediction - target).abs()
        difficulty = (estimate - encoded).abs()
        weight = 1.0 / ((difficulty.detach() if self.detach_difficulty else difficulty) + self.eps)
        return {"recon": error.mean(), "me": difficulty.mean(), "ma": (weight * error).mean()}

    def forward(self, output: tuple[Tensor, Sequence[Tensor]], target: Tensor, mask: Tensor) -> Tensor:
        terms = self.terms(output, target, mask)
        return self.alpha * terms["me"] + terms["recon"] + self.beta * terms["ma"]
