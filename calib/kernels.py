"""Fused CPU kernels (numba) of the calibration forward model's placement sums.

A placement ``p`` moves band ``band[p]`` times its effective mask ``masks[:, p]`` by the integer
detector shift (``row[p]``, ``col[p]``); rows stay inside the window of height h, columns inside the
measurement width Wm, and whatever falls outside is dropped. The three kernels below are the
forward sum, its adjoint and the gradient with respect to the masks, one pass over the masks each
(the per-placement torch loop they replace spent most of its time in ~300 kernel launches per call).
A batch size of 1 in an input broadcasts against the other inputs. Batch entries run in parallel.
"""
from __future__ import annotations

import numba
import numpy as np
from torch import Tensor

from cassi.numba_threads import parallel_kernel


@numba.njit(parallel=True, cache=True)
def _place(x: np.ndarray, masks: np.ndarray, band: np.ndarray, row: np.ndarray, col: np.ndarray,
           y: np.ndarray) -> None:  # pragma: no cover (compiled)
    batch, h, wm = y.shape
    w = x.shape[3]
    for b in numba.prange(batch):
        bx = np.int64(b) if x.shape[0] > 1 else np.int64(0)
        bm = np.int64(b) if masks.shape[0] > 1 else np.int64(0)
        for p in range(band.shape[0]):
            c, tr, tc = band[p], row[p], col[p]
            q0, q1 = max(0, -tc), min(w, wm - tc)
            for r in range(max(0, -tr), min(h, h - tr)):
                dst, src, gain = y[b, r + tr, q0 + tc:q1 + tc], x[bx, c, r, q0:q1], masks[bm, p, r, q0:q1]
                for q in range(q1 - q0):
                    dst[q] += src[q] * gain[q]


@numba.njit(parallel=True, cache=True)
def _pick(y: np.ndarray, masks: np.ndarray, band: np.ndarray, row: np.ndarray, col: np.ndarray,
          x: np.ndarray) -> None:  # pragma: no cover (compiled)
    batch, _, h, w = x.shape
    wm = y.shape[2]
    for b in numba.prange(batch):
        by = np.int64(b) if y.shape[0] > 1 else np.int64(0)
        bm = np.int64(b) if masks.shape[0] > 1 else np.int64(0)
        for p in range(band.shape[0]):
            c, tr, tc = band[p], row[p], col[p]
            q0, q1 = max(0, -tc), min(w, wm - tc)
            for r in range(max(0, -tr), min(h, h - tr)):
                dst, src, gain = x[b, c, r, q0:q1], y[by, r + tr, q0 + tc:q1 + tc], masks[bm, p, r, q0:q1]
                for q in range(q1 - q0):
                    dst[q] += src[q] * gain[q]


@numba.njit(parallel=True, cache=True)
def _mask_products(cube: np.ndarray, canvas: np.ndarray, band: np.ndarray, row: np.ndarray, col: np.ndarray,
                   grad: np.ndarray) -> None:  # pragma: no cover (compiled)
    batch, _, h, w = grad.shape
    wm = canvas.shape[2]
    for b in numba.prange(batch):
        bx = np.int64(b) if cube.shape[0] > 1 else np.int64(0)
        by = np.int64(b) if canvas.shape[0] > 1 else np.int64(0)
        for p in range(band.shape[0]):
            c, tr, tc = band[p], row[p], col[p]
            q0, q1 = max(0, -tc), min(w, wm - tc)
            for r in range(max(0, -tr), min(h, h - tr)):
                dst, src, light = grad[b, p, r, q0:q1], cube[bx, c, r, q0:q1], canvas[by, r + tr, q0 + tc:q1 + tc]
                for q in range(q1 - q0):
                    dst[q] = src[q] * light[q]


class PlacementIndex:
    """The (band, row shift, col shift) of every placement as int64 arrays for the kernels."""

    def __init__(self, band: tuple[int, ...], row: tuple[int, ...], col: tuple[int, ...]) -> None:
        self.band, self.row, self.col = (np.asarray(v, dtype=np.int64) for v in (band, row, col))

    def __len__(self) -> int:
        return len(self.band)


def _arrays(*tensors: Tensor) -> list[np.ndarray]:
    dtype = tensors[0].dtype
    if any(t.device.type != "cpu" or t.dtype != dtype for t in tensors):
        raise ValueError("the placement kernels need CPU tensors of one dtype, got "
                         f"{[(str(t.device), t.dtype) for t in tensors]}")
    return [t.detach().contiguous().numpy() for t in tensors]


def place(x: Tensor, masks: Tensor, index: PlacementIndex, width: int) -> Tensor:
    """``y = sum_p place(x[:, band_p] * masks[:, p])``: (B, h, width) from x (B or 1, L, h, W) and
    masks (B or 1, P, h, W)."""
    y = x.new_zeros(max(x.shape[0], masks.shape[0]), x.shape[-2], width)
    with parallel_kernel():
        _place(*_arrays(x, masks), index.band, index.row, index.col, y.numpy())
    return y


def pick(y: Tensor, masks: Tensor, index: PlacementIndex, bands: int, width: int) -> Tensor:
    """Adjoint of :func:`place`: (B, L, h, width) from y (B or 1, h, Wm) and masks (B or 1, P, h, W)."""
    x = y.new_zeros(max(y.shape[0], masks.shape[0]), bands, y.shape[-2], width)
    with parallel_kernel():
        _pick(*_arrays(y, masks), index.band, index.row, index.col, x.numpy())
    return x


def mask_products(cube: Tensor, canvas: Tensor, index: PlacementIndex, width: int) -> Tensor:
    """``grad[b, p] = cube[b, band_p] * canvas[b]`` moved back by placement p's shift (0 where p
    falls off the detector): (B, P, h, width), the gradient of ``<canvas, place(cube, masks)>``
    with respect to the masks."""
    batch = max(cube.shape[0], canvas.shape[0])
    grad = cube.new_zeros(batch, len(index), cube.shape[-2], width)
    with parallel_kernel():
        _mask_products(*_arrays(cube, canvas), index.band, index.row, index.col, grad.numpy())
    return grad

