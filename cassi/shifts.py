"""Integer dispersion shifts: the toolbox's ``shift`` / ``shift_back`` (the only implementation).

Convention (MST / TSA toolbox): band ``c`` of a cube ``(B, L, H, W)`` is moved right by
``offsets[c]`` columns (``step * c`` by default) onto a canvas of width
``W + offsets[-1]`` (``W + step * (L - 1)``, i.e. ``W + 54`` for 28 bands, step 2).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def band_offsets(bands: int, step: int | float | Sequence[int] = 2) -> list[int]:
    """Column offset of each band: ``int(step * c)``, or ``step`` itself when a sequence is given."""
    if isinstance(step, (int, float)):
        return [int(step * c) for c in range(bands)]
    offsets = [int(o) for o in step]
    if len(offsets) != bands:
        raise ValueError(f"got {len(offsets)} band offsets for {bands} bands")
    return offsets


def shift(x: Tensor, step: int | Sequence[int] = 2) -> Tensor:
    """Place band ``c`` of ``x`` (B, L, H, W) at columns ``offsets[c] ... offsets[c] + W - 1``.

    Returns the per-band canvas (B, L, H, W + max offset); zeros elsewhere.
    """
    if x.dim() != 4:
        raise ValueError(f"shift expects a (B, L, H, W) cube, got shape {tuple(x.shape)}")
    b, bands, h, w = x.shape
    offsets = band_offsets(bands, step)
    out = x.new_zeros(b, bands, h, w + max(offsets))
    for c, o in enumerate(offsets):
        out[:, c, :, o:o + w] = x[:, c]
    return out


def shift_back(y: Tensor, bands: int | None = None, step: int | Sequence[int] = 2,
               width: int | None = None) -> Tensor:
    """Inverse of :func:`shift`: band ``c`` is columns ``offsets[c] ... offsets[c] + width - 1``.

    ``y`` is either a 2-D measurement batch (B, H, Wm) -- every band then reads the same
    canvas and ``bands`` is required -- or a per-band canvas (B, L, H, Wm).
    ``width`` defaults to ``Wm - max offset``. Returns a new tensor (B, L, H, width).
    """
    if y.dim() == 3:
        if bands is None:
            raise ValueError("shift_back of a (B, H, Wm) measurement needs the band count")
        offsets = band_offsets(bands, step)
        canvas = y.unsqueeze(1)
        pick = [0] * bands
    elif y.dim() == 4:
        if bands is not None and bands != y.shape[1]:
            raise ValueError(f"shift_back: bands={bands} but the canvas has {y.shape[1]} bands")
        bands = y.shape[1]
        offsets = band_offsets(bands, step)
        canvas = y
        pick = list(range(bands))
    else:
        raise ValueError(f"shift_back expects (B, H, Wm) or (B, L, H, Wm), got shape {tuple(y.shape)}")
    wm = canvas.shape[-1]
    width = wm - max(offsets) if width is None else width
    if width <= 0 or max(offsets) + width > wm:
        raise ValueError(f"shift_back: canvas width {wm} too small for offsets up to {max(offsets)} "
                         f"and width {width}")
    return torch.stack([canvas[:, p, :, o:o + width] for p, o in zip(pick, offsets)], dim=1)
