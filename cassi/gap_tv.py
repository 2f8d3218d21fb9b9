"""GAP-TV (generalized alternating projection with a total-variation prior), batched.

Accelerated GAP (Yuan, ICIP 2016) for any :class:`cassi.CassiOperator`, nominal or mismatched::

    x <- x + lam * A^T((y_acc - A x) / D),   y_acc <- y_acc + (y - A x)   (accelerated)
    x <- TV_denoise(x)                                   (Chambolle, per band, fixed iterations)

``D`` = row sums of ``A A^T`` (``sum_c Phi_c^2`` for the nominal operator, as in the toolbox; a
Gershgorin bound that keeps the step stable for sub-pixel operators). Every step is differentiable;
``checkpoint=True`` recomputes each iteration in the backward pass (memory ~ one iteration), which is
how calibration unrolls it. Without autograd, the TV step on CPU is one fused numba kernel.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint as recompute

from cassi.numba_threads import parallel_kernel
from cassi.operator import CassiOperator, check_finite


def _tv_differentiable(image: Tensor, weight: float, iterations: int) -> Tensor:
    """Chambolle's iteration out of place in torch, so autograd (and any device) can run through it."""
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
        squared = gx * gx + gy * gy
        # sqrt'(0) is infinite: where the gradient is zero (flat areas, padded edges) the value is 0 and
        # its derivative is taken as 0 (the subgradient), so backward passes through flat images
        safe = torch.sqrt(torch.where(squared > 0, squared, torch.ones_like(squared)))
        norm = torch.where(squared > 0, safe, torch.zeros_like(squared)) * (tau / weight) + 1.0
        px, py = (px - tau * gx) / norm, (py - tau * gy) / norm
    return out


@numba.njit(cache=True)
def _plane_after(buffer: np.ndarray, image: np.ndarray, quarters: int, rows: int) -> np.ndarray:
    """A (rows, W) view of ``buffer`` (at least rows * W + 4 KiB long) starting ``quarters`` / 4 of a
    4 KiB page after ``image`` (H, W), modulo 4 KiB.

    Streams whose addresses nearly agree in bits 0-11 make loads wait for the stores before them
    ("4K aliasing"): with unplaced planes the fused loop ran up to ~5x slower.
    """
    w = image.shape[1]
    page = 4096 // image.itemsize
    start = ((image.ctypes.data - buffer.ctypes.data) // image.itemsize + quarters * page // 4) % page
    return buffer[start:start + rows * w].reshape(rows, w)


@numba.njit(parallel=True, fastmath=False, cache=True)
def _chambolle_slices(image: np.ndarray, out: np.ndarray, work: np.ndarray, weight: float,
                      iterations: int) -> None:  # pragma: no cover (compiled)
    """scikit-image's Chambolle iteration, fused, on every (H, W) slice of ``image`` (N, H, W) into ``out``.

    ``work`` (T, 3, H * W + 4 KiB) holds ``p`` and two rows of ``o = image - div(p)`` for each of T
    workers, each taking an equal run of slices. One pass over memory per step: row ``r`` of ``o``
    is formed just before row ``r - 1`` of ``p`` is updated from the gradient of ``o``. Same
    operations in the same order and dtype as ``skimage.restoration.denoise_tv_chambolle`` (no FMA).
    """
    n, h, w = image.shape
    typed = np.array([0.25, 0.25 / weight, 1.0, 0.0]).astype(image.dtype)
    tau, scale, one, zero = typed[0], typed[1], typed[2], typed[3]
    last = max(iterations, 1) - 1
    workers = work.shape[0]
    for k in numba.prange(workers):
        for s in range(k * n // workers, (k + 1) * n // workers):
            img = image[s]
            rows = _plane_after(work[k, 0], img, 1, 2)  # row r of o lives in rows[r % 2]
            px, py = _plane_after(work[k, 1], img, 2, h), _plane_after(work[k, 2], img, 3, h)
            px[:] = 0
            py[:] = 0
            for it in range(last + 1):
                for r in range(h + 1):
                    if r < h:  # -div(p) = -(px + py) + px[r - 1, c] + py[r, c - 1], then image + that
                        i = r % 2
                        for c in range(w):
                            v = -(px[r, c] + py[r, c])
                            if r > 0:
                                v += px[r - 1, c]
                            if c > 0:
                                v += py[r, c - 1]
                            if it == last:
                                out[s, r, c] = img[r, c] + v
                            else:
                                rows[i, c] = img[r, c] + v
                    if r == 0 or it == last:
                        continue
                    q, i, j = r - 1, (r - 1) % 2, r % 2  # row q + 1 of o is ready: update p on row q
                    for c in range(w):  # (gradients are 0 past the edges)
                        gx = rows[j, c] - rows[i, c] if r < h else zero
                        gy = rows[i, c + 1] - rows[i, c] if c + 1 < w else zero
                        norm = np.sqrt(gx * gx + gy * gy) * scale + one
                        px[q, c] = (px[q, c] - tau * gx) / norm
                        py[q, c] = (py[q, c] - tau * gy) / norm


def _tv_fused(image: Tensor, weight: float, iterations: int) -> Tensor:
    """:func:`_chambolle_slices` on a float32 / float64 CPU tensor, on torch's number of threads."""
    if image.numel() == 0:
        return image.detach().clone()
    flat = image.detach().reshape(-1, *image.shape[-2:]).contiguous()
    out = torch.empty_like(flat)
    with parallel_kernel(flat.shape[0]) as workers:
        work = flat.new_empty(workers, 3, flat[0].numel() + 4096 // flat.element_size())
        _chambolle_slices(flat.numpy(), out.numpy(), work.numpy(), weight, iterations)
    return out.reshape(image.shape)


def compile_tv_kernel() -> None:
    """Compile (or load from numba's cache) the fused TV kernel for float32 and float64, e.g. before
    timing a reconstruction."""
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            tv_denoise(torch.zeros(1, 2, 2, dtype=dtype), 0.1)


def tv_denoise(image: Tensor, weight: float, iterations: int = 5) -> Tensor:
    """Isotropic 2-D TV denoising of every (H, W) slice of ``image`` (..., H, W), Chambolle (2004).

    Same iteration as ``skimage.restoration.denoise_tv_chambolle(..., channel_axis=...)`` with
    ``max_num_iter=iterations`` and no early stop. Differentiable (torch) when autograd records and on
    non-CPU devices; otherwise float32 / float64 CPU tensors go through the fused numba kernel.
    """
    if weight <= 0:
        raise ValueError(f"TV weight must be positive, got {weight}")
    if ((torch.is_grad_enabled() and image.requires_grad) or image.device.type != "cpu"
            or image.dtype not in (torch.float32, torch.float64)):
        return _tv_differentiable(image, weight, iterations)
    return _tv_fused(image, weight, iterations)


def gap_tv(y: Tensor, op: CassiOperator, iterations: int = 50, tv_weight: float = 0.1,
           tv_iterations: int = 5, step_size: float = 1.0, accelerate: bool = True,
           x0: Tensor | None = None, checkpoint: bool = False) -> Tensor:
    """Reconstruct (B, L, H, W) from measurements ``y`` (B, H, W + step*(L-1)) through ``op``.

    ``tv_weight`` is relative to cube values in [0, 1]. The iteration starts from ``x0`` (zeros by
    default, so the first projection gives ``A^T(y / sum Phi^2)``) with the accumulated measurement
    ``y_acc = A x0``; each step adds the residual to ``y_acc`` and projects onto ``A x = y_acc``.
    """
    op.check_measurement(y)
    check_finite("measurement", y)
    if iterations < 1:
        raise ValueError(f"GAP-TV needs at least one iteration, got {iterations}")
    phi_sum = op.gram_row_sums().to(y.dtype)
    x = y.new_zeros(y.shape[0], op.bands, op.height, op.width) if x0 is None else x0
    y_acc = torch.zeros_like(y) if x0 is None else op(x0)

    def iterate(x: Tensor, y_acc: Tensor) -> tuple[Tensor, Tensor]:
        projected = op(x)
        if accelerate:
            y_acc = y_acc + (y - projected)
            update = op.adjoint((y_acc - projected) / phi_sum)
        else:
            update = op.adjoint((y - projected) / phi_sum)
        if torch.is_grad_enabled() or update.shape != x.shape or update.dtype != x.dtype:
            x = x + step_size * update
        else:  # in place on the fresh A^T(...): one pass, no new cube
            x = torch.add(x, update, alpha=step_size, out=update)
        return tv_denoise(x, tv_weight, tv_iterations), y_acc

    for _ in range(iterations):
        if checkpoint and torch.is_grad_enabled():
            x, y_acc = recompute(iterate, x, y_acc, use_reentrant=False)
        else:
            x, y_acc = iterate(x, y_acc)
    return x
