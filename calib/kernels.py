"""Fused CPU kernels (numba) of the calibration forward model: the CPU backend of :mod:`calib.placement`.

A placement ``p`` moves band ``band[p]`` times its effective mask ``masks[:, p]`` by the integer
detector shift (``row[p]``, ``col[p]``); see :mod:`calib.placement`. The forward sum, its adjoint and the
gradient with respect to the masks are the same loop over placements and rows with different
operands, so they share one kernel, one pass over the masks per call (the per-placement torch loop
it replaced spent most of its time in ~300 kernel launches per call). Two more kernels serve the
blind score's inner loop without autograd: :func:`effective_masks` builds the masks from the coarse
mask (no enlarged grid in memory), and :func:`subspace_normal` applies ``U^T A^T W A U`` to each batch
entry with its temporaries in cache (the masks, the largest operand, are read twice per entry, one
entry after the other, instead of once per operator call for the whole batch). An input with B / g
entries is shared by g consecutive entries of the B-entry output (g = B: a batch of 1 broadcasts).
Batch entries run in parallel.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from calib.placement import PlacementIndex, batch_size
from cassi.numba_threads import parallel_kernel

BY_BAND, BY_PLACEMENT, SINGLE = 0, 1, 2   # the plane of an operand's axis 1 that placement p uses


@numba.njit(inline="always")
def _plane(select: int, c: int, p: int) -> int:  # pragma: no cover (compiled)
    if select == BY_BAND:
        return c
    return p if select == BY_PLACEMENT else 0


@numba.njit(inline="always")
def _batch(array: np.ndarray, b: int, entries: int) -> int:  # pragma: no cover (compiled)
    """The entry of ``array`` that output entry b of ``entries`` reads (shared by consecutive entries)."""
    return b * array.shape[0] // entries


@numba.njit(parallel=True, cache=True)
def _shifted_products(out: np.ndarray, out_select: int, out_moved: bool, a: np.ndarray, a_select: int,
                      a_moved: bool, g: np.ndarray, g_select: int, g_moved: bool, band: np.ndarray,
                      row: np.ndarray, col: np.ndarray, height: int, width: int,
                      measurement_width: int) -> None:  # pragma: no cover (compiled)
    """For every placement p and scene-grid pixel (r, q) whose moved position (r + row[p], q + col[p])
    is on the detector: ``out += a * g``, each operand (B or 1, planes, rows, cols) read at the moved
    position when ``*_moved`` (else at (r, q)) on plane band[p], p or 0 (``*_select``)."""
    for b in numba.prange(out.shape[0]):
        bo, ba, bg = np.int64(b), np.int64(_batch(a, b, out.shape[0])), np.int64(_batch(g, b, out.shape[0]))
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
    y = x.new_zeros(batch_size(x, masks), 1, x.shape[-2], width)
    _run((y, SINGLE, True), (x, BY_BAND, False), (masks, BY_PLACEMENT, False), index, x.shape[-1], width)
    return y[:, 0]


def pick(y: Tensor, masks: Tensor, index: PlacementIndex, bands: int, width: int) -> Tensor:
    """Adjoint of :func:`place`: (B, L, h, width) from y (B or 1, h, Wm) and masks (B or 1, P, h, W)."""
    x = y.new_zeros(batch_size(y, masks), bands, y.shape[-2], width)
    _run((x, BY_BAND, False), (y[:, None], SINGLE, True), (masks, BY_PLACEMENT, False), index, width,
         y.shape[-1])
    return x


@numba.njit(parallel=True, cache=True)
def _mask_products(out: np.ndarray, cube: np.ndarray, canvas: np.ndarray, band: np.ndarray, row: np.ndarray,
                   col: np.ndarray) -> None:  # pragma: no cover (compiled)
    """``out[b, p, r, q] = cube[b, band[p], r, q] * canvas[b, r + row[p], q + col[p]]`` where that
    position is on the detector, 0 elsewhere: every element written once (no zero-fill pass)."""
    entries, placements, h, w = out.shape
    measurement_width = canvas.shape[-1]
    for item in numba.prange(entries * placements):
        b, p = np.int64(item // placements), np.int64(item % placements)
        bx, by = np.int64(_batch(cube, b, entries)), np.int64(_batch(canvas, b, entries))
        c, tr, tc = band[p], row[p], col[p]
        q0, q1 = max(0, -tc), min(w, measurement_width - tc)
        r0, r1 = max(0, -tr), min(h, h - tr)
        plane = out[b, p]
        for r in range(h):
            dst = plane[r]
            if r < r0 or r >= r1 or q1 <= q0:
                dst[:] = 0
                continue
            dst[:q0] = 0
            dst[q1:] = 0
            src, gain = cube[bx, c, r, q0:q1], canvas[by, r + tr, q0 + tc:q1 + tc]
            for q in range(q1 - q0):
                dst[q0 + q] = src[q] * gain[q]


def mask_products(cube: Tensor, canvas: Tensor, index: PlacementIndex, width: int) -> Tensor:
    """``grad[b, p] = cube[b, band_p] * canvas[b]`` moved back by placement p's shift (0 where p
    falls off the detector): (B, P, h, width), the gradient of ``<canvas, place(cube, masks)>``
    with respect to the masks."""
    tensors = (cube, canvas)
    if any(t.device.type != "cpu" or t.dtype != cube.dtype for t in tensors):
        raise ValueError("the placement kernel needs CPU tensors of one dtype, got "
                         f"{[(str(t.device), t.dtype) for t in tensors]}")
    grad = cube.new_empty(batch_size(cube, canvas), len(index), cube.shape[-2], width)
    with parallel_kernel():
        _mask_products(grad.numpy(), cube.detach().contiguous().numpy(), canvas.detach().contiguous().numpy(),
                       index.band, index.row, index.col)
    return grad


@numba.njit(cache=True)
def _fine_samples(fine: np.ndarray, mask: np.ndarray, cos: float, sin: float, dx: float, dy: float,
                  coarse_row: int, spatial: int) -> None:  # pragma: no cover (compiled)
    """``fine[vr * N + vc, q] = M(N coarse_row + vr, N q + vc)``: the fine mask M (the coarse ``mask``
    nearest-upsampled N x N and warped by (N dx, N dy, theta) about the fine centre, bilinear, zero
    outside: :func:`calib.forward_model.fine_mask`, the same coordinates; the blend in float64) at
    the N x N sub-pixels of one coarse row, in passes that vectorise: coordinates, then corner
    indices and fractions, then the gathers."""
    n, w = spatial, fine.shape[1]
    flat = mask.reshape(-1)
    fh, fw = n * mask.shape[0], n * mask.shape[1]
    centre_r, centre_c = (fh - 1) / 2, (fw - 1) / 2
    last_r, last_c = fh - 1.0, fw - 1.0
    src_r, src_c, frac_r, frac_c, inside = np.empty(w), np.empty(w), np.empty(w), np.empty(w), np.empty(w)
    corners = np.empty((4, w), np.int64)
    for vr in range(n):
        out_r = np.float64(n * coarse_row + vr) - centre_r
        for vc in range(n):
            for q in range(w):
                out_c = np.float64(n * q + vc) - centre_c
                src_r[q] = cos * out_r + sin * out_c + centre_r - n * dy
                src_c[q] = -sin * out_r + cos * out_c + centre_c - n * dx
            for q in range(w):
                sr, sc = src_r[q], src_c[q]
                inside[q] = 1.0 if (sr >= 0) & (sr <= last_r) & (sc >= 0) & (sc <= last_c) else 0.0
                r0, c0 = min(max(np.floor(sr), 0.0), last_r), min(max(np.floor(sc), 0.0), last_c)
                frac_r[q], frac_c[q] = sr - r0, sc - c0
                # coarse pixel of fine (r, c): floor(r / N) of integers, as floor((r + 0.5) / N)
                top = np.int64(np.floor((r0 + 0.5) / n)) * mask.shape[1]
                bottom = np.int64(np.floor((min(r0 + 1.0, last_r) + 0.5) / n)) * mask.shape[1]
                left = np.int64(np.floor((c0 + 0.5) / n))
                right = np.int64(np.floor((min(c0 + 1.0, last_c) + 0.5) / n))
                corners[0, q], corners[1, q] = top + left, top + right
                corners[2, q], corners[3, q] = bottom + left, bottom + right
            samples = fine[vr * n + vc]
            for q in range(w):
                fr, fc = frac_r[q], frac_c[q]
                upper = (1.0 - fc) * flat[corners[0, q]] + fc * flat[corners[1, q]]
                lower = (1.0 - fc) * flat[corners[2, q]] + fc * flat[corners[3, q]]
                samples[q] = inside[q] * ((1.0 - fr) * upper + fr * lower)


@numba.njit(inline="always")
def _keys(t: float) -> float:  # pragma: no cover (compiled)
    """Keys' cubic convolution kernel (a = -0.5) at distance t."""
    t = abs(t)
    if t <= 1.0:
        return (1.5 * t - 2.5) * t * t + 1.0
    if t < 2.0:
        return ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    return 0.0


@numba.njit(cache=True)
def _cubic_samples(samples: np.ndarray, mask: np.ndarray, cos: float, sin: float, dx: float, dy: float,
                   row: int) -> None:  # pragma: no cover (compiled)
    """``samples[q]``: the ``mask`` warped by (dx, dy, theta) about its centre (:mod:`cassi.warp`
    coordinates, zero where the source falls outside [0, H-1] x [0, W-1]) at (row, q), read with Keys'
    cubic convolution (4 x 4 taps, taps outside the mask read 0): :func:`calib.forward_model.fine_mask`
    with ``interpolation="cubic"`` (native grid only)."""
    height, width = mask.shape
    centre_r, centre_c = (height - 1) / 2, (width - 1) / 2
    out_r = np.float64(row) - centre_r
    for q in range(samples.shape[0]):
        out_c = np.float64(q) - centre_c
        sr = cos * out_r + sin * out_c + centre_r - dy
        sc = -sin * out_r + cos * out_c + centre_c - dx
        if not ((sr >= 0) & (sr <= height - 1.0) & (sc >= 0) & (sc <= width - 1.0)):
            samples[q] = 0.0
            continue
        r0, c0 = np.floor(sr), np.floor(sc)
        total = 0.0
        for i in range(-1, 3):
            r = np.int64(r0) + i
            if r < 0 or r >= height:
                continue
            wr = _keys(sr - r0 - i)
            across = 0.0
            for j in range(-1, 3):
                c = np.int64(c0) + j
                if 0 <= c < width:
                    across += _keys(sc - c0 - j) * mask[r, c]
            total += wr * across
        samples[q] = total


@numba.njit(parallel=True, cache=True)
def _effective_masks(out: np.ndarray, mask: np.ndarray, weights: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                     dx: np.ndarray, dy: np.ndarray, starts: np.ndarray, spatial: int,
                     cubic: bool) -> None:  # pragma: no cover
    """``out[b * S + s, p, i] = sum_v weights[b, p, v] * fine_v`` for every coarse row i of window s,
    fine_v the fine-mask samples of :func:`_fine_samples` (``cubic``: :func:`_cubic_samples`, N = 1)
    for candidate b."""
    entries, placements, h, w = out.shape
    windows, n = starts.shape[0], spatial
    for item in numba.prange(entries * h):
        e, i = np.int64(item // h), np.int64(item % h)
        b, s = e // windows, e % windows
        fine = np.empty((n * n, w), out.dtype)
        if cubic:
            _cubic_samples(fine[0], mask, cos[b], sin[b], dx[b], dy[b], starts[s] + i)
        else:
            _fine_samples(fine, mask, cos[b], sin[b], dx[b], dy[b], starts[s] + i, n)
        for p in range(placements):
            row = out[e, p, i]
            row[:] = 0
            for v in range(n * n):
                gain, samples = weights[b, p, v], fine[v]
                if gain == 0:                              # most placements use only some fine rows / cols
                    continue
                for q in range(w):
                    row[q] += gain * samples[q]


def effective_masks(mask: Tensor, params: Tensor, weights: Tensor, starts: list[int], height: int,
                    spatial: int, interpolation: str = "linear") -> Tensor:
    """The effective masks (B*S, P, h, W) of candidates ``params`` (B, 5) on the row windows starting
    at ``starts`` (S,), from the coarse ``mask`` (H, W) and the weights (B, P, N*N) of
    :func:`calib.forward_model.effective_mask_weights`; the mask read with ``interpolation``
    ("linear", or "cubic" with N = 1: :func:`calib.forward_model.fine_mask`); no autograd."""
    theta = params[:, 2].detach().to(torch.float64) * (np.pi / 180.0)
    out = mask.new_empty(params.shape[0] * len(starts), weights.shape[1], height, mask.shape[1])
    with parallel_kernel():
        _effective_masks(out.numpy(), mask.detach().contiguous().numpy(),
                         weights.detach().to(mask.dtype).contiguous().numpy(), torch.cos(theta).numpy(),
                         torch.sin(theta).numpy(), params[:, 0].detach().to(torch.float64).numpy(),
                         params[:, 1].detach().to(torch.float64).numpy(), np.asarray(starts, dtype=np.int64), spatial,
                         interpolation == "cubic")
    return out


@numba.njit(inline="always")
def _expand_row(cube_rows: np.ndarray, z: np.ndarray, basis: np.ndarray, source: int) -> None:  # pragma: no cover
    """``cube_rows[f] = U z[f, :, source]``: (F, L, W) from coefficients z (F, k, h, W)."""
    cube_rows[:] = 0
    for f in range(z.shape[0]):
        for c in range(basis.shape[0]):
            dst = cube_rows[f, c]
            for j in range(basis.shape[1]):
                u, src = basis[c, j], z[f, j, source]
                for q in range(dst.shape[0]):
                    dst[q] += u * src[q]


@numba.njit(inline="always")
def _row_products(detector: np.ndarray, rows: np.ndarray, masks: np.ndarray, source: int, band: np.ndarray,
                  row: np.ndarray, col: np.ndarray, to_detector: bool) -> None:  # pragma: no cover (compiled)
    """The placements of source row ``source`` between cube rows (F, L, W) and detectors (F, h, Wm):
    ``to_detector`` adds the light of ``rows`` to ``detector`` (A), otherwise ``detector`` read back
    through the masks to ``rows`` (A^T)."""
    h, w, measurement_width = masks.shape[1], masks.shape[2], detector.shape[-1]
    for p in range(band.shape[0]):
        target = source + row[p]
        if target < 0 or target >= h:
            continue
        tc = col[p]
        q0, q1 = max(0, -tc), min(w, measurement_width - tc)
        gain = masks[p, source, q0:q1]
        for f in range(detector.shape[0]):
            seen, cube = detector[f, target, q0 + tc:q1 + tc], rows[f, band[p], q0:q1]
            if to_detector:
                for q in range(q1 - q0):
                    seen[q] += cube[q] * gain[q]
            else:
                for q in range(q1 - q0):
                    cube[q] += seen[q] * gain[q]


@numba.njit(inline="always")
def _place_row(y: np.ndarray, cube_rows: np.ndarray, masks: np.ndarray, source: int, band: np.ndarray,
               row: np.ndarray, col: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Add the light of source row ``source`` (cube_rows (F, L, W)) to the detectors y (F, h, Wm)."""
    _row_products(y, cube_rows, masks, source, band, row, col, True)


@numba.njit(inline="always")
def _pick_row(back_rows: np.ndarray, y: np.ndarray, masks: np.ndarray, source: int, band: np.ndarray,
              row: np.ndarray, col: np.ndarray) -> None:  # pragma: no cover (compiled)
    """``back_rows[f] = (A^T y[f])`` on source row ``source``: (F, L, W) from detectors y (F, h, Wm)."""
    back_rows[:] = 0
    _row_products(y, back_rows, masks, source, band, row, col, False)


@numba.njit(inline="always")
def _contract_row(out: np.ndarray, back_rows: np.ndarray, basis: np.ndarray, source: int) -> None:  # pragma: no cover
    """``out[f, :, source] = U^T back_rows[f]``: coefficients (F, k, h, W) from (F, L, W)."""
    for f in range(out.shape[0]):
        for j in range(basis.shape[1]):
            dst = out[f, j, source]
            dst[:] = 0
            for c in range(basis.shape[0]):
                u, src = basis[c, j], back_rows[f, c]
                for q in range(dst.shape[0]):
                    dst[q] += u * src[q]


@numba.njit(cache=True)
def _normal_rows(out: np.ndarray, z: np.ndarray, basis: np.ndarray, masks: np.ndarray, weights: np.ndarray,
                 band: np.ndarray, row: np.ndarray, col: np.ndarray, cube_rows: np.ndarray, back_rows: np.ndarray,
                 y: np.ndarray) -> None:  # pragma: no cover (compiled)
    """``out[f] = U^T A^T (weights[f] * A U z[f])`` for the F vectors z (F, k, h, W) of one set of
    masks (P, h, W); ``weights`` (F or 1, h, Wm). Scratch: cube_rows, back_rows (F, L, W), y (F, h, Wm).

    Row-pipelined: step r expands source row r (x = U z), adds its placements to the detector rows
    it reaches, weights the detector row that has just received all its light, and applies the
    adjoint to the source row whose detector rows are all weighted (``lag`` = row-shift span rows
    back), contracting it with U^T at once. A mask row is read once for all F vectors by the forward
    and, ``lag`` steps later, by the adjoint: from cache rather than memory."""
    h = out.shape[2]
    low, high = row.min(), row.max()
    lag = high - low
    y[:] = 0
    for step in range(h + lag):
        if step < h:                                       # forward: source row `step`
            _expand_row(cube_rows, z, basis, step)
            _place_row(y, cube_rows, masks, step, band, row, col)
        done = step + low                                  # detector row with all its light
        if 0 <= done < h:
            for f in range(y.shape[0]):
                weight = weights[f if weights.shape[0] > 1 else 0, done]
                for q in range(y.shape[-1]):
                    y[f, done, q] *= weight[q]
        source = step - lag                                # adjoint: source row whose rows are weighted
        if source >= 0:
            _pick_row(back_rows, y, masks, source, band, row, col)
            _contract_row(out, back_rows, basis, source)


@numba.njit(cache=True)
def _forward_rows(y: np.ndarray, z: np.ndarray, basis: np.ndarray, masks: np.ndarray, band: np.ndarray,
                  row: np.ndarray, col: np.ndarray, cube_rows: np.ndarray) -> None:  # pragma: no cover (compiled)
    """``y[f] = A U z[f]``: detectors (F, h, Wm) from coefficients (F, k, h, W), one set of masks."""
    y[:] = 0
    for source in range(z.shape[2]):
        _expand_row(cube_rows, z, basis, source)
        _place_row(y, cube_rows, masks, source, band, row, col)


@numba.njit(cache=True)
def _adjoint_rows(out: np.ndarray, data: np.ndarray, basis: np.ndarray, masks: np.ndarray, band: np.ndarray,
                  row: np.ndarray, col: np.ndarray, back_rows: np.ndarray) -> None:  # pragma: no cover (compiled)
    """``out[f] = U^T A^T data[f]`` for detector data (F, h, Wm) and one set of masks (P, h, W)."""
    for source in range(out.shape[2]):
        _pick_row(back_rows, data, masks, source, band, row, col)
        _contract_row(out, back_rows, basis, source)


@numba.njit(parallel=True, cache=True)
def _subspace_normal(out: np.ndarray, z: np.ndarray, basis: np.ndarray, masks: np.ndarray, weight: np.ndarray,
                     band: np.ndarray, row: np.ndarray, col: np.ndarray) -> None:  # pragma: no cover (compiled)
    """:func:`_normal_rows` for every batch entry e, z (B, k, h, W) and out (B, ...) in groups of g
    consecutive entries that share masks[e // g]; ``weight`` (B or 1, h, Wm)."""
    entries, k, h, w = out.shape
    group = entries // masks.shape[0]
    for m in numba.prange(masks.shape[0]):
        m = np.int64(m)
        first = m * group
        weights = weight[first:first + group] if weight.shape[0] > 1 else weight[0:1]
        cube_rows = np.empty((group, basis.shape[0], w), out.dtype)
        back_rows = np.empty((group, basis.shape[0], w), out.dtype)
        y = np.empty((group, h, weight.shape[-1]), out.dtype)
        _normal_rows(out[first:first + group], z[first:first + group], basis, masks[m], weights, band, row, col,
                     cube_rows, back_rows, y)


def subspace_normal(z: Tensor, basis: Tensor, masks: Tensor, weight: Tensor, index: PlacementIndex) -> Tensor:
    """``U^T A^T (weight * A U z)``: (B, k, h, W) from coefficients z (B or 1, k, h, W), the spectral
    basis U (L, k), masks (B / g, P, h, W) shared by g consecutive entries, and the detector weight
    (B or 1, h, Wm); no autograd."""
    tensors = (z, basis, masks, weight)
    if any(t.device.type != "cpu" or t.dtype != z.dtype for t in tensors):
        raise ValueError("the subspace normal kernel needs CPU tensors of one dtype, got "
                         f"{[(str(t.device), t.dtype) for t in tensors]}")
    entries = batch_size(z, masks, weight)
    out = z.new_empty(entries, *z.shape[1:])
    z = z.expand(entries, -1, -1, -1)
    arrays = [t.detach().contiguous().numpy() for t in (z, basis, masks, weight)]
    with parallel_kernel():
        _subspace_normal(out.numpy(), *arrays, index.band, index.row, index.col)
    return out


@numba.njit(cache=True)
def _add_smoothness(out: np.ndarray, v: np.ndarray, lam: float, mu: float,
                    curvature: np.ndarray) -> None:  # pragma: no cover (compiled)
    """``out += lam (D_r^T D_r + D_c^T D_c) v + mu * curvature_j * v_j`` on (F, k, h, W), first
    differences with Neumann ends (:func:`calib.score._smoothness` with a band curvature)."""
    vectors, k, h, w = v.shape
    for f in range(vectors):
        for j in range(k):
            band_term = mu * curvature[j]
            for r in range(h):
                dst, here = out[f, j, r], v[f, j, r]
                for q in range(w):
                    total = 0.0
                    if r > 0:
                        total += here[q] - v[f, j, r - 1, q]
                    if r < h - 1:
                        total -= v[f, j, r + 1, q] - here[q]
                    if q > 0:
                        total += here[q] - here[q - 1]
                    if q < w - 1:
                        total -= here[q + 1] - here[q]
                    dst[q] += lam * total + band_term * here[q]


@numba.njit(cache=True)
def _dot(a: np.ndarray, b: np.ndarray) -> float:  # pragma: no cover (compiled)
    a, b = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for i in range(a.shape[0]):
        total += np.float64(a[i]) * np.float64(b[i])
    return total


@numba.njit(parallel=True, cache=True)
def _subspace_cg(x: np.ndarray, prediction: np.ndarray, y: np.ndarray, fits: np.ndarray, masks: np.ndarray,
                 basis: np.ndarray, lam: float, mu: float, curvature: np.ndarray, iterations: int, band: np.ndarray,
                 row: np.ndarray, col: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Conjugate gradients on ``(U^T A^T W A U + smoothness) x = U^T A^T W y`` for every entry of x
    (B, k, h, W), in place from the warm start it holds (:func:`calib.score.regularised_solve`, the
    same iteration; dot products in float64), then ``prediction = A U x`` (B, h, Wm) unless it has no
    entries. The g = B / len(masks) consecutive entries that share a set of masks are iterated
    together, so each normal-operator pass reads those masks once."""
    entries, k, h, w = x.shape
    group = entries // masks.shape[0]
    bands = basis.shape[0]
    for m in numba.prange(masks.shape[0]):
        m = np.int64(m)
        first = m * group
        xs, weights = x[first:first + group], fits[first:first + group]
        cube_rows = np.empty((group, bands, w), x.dtype)
        back_rows = np.empty((group, bands, w), x.dtype)
        scratch = np.empty((group, h, y.shape[-1]), x.dtype)
        r, p, hp = np.empty_like(xs), np.empty_like(xs), np.empty_like(xs)
        _adjoint_rows(r, weights * y[first:first + group], basis, masks[m], band, row, col, back_rows)
        _normal_rows(hp, xs, basis, masks[m], weights, band, row, col, cube_rows, back_rows, scratch)
        _add_smoothness(hp, xs, lam, mu, curvature)
        r -= hp
        p[:] = r
        rs = np.empty(group)
        for f in range(group):
            rs[f] = _dot(r[f], r[f])
        for _ in range(iterations):
            _normal_rows(hp, p, basis, masks[m], weights, band, row, col, cube_rows, back_rows, scratch)
            _add_smoothness(hp, p, lam, mu, curvature)
            for f in range(group):
                alpha = rs[f] / max(_dot(p[f], hp[f]), 1e-30)
                xf, rf, pf, hf = xs[f].reshape(-1), r[f].reshape(-1), p[f].reshape(-1), hp[f].reshape(-1)
                for i in range(xf.shape[0]):
                    xf[i] += alpha * pf[i]
                    rf[i] -= alpha * hf[i]
                rs_new = _dot(r[f], r[f])
                beta = rs_new / max(rs[f], 1e-30)
                for i in range(xf.shape[0]):
                    pf[i] = rf[i] + beta * pf[i]
                rs[f] = rs_new
        if prediction.shape[0]:
            _forward_rows(prediction[first:first + group], xs, basis, masks[m], band, row, col, cube_rows)


def subspace_cg(x0: Tensor, y: Tensor, fits: Tensor, masks: Tensor, basis: Tensor, lam: float, mu: float,
                curvature: Tensor, iterations: int, index: PlacementIndex, predict: bool = False
                ) -> tuple[Tensor, Tensor | None]:
    """:func:`calib.score.regularised_solve` for a spectral-subspace model as one CPU kernel: the
    solution x (B, k, h, W) from the warm start x0 (B, k, h, W), measurements and 0/1 fit weights
    (B, h, Wm), masks (B / g, P, h, W) shared by g consecutive entries, the basis U (L, k), the
    smoothness weights and the band curvature (k,); with ``predict`` also ``A U x`` (B, h, Wm)
    (else None). No autograd."""
    tensors = (x0, y, fits, masks, basis)
    if any(t.device.type != "cpu" or t.dtype != x0.dtype for t in tensors):
        raise ValueError("the subspace solve kernel needs CPU tensors of one dtype, got "
                         f"{[(str(t.device), t.dtype) for t in tensors]}")
    entries = batch_size(x0, y, fits, masks)
    if entries % masks.shape[0] or x0.shape[0] != entries:
        raise ValueError(f"warm start {tuple(x0.shape)} and masks {tuple(masks.shape)} do not match {entries} entries")
    x = x0.detach().clone(memory_format=torch.contiguous_format)
    prediction = y.new_empty(entries if predict else 0, *y.shape[1:])
    y, fits = (t.detach().expand(entries, -1, -1).contiguous().numpy() for t in (y, fits))
    with parallel_kernel():
        _subspace_cg(x.numpy(), prediction.numpy(), y, fits, masks.detach().contiguous().numpy(),
                     basis.detach().contiguous().numpy(), float(lam), float(mu),
                     curvature.detach().to(torch.float64).contiguous().numpy(), iterations, index.band, index.row,
                     index.col)
    return x, (prediction if predict else None)
