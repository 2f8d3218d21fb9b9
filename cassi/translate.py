"""Sub-pixel translation of images onto / off a larger canvas (the dispersion's building block).

``place`` adds an image (optionally times a same-sized ``factor``, e.g. the coded mask) to a canvas,
moved by a (row, col) offset in pixels; fractional offsets use bilinear weights over the four
neighbouring integer offsets (light is conserved; what falls outside the canvas is lost). ``pick`` is
its exact adjoint. Both are differentiable in the images, the canvas and the offsets (0-d tensors);
without autograd they work in place, with no temporaries.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _overlap(shift: int, src: int, dst: int) -> tuple[slice, slice] | None:
    """Source and destination slices of a 1-D integer shift from length ``src`` onto length ``dst``."""
    lo, hi = max(0, shift), min(dst, src + shift)
    if hi <= lo:
        return None
    return slice(lo - shift, hi - shift), slice(lo, hi)


Term = tuple[int, int, "float | Tensor"]


def bilinear_terms(row: Tensor, col: Tensor) -> list[Term]:
    """The integer offsets ``(dr, dc)`` and bilinear weights of a fractional (row, col) offset.

    When the offsets need no gradient the weights are Python floats and zero weights are dropped;
    otherwise all four terms are kept with tensor weights that carry the gradient.
    """
    if _tracking(row, col):
        r0, c0 = torch.floor(row.detach()), torch.floor(col.detach())
        fr, fc = row - r0, col - c0
        r0, c0 = int(r0), int(c0)
    else:
        r, c = float(row), float(col)
        r0, c0 = math.floor(r), math.floor(c)
        fr, fc = r - r0, c - c0
    terms = []
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            weight = wr * wc
            if isinstance(weight, Tensor) or weight != 0.0:
                terms.append((r0 + dr, c0 + dc, weight))
    return terms


def _tracking(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def place(canvas: Tensor, image: Tensor, terms: list[Term], factor: Tensor | None = None) -> Tensor:
    """``canvas[..., p] += (image * factor)[..., p - offset]`` (bilinear ``terms`` of the offset), in place.

    canvas (..., Hc, Wc); image (..., H, W); factor broadcastable to image (None: 1). Returns canvas.
    """
    h, w = image.shape[-2:]
    hc, wc = canvas.shape[-2:]
    grad = _tracking(canvas, image, factor) or any(isinstance(t[2], Tensor) for t in terms)
    for dr, dc, weight in terms:
        rows, cols = _overlap(dr, h, hc), _overlap(dc, w, wc)
        if rows is None or cols is None:
            continue
        src = image[..., rows[0], cols[0]]
        fac = None if factor is None else factor[..., rows[0], cols[0]]
        dst = canvas[..., rows[1], cols[1]]
        if grad:
            part = src * weight
            dst += part if fac is None else part * fac
        elif fac is None:
            dst.add_(src, alpha=float(weight))
        else:
            dst.addcmul_(src, fac, value=float(weight))
    return canvas


def pick(canvas: Tensor, terms: list[Term], height: int, width: int,
         factor: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """Adjoint of :func:`place`: ``out[..., q] = factor * canvas[..., q + offset]`` (bilinear ``terms``).

    Returns a new (..., height, width) tensor (zeros where the offset reads outside the canvas), or
    fills ``out`` of that shape (without autograd only). A single weight-1 term that reads the whole
    output (an integer offset) is one multiplication.
    """
    hc, wc = canvas.shape[-2:]
    grad = _tracking(canvas, factor) or any(isinstance(t[2], Tensor) for t in terms)
    if out is not None and grad:
        raise ValueError("pick(..., out=) works without autograd only")
    spans = [(_overlap(dr, height, hc), _overlap(dc, width, wc), weight) for dr, dc, weight in terms]
    spans = [(rows, cols, weight) for rows, cols, weight in spans if rows is not None and cols is not None]
    if not grad and len(spans) == 1:
        rows, cols, weight = spans[0]
        if weight == 1.0 and rows[0] == slice(0, height) and cols[0] == slice(0, width):
            src = canvas[..., rows[1], cols[1]]
            if out is None:
                return src.clone() if factor is None else src * factor
            return out.copy_(src) if factor is None else torch.mul(src, factor, out=out)
    out = canvas.new_zeros(*canvas.shape[:-2], height, width) if out is None else out.zero_()
    for rows, cols, weight in spans:
        src, dst = canvas[..., rows[1], cols[1]], out[..., rows[0], cols[0]]
        if grad:
            dst += src * weight
        else:
            dst.add_(src, alpha=float(weight))
    if factor is None:
        return out
    return out * factor if grad else out.mul_(factor)
