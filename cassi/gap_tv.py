"""GAP-TV (generalized alternating projection with a total-variation prior), batched torch.

Accelerated GAP (Yuan, ICIP 2016) for any :class:`cassi.CassiOperator`, nominal or mismatched::

    x <- x + lam * A^T((y_acc - A x) / D),   y_acc <- y_acc + (y - A x)   (accelerated)
    x <- TV_denoise(x)                                   (Chambolle, per band, fixed iterations)

``D`` = row sums of ``A A^T`` (``sum_c Phi_c^2`` for the nominal operator, as in the toolbox; a
Gershgorin bound that keeps the step stable for sub-pixel operators). Every step is differentiable; ``checkpoint=True`` recomputes each iteration in the backward pass
(memory ~ one iteration), which is how calibration unrolls it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint as recompute

from cassi.operator import CassiOperator, check_finite

TV_SLICES_PER_CHUNK = 4  # 4 slices of 256 x 256 float32 x 6 buffers ~ 6 MB: fits a typical L3 cache


def _tv_differentiable(image: Tensor, weight: float, iterations: int) -> Tensor:
    """Chambolle's iteration out of place, so autograd can run through it."""
    tau = 0.25
    px = py = torch.zeros_like(image)
    out = image
    for i in range(iterations):
        if i > 0:
            # out = image - div(p), with scikit-image's backward differences and Neumann edges
            out = (image - px - py + F.pad(px[..., :-1, :], (0, 0, 1, 0))
                   + F.pad(py[..., :, :-1], (1, 0)))
        if i == iterations - 1:
            break
        gx = F.pad(out[..., 1:, :] - out[..., :-1, :], (0, 0, 0, 1))
        gy = F.pad(out[..., :, 1:] - out[..., :, :-1], (0, 1))
        norm = torch.sqrt(gx * gx + gy * gy) * (tau / weight) + 1.0
        px, py = (px - tau * gx) / norm, (py - tau * gy) / norm
    return out


def _tv_in_place(image: Tensor, weight: float, iterations: int) -> Tensor:
    """The same iteration in place on reused buffers (no autograd): about 3x less memory traffic."""
    tau = 0.25
    px, py, gx, gy = (torch.zeros_like(image) for _ in range(4))
    out = image
    for i in range(iterations):
        if i > 0:
            out = image - px - py
            out[..., 1:, :] += px[..., :-1, :]
            out[..., :, 1:] += py[..., :, :-1]
        if i == iterations - 1:
            break
        torch.sub(out[..., 1:, :], out[..., :-1, :], out=gx[..., :-1, :])
        torch.sub(out[..., :, 1:], out[..., :, :-1], out=gy[..., :, :-1])
        norm = torch.addcmul(gx * gx, gy, gy).sqrt_().mul_(tau / weight).add_(1.0)
        px.sub_(gx, alpha=tau).div_(norm)
        py.sub_(gy, alpha=tau).div_(norm)
    return out


def tv_denoise(image: Tensor, weight: float, iterations: int = 5) -> Tensor:
    """Isotropic 2-D TV denoising of every (H, W) slice of ``image`` (..., H, W), Chambolle (2004).

    Same iteration as ``skimage.restoration.denoise_tv_chambolle(..., channel_axis=...)`` with
    ``max_num_iter=iterations`` and no early stop. Differentiable when autograd records; otherwise it
    runs in place on groups of :data:`TV_SLICES_PER_CHUNK` slices that stay in the CPU cache.
    """
    if weight <= 0:
        raise ValueError(f"TV weight must be positive, got {weight}")
    if torch.is_grad_enabled() and image.requires_grad:
        return _tv_differentiable(image, weight, iterations)
    flat = image.reshape(-1, *image.shape[-2:])
    return torch.cat([_tv_in_place(chunk, weight, iterations)
                      for chunk in flat.split(TV_SLICES_PER_CHUNK)]).reshape(image.shape)


def gap_tv(y: Tensor, op: CassiOperator, iterations: int = 50, tv_weight: float = 0.1,
           tv_iterations: int = 5, step_size: float = 1.0, accelerate: bool = True,
           x0: Tensor | None = None, checkpoint: bool = False) -> Tensor:
    """Reconstruct (B, L, H, W) from measurements ``y`` (B, H, W + step*(L-1)) through ``op``.

    ``tv_weight`` is relative to cube values in [0, 1]. The iteration starts from ``x0`` (zeros by
    default, so the first projection gives ``A^T(y / sum Phi^2)``) with the accumulated measurement
    ``y_acc = A x0``; each step adds the residual to ``y_acc`` and projects onto ``A x = y_acc``.
    """
    check_finite("measurement", y)
    if iterations < 1:
        raise ValueError(f"GAP-TV needs at least one iteration, got {iterations}")
    phi_sum = op.gram_row_sums().to(y.dtype)
    x = y.new_zeros(y.shape[0], op.bands, op.height, op.width) if x0 is None else x0
    y_acc = op(x)

    def iterate(x: Tensor, y_acc: Tensor) -> tuple[Tensor, Tensor]:
        projected = op(x)
        if accelerate:
            y_acc = y_acc + (y - projected)
            x = x + step_size * op.adjoint((y_acc - projected) / phi_sum)
        else:
            x = x + step_size * op.adjoint((y - projected) / phi_sum)
        return tv_denoise(x, tv_weight, tv_iterations), y_acc

    for _ in range(iterations):
        if checkpoint and torch.is_grad_enabled():
            x, y_acc = recompute(iterate, x, y_acc, use_reentrant=False)
        else:
            x, y_acc = iterate(x, y_acc)
    return x
