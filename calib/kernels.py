"""Fused CPU kernel (numba) of the calibration forward model's placement sums.

A placement ``p`` moves band ``band[p]`` times its effective mask ``masks[:, p]`` by the integer
detector shift (``row[p]``, ``col[p]``); rows stay inside the window of height h, columns inside the
measurement width Wm, and whatever falls outside is dropped. The forward sum, its adjoint and the
gradient with respect to the masks are the same loop over placements and rows with different
operands, so they share one kernel, one pass over the masks per call (the per-placement torch loop
it replaced spent most of its time in ~300 kernel launches per call). A batch size of 1 in an input
broadcasts against the other inputs. Batch entries run in parallel.
"""
from __future__ import annotations

import numba
import numpy as np
from torch import Tensor

from cassi.numba_threads import parallel_kernel

BY_BAND, BY_PLACEMENT, SINGLE = 0, 1, 2   # the plane of an operand's axis 1 that placement p uses


@numba.njit(inline="always")
def _plane(select: int, c: int, p: int) -> int:  # pragma: no cover (compiled)
    if select == BY_BAND:
        return c
    return p if select == BY_PLACEMENT else 0


@numba.njit(inline="always")
def _batch(array: np.ndarray, b: int) -> int:  # pragma: no cover (compiled)
    return b if array.shape[0] > 1 else 0


@numba.njit(parallel=True, cache=True)
def _shifted_products(out: np.ndarray, out_select: int, out_moved: bool, a: np.ndarray, a_select: int,
                      a_moved: bool, g: np.ndarray, g_select: int, g_moved: bool, band: np.ndarray,
                      row: np.ndarray, col: np.ndarray, height: int, width: int,
                      measurement_width: int) -> None:  # pragma: no cover (compiled)
    """For every placement p and scene-grid pixel (r, q) whose moved position (r + row[p], q + col[p])
    is on the detector: ``out += a * g``, each operand (B or 1, planes, rows, cols) read at the moved
    position when ``*_moved`` (else at (r, q)) on plane band[p], p or 0 (``*_select``)."""
    for b in numba.prange(out.shape[0]):
        bo, ba, bg = np.int64(b), np.int64(_batch(a, b)), np.int64(_batch(g, b))
        for p in range(band.shape[0]):
            c, tr, tc = band[p], row[p], col[p]
            q0, q1 = max(0, -tc), min(width, measurement_width - tc)
            po, pa, pg = _plane(out_select, c, p), _plane(a_select, c, p), _plane(g_select, c, p)
            for r in range(max(0, -tr), min(height, height - tr)):
                dst = out[bo, po, r + tr, q0 + tc:q1 + tc] if out_moved else out[bo, po, r, q0:q1]
                src = a[ba, pa, r + tr, q0 + tc:q1 + tc] if a_moved else a[ba, pa, r, q0:q1]
                gain = g[bg, pg, r + tr, q0 + tc:q1 + tc] if g_moved else g[bg, pg, r, q0:q1]
                for q in range(q1 - q0):
                    dst[q] += src[q] * gain[q]


class PlacementIndex:
    """The (band, row shift, col shift) of every placement as int64 arrays for the kernel."""

    def __init__(self, band: list[int], row: list[int], col: list[int]) -> None:
        self.band, self.row, self.col = (np.asarray(v, dtype=np.int64) for v in (band, row, col))

    def __len__(self) -> int:
        return len(self.band)


Operand = tuple[Tensor, int, bool]   # (B or 1, planes, rows, cols) tensor, plane selection, read moved


def _run(out: Operand, a: Operand, g: Operand, index: PlacementIndex, width: int, measurement_width: int) -> None:
    """``out += a * g`` over the placements (see :func:`_shifted_products`); ``out`` is written in place."""
    tensors = (out[0], a[0], g[0])
    if any(t.device.type != "cpu" or t.dtype != out[0].dtype for t in tensors) or not out[0].is_contiguous():
        raise ValueError("the placement kernel needs CPU tensors of one dtype and a contiguous output, got "
                         f"{[(str(t.device), t.dtype) for t in tensors]}")
    arrays = [out[0].numpy()] + [t.detach().contiguous().numpy() for t in tensors[1:]]
    with parallel_kernel():
        _shifted_products(arrays[0], out[1], out[2], arrays[1], a[1], a[2], arrays[2], g[1], g[2],
                          index.band, index.row, index.col, a[0].shape[-2], width, measurement_width)


def place(x: Tensor, masks: Tensor, index: PlacementIndex, width: int) -> Tensor:
    """``y = sum_p place(x[:, band_p] * masks[:, p])``: (B, h, width) from x (B or 1, L, h, W) and
    masks (B or 1, P, h, W)."""
    y = x.new_zeros(max(x.shape[0], masks.shape[0]), 1, x.shape[-2], width)
    _run((y, SINGLE, True), (x, BY_BAND, False), (masks, BY_PLACEMENT, False), index, x.shape[-1], width)
    return y[:, 0]


def pick(y: Tensor, masks: Tensor, index: PlacementIndex, bands: int, width: int) -> Tensor:
    """Adjoint of :func:`place`: (B, L, h, width) from y (B or 1, h, Wm) and masks (B or 1, P, h, W)."""
    x = y.new_zeros(max(y.shape[0], masks.shape[0]), bands, y.shape[-2], width)
    _run((x, BY_BAND, False), (y[:, None], SINGLE, True), (masks, BY_PLACEMENT, False), index, width,
         y.shape[-1])
    return x


def mask_products(cube: Tensor, canvas: Tensor, index: PlacementIndex, width: int) -> Tensor:
    """``grad[b, p] = cube[b, band_p] * canvas[b]`` moved back by placement p's shift (0 where p
    falls off the detector): (B, P, h, width), the gradient of ``<canvas, place(cube, masks)>``
    with respect to the masks."""
    grad = cube.new_zeros(max(cube.shape[0], canvas.shape[0]), len(index), cube.shape[-2], width)
    _run((grad, BY_PLACEMENT, False), (cube, BY_BAND, False), (canvas[:, None], SINGLE, True), index, width,
         canvas.shape[-1])
    return grad
