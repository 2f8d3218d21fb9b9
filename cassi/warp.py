"""Differentiable mask warp (shift dx, dy and rotation theta), equal to scipy's ``affine_transform``.

Convention (pinned): ``out(o) = in(R^T (o - c) + c - (dy, dx))`` on (row, col) vectors with
``R = [[cos t, -sin t], [sin t, cos t]]`` and ``c = ((H-1)/2, (W-1)/2)``: positive ``dx`` moves the
mask right, positive ``dy`` down, positive ``theta`` turns it counter-clockwise on screen. Sampling is
bilinear; a source coordinate outside ``[0, H-1] x [0, W-1]`` gives 0 -- exactly
``scipy.ndimage.affine_transform(mask, R.T, offset, order=1, mode='constant')``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _as_tensor(value: float | Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.tensor(float(value), dtype=torch.float64)


def source_coordinates(height: int, width: int, dx: float | Tensor, dy: float | Tensor,
                       theta_deg: float | Tensor) -> tuple[Tensor, Tensor]:
    """Where each output pixel samples the input: (rows, cols), each (H, W) float64."""
    dx, dy, theta = (_as_tensor(v).to(torch.float64) for v in (dx, dy, theta_deg))
    t = theta * (math.pi / 180.0)
    cos, sin = torch.cos(t), torch.sin(t)
    rows = torch.arange(height, dtype=torch.float64, device=dx.device).view(-1, 1) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float64, device=dx.device).view(1, -1) - (width - 1) / 2
    src_r = cos * rows + sin * cols + (height - 1) / 2 - dy
    src_c = -sin * rows + cos * cols + (width - 1) / 2 - dx
    return src_r, src_c


def warp_mask(mask: Tensor, dx: float | Tensor = 0.0, dy: float | Tensor = 0.0,
              theta_deg: float | Tensor = 0.0) -> Tensor:
    """Warp ``mask`` (..., H, W) by a shift (pixels) and a rotation (degrees) about its centre.

    Differentiable in ``mask`` and in the three parameters (0-d tensors may require grad).
    Zero parameters return the mask unchanged.
    """
    if mask.dim() < 2:
        raise ValueError(f"warp_mask expects (..., H, W), got shape {tuple(mask.shape)}")
    params = [_as_tensor(v) for v in (dx, dy, theta_deg)]
    if all(p.numel() == 1 and not p.requires_grad and float(p) == 0.0 for p in params):
        return mask
    for name, p in zip(("dx", "dy", "theta"), params):
        if p.numel() != 1:
            raise ValueError(f"warp_mask: {name} must be a scalar, got shape {tuple(p.shape)}")
    params = [p.to(mask.device).reshape(()) for p in params]
    h, w = mask.shape[-2:]
    src_r, src_c = source_coordinates(h, w, *params)
    valid = (src_r >= 0) & (src_r <= h - 1) & (src_c >= 0) & (src_c <= w - 1)
    r0 = src_r.detach().floor().clamp(0, h - 1)
    c0 = src_c.detach().floor().clamp(0, w - 1)
    fr = (src_r - r0).to(mask.dtype)
    fc = (src_c - c0).to(mask.dtype)
    r0, c0 = r0.long(), c0.long()
    r1, c1 = (r0 + 1).clamp(max=h - 1), (c0 + 1).clamp(max=w - 1)
    flat = mask.reshape(*mask.shape[:-2], h * w)

    def take(r: Tensor, c: Tensor) -> Tensor:
        return flat[..., (r * w + c).reshape(-1)].reshape(*mask.shape[:-2], h, w)

    out = ((1 - fr) * (1 - fc) * take(r0, c0) + (1 - fr) * fc * take(r0, c1)
           + fr * (1 - fc) * take(r1, c0) + fr * fc * take(r1, c1))
    return out * valid.to(mask.dtype)
