"""The calibration forward model: the enlarged-grid instrument, computed on the detector grid.

The high-fidelity instrument (:func:`cassi.simulator.simulate_measurement`) upsamples scene and mask
N x N, interpolates the L bands to ``(L-1)*N*K + 1`` fine bands, disperses every fine band by
N x its coarse offset (stride 1 in the enlarged space, bilinear when fractional), and block-averages
the fine detector N x N. The native operator puts each band's light at a single offset, which biases
a fit of (dx, a1) by ~0.45 px / ~0.045 (issue 6). This module computes the same enlarged-grid
measurement *without* the enlarged grid.

Derivation (linear spectral interpolation; the simulator uses PCHIP, which equals it for spectra
that are linear between bands). Fine band k sits at band position ``p_k = k / (N K)`` and carries
``sum_c w_ck x_c`` with the tent weights ``w_ck = max(0, 1 - |p_k - c|)``. A fine source pixel
``u = N q + v`` (coarse pixel q, sub-pixel v in [0, N)^2) of fine band k lands, after its bilinear
fine shift ``o_k`` (fine px), in the coarse detector pixel ``q + T`` with
``T = floor((v + floor(o_k) + e) / N)``, e in {0, 1}^2 the bilinear corner. Collecting terms::

    y = sum_c sum_T  place(x_c * G_{c,T}, T)            (T: integer coarse (row, col) shift)
    G_{c,T}(q) = sum_v  M_f(N q + v) * Phi_{c,T}(v)
    Phi_{c,T}(v) = L / (L_fine N^2) * sum_k w_ck sum_e omega_e(o_k) [floor((v + floor(o_k) + e)/N) = T]

with ``M_f`` the fine mask (nearest-upsampled, then warped by (N dx, N dy, theta) about the fine
centre, bilinear). Each band thus becomes ~10 integer placements with its own "effective mask"
``G_{c,T}``; the model is linear in x, exactly adjoint, differentiable in all five parameters
(through ``M_f`` and the bilinear weights ``omega``), and batched over candidate parameter sets.
With N = K = 1 it is exactly :class:`cassi.CassiOperator` with linear dispersion.

The model can be restricted to a band of scene rows ``rows = (r0, r1)`` (all columns, the full
measurement width); light that the instrument would bring into those detector rows from outside
them is not modelled, so scores should drop one or two border rows.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd import Function

from calib.placement import PlacementIndex, check_backend, default_backend, mask_products, pick, place
from cassi.mismatch import Mismatch, dispersion_offsets
from cassi.operator import MASK_INTERPOLATIONS, mask_tensor
from cassi.translate import _overlap

PARAMETER_NAMES = ("dx", "dy", "theta", "a1", "alpha")


def params_tensor(mismatches: Mismatch | list[Mismatch], dtype: torch.dtype = torch.float64) -> Tensor:
    """Stack mismatches into a (B, 5) tensor of (dx, dy, theta, a1, alpha)."""
    if isinstance(mismatches, Mismatch):
        mismatches = [mismatches]
    rows = []
    for m in mismatches:
        rows.append(torch.stack([torch.as_tensor(getattr(m, n), dtype=dtype).reshape(())
                                 for n in PARAMETER_NAMES]))
    return torch.stack(rows)


def params_to_mismatch(params: Tensor) -> Mismatch:
    """One (5,) parameter vector as a plain-float :class:`Mismatch`."""
    return Mismatch(**{n: float(v) for n, v in zip(PARAMETER_NAMES, params.detach().reshape(5).tolist())})


def keys_cubic(t: Tensor) -> Tensor:
    """Keys' cubic convolution kernel (a = -0.5) at distances ``t``."""
    t = t.abs()
    inner = (1.5 * t - 2.5) * t * t + 1
    outer = ((-0.5 * t + 2.5) * t - 4) * t + 2
    return torch.where(t <= 1, inner, torch.where(t < 2, outer, torch.zeros_like(t)))


def fine_mask(mask: Tensor, spatial: int, params: Tensor, rows: tuple[int, int],
              interpolation: str = "linear") -> Tensor:
    """The enlarged-grid warped mask on scene rows ``rows``: (B, N*(r1-r0), N*W).

    Equals ``warp_mask(mask.repeat_interleave(N, 0).repeat_interleave(N, 1), N dx, N dy, theta)``
    (the simulator's fine mask, :mod:`cassi.warp` convention) on fine rows ``N*r0 ... N*r1 - 1``,
    computed by sampling the coarse ``mask`` (H, W) directly, so the full fine grid is never built.
    ``params`` (B, 5): only dx, dy (px) and theta (deg) are used; differentiable in them.
    ``interpolation`` "cubic" (native grid, N = 1 only): the same coordinates read with Keys' cubic
    convolution instead of bilinearly (4 x 4 taps, taps outside the mask read 0), for a mask that is
    itself a resampled image (see :data:`MASK_INTERPOLATIONS`).
    """
    n = spatial
    h, w = mask.shape
    fh, fw = n * h, n * w
    dx, dy, theta = (params[:, i].to(torch.float64).view(-1, 1, 1) for i in range(3))
    t = theta * (math.pi / 180.0)
    cos, sin = torch.cos(t), torch.sin(t)
    out_r = torch.arange(n * rows[0], n * rows[1], dtype=torch.float64, device=mask.device).view(1, -1, 1)
    out_c = torch.arange(fw, dtype=torch.float64, device=mask.device).view(1, 1, -1)
    out_r, out_c = out_r - (fh - 1) / 2, out_c - (fw - 1) / 2
    src_r = cos * out_r + sin * out_c + (fh - 1) / 2 - n * dy
    src_c = -sin * out_r + cos * out_c + (fw - 1) / 2 - n * dx
    valid = ((src_r >= 0) & (src_r <= fh - 1) & (src_c >= 0) & (src_c <= fw - 1)).to(mask.dtype)
    if interpolation == "cubic":
        return valid * _cubic_read(mask, src_r, src_c)
    r0 = src_r.detach().floor().clamp(0, fh - 1)
    c0 = src_c.detach().floor().clamp(0, fw - 1)
    fr, fc = (src_r - r0).to(mask.dtype), (src_c - c0).to(mask.dtype)
    r0, c0 = r0.long(), c0.long()
    r1, c1 = (r0 + 1).clamp(max=fh - 1), (c0 + 1).clamp(max=fw - 1)
    flat = mask.reshape(-1)

    def take(r: Tensor, c: Tensor) -> Tensor:            # fine (r, c) reads coarse pixel (r // N, c // N)
        return flat[(r // n) * w + c // n]

    return valid * ((1 - fr) * ((1 - fc) * take(r0, c0) + fc * take(r0, c1))
                    + fr * ((1 - fc) * take(r1, c0) + fc * take(r1, c1)))


def _cubic_read(mask: Tensor, src_r: Tensor, src_c: Tensor) -> Tensor:
    """``mask`` (H, W) read at (src_r, src_c) (broadcastable) with Keys' cubic convolution, taps
    outside the mask 0; differentiable in the coordinates."""
    h, w = mask.shape
    r0, c0 = src_r.detach().floor(), src_c.detach().floor()
    out = 0
    for i in range(-1, 3):
        r = r0 + i
        inside_r = ((r >= 0) & (r <= h - 1)).to(mask.dtype)
        across = 0
        for j in range(-1, 3):
            c = c0 + j
            inside = inside_r * ((c >= 0) & (c <= w - 1)).to(mask.dtype)
            index = r.clamp(0, h - 1).long() * w + c.clamp(0, w - 1).long()
            across = across + keys_cubic(src_c - c).to(mask.dtype) * inside * mask.reshape(-1)[index]
        out = out + keys_cubic(src_r - r).to(mask.dtype) * across
    return out


def _landing_table(offsets: Tensor, spatial: int) -> tuple[Tensor, int]:
    """Where the fine pixels of each fine band land along one axis, and with what bilinear weight.

    ``offsets`` (B, Lf) fine-pixel offsets. Returns (table (B, Lf, nT, N), T_min) with
    ``table[b, k, T - T_min, v] = sum_e omega_e(o_bk) [floor((v + floor(o_bk) + e) / N) = T]``.
    """
    n = spatial
    floor = offsets.detach().floor()
    frac = offsets - floor
    v = torch.arange(n, dtype=offsets.dtype, device=offsets.device)
    corners = []                                          # (block index (B, Lf, N), weight (B, Lf, 1))
    for e, weight in ((0, 1 - frac), (1, frac)):
        block = torch.div(v + floor.unsqueeze(-1) + e, n, rounding_mode="floor").long()
        corners.append((block, weight.unsqueeze(-1).expand(*block.shape)))
    t_min = int(min(b.min() for b, _ in corners))
    t_max = int(max(b.max() for b, _ in corners))
    table = offsets.new_zeros(*offsets.shape, t_max - t_min + 1, n)
    for block, weight in corners:
        table = table.scatter_add(2, (block - t_min).unsqueeze(2), weight.unsqueeze(2))
    return table, t_min


def effective_mask_weights(params: Tensor, bands: int, step: float, spatial: int, spectral: int
                           ) -> tuple[Tensor, list[int], list[int], list[int]]:
    """``Phi_{c,T}(v)`` of the module docstring for a batch of parameters.

    ``params`` (B, 5). Returns (weights (B, P, N*N), band, row shift, col shift of the P active
    (band, T) entries, in (band, row, col) order); an entry is active when any candidate of the batch
    gives it a non-zero weight. The weights depend on (a1, alpha) only: without autograd they come
    from a cache per (a1, alpha) (a search scores hundreds of candidates that share them).
    """
    if torch.is_grad_enabled() and params.requires_grad:
        return _weights_of_batch(params, bands, step, spatial, spectral)
    pairs = [tuple(p) for p in params.detach()[:, 3:5].cpu().to(torch.float64).tolist()]
    unique = {pair: i for i, pair in enumerate(dict.fromkeys(pairs))}
    weights, band, row, col = _union_weights(tuple(unique), bands, float(step), spatial, spectral)
    inverse = torch.tensor([unique[pair] for pair in pairs])
    return weights[inverse].to(params.dtype).to(params.device), list(band), list(row), list(col)


@functools.lru_cache(maxsize=256)
def _union_weights(dispersions: tuple[tuple[float, float], ...], bands: int, step: float, spatial: int,
                   spectral: int) -> tuple[Tensor, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Weights (U, P, N*N) of U distinct (a1, alpha) on the union of their placements, in
    (band, row, col) order, float64 on the CPU."""
    parts = [_dispersion_weights(a1, alpha, bands, step, spatial, spectral) for a1, alpha in dispersions]
    keys = sorted({key for _, placements in parts for key in placements})
    position = {key: i for i, key in enumerate(keys)}
    weights = torch.zeros(len(parts), len(keys), spatial * spatial, dtype=torch.float64)
    for i, (part, placements) in enumerate(parts):
        weights[i, [position[key] for key in placements]] = part
    band, row, col = zip(*keys)
    return weights, band, row, col


@functools.lru_cache(maxsize=4096)
def _dispersion_weights(a1: float, alpha: float, bands: int, step: float, spatial: int, spectral: int
                        ) -> tuple[Tensor, tuple[tuple[int, int, int], ...]]:
    """The weights (P, N*N) and (band, row, col) keys of one (a1, alpha), float64 on the CPU."""
    params = torch.tensor([[0.0, 0.0, 0.0, a1, alpha]], dtype=torch.float64)
    weights, band, row, col = _weights_of_batch(params, bands, step, spatial, spectral)
    return weights[0], tuple(zip(band, row, col))


def _weights_of_batch(params: Tensor, bands: int, step: float, spatial: int, spectral: int
                      ) -> tuple[Tensor, list[int], list[int], list[int]]:
    """:func:`effective_mask_weights` computed for the whole batch at once (differentiable)."""
    n, k = spatial, spectral
    fine = (bands - 1) * n * k + 1
    dtype, device = params.dtype, params.device
    positions = torch.arange(fine, dtype=torch.float64, device=device) / (n * k)
    offs = [dispersion_offsets(positions, bands, step, p[3], p[4]) for p in params]
    rows = torch.stack([o[0] for o in offs]).to(dtype) * n            # (B, Lf) fine px
    cols = torch.stack([o[1] for o in offs]).to(dtype) * n
    row_table, row_min = _landing_table(rows, n)                   # (B, Lf, nR, N)
    col_table, col_min = _landing_table(cols, n)                   # (B, Lf, nC, N)
    band_pos = torch.arange(bands, dtype=dtype, device=device)
    tent = (1 - (positions.to(dtype).view(1, -1) - band_pos.view(-1, 1)).abs()).clamp(min=0)
    tent = tent * (bands / (fine * n * n))                           # (L, Lf), simulator's scaling
    # Phi[b, c, r, q, vr, vc] = sum_k tent[c, k] R[b, k, r, vr] C[b, k, q, vc]
    phi = torch.einsum("ck,bkrv,bkqw->bcrqvw", tent, row_table, col_table)
    active = phi.detach().abs().sum(dim=(0, 4, 5)) > 0                # (L, nR, nC)
    band, r, q = active.nonzero(as_tuple=True)
    weights = phi[:, band, r, q].reshape(params.shape[0], band.numel(), n * n)
    return weights, band.tolist(), (r + row_min).tolist(), (q + col_min).tolist()


def active_placements(band: list[int], row: list[int], col: list[int], height: int, width: int,
                      measurement_width: int) -> list[int]:
    """Indices of the (band, row shift, col shift) entries whose moved window overlaps the detector
    (rows [0, height), columns [0, measurement_width) for a source width ``width``)."""
    return [i for i, (r, q) in enumerate(zip(row, col))
            if _overlap(r, height, height) is not None and _overlap(q, width, measurement_width) is not None]


def _sum_to(t: Tensor, batch: int) -> Tensor:
    """Gradient (B, ...) of an input with ``batch`` entries shared by consecutive output entries."""
    return t if t.shape[0] == batch else t.view(batch, -1, *t.shape[1:]).sum(1)


def _mask_grad(cube: Tensor, canvas: Tensor, index: PlacementIndex, masks: Tensor, backend: str) -> Tensor:
    """Gradient of ``<canvas, A(G) cube>`` with respect to the effective masks G (Bm, P, h, W)."""
    return _sum_to(mask_products(cube, canvas, index, masks.shape[-1], backend), masks.shape[0])


class _Forward(Function):
    """y = A(G) x with an explicit backward (the adjoint), so autograd never tapes the ~300 placements."""

    @staticmethod
    def forward(ctx, x: Tensor, masks: Tensor, index: PlacementIndex, width: int, backend: str) -> Tensor:
        ctx.save_for_backward(x, masks)
        ctx.index, ctx.backend = index, backend
        return place(x, masks, index, width, backend)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, masks = ctx.saved_tensors
        grad_x = grad_masks = None
        if ctx.needs_input_grad[0]:
            grad_x = _sum_to(pick(grad_y, masks, ctx.index, x.shape[1], x.shape[-1], ctx.backend), x.shape[0])
        if ctx.needs_input_grad[1]:
            grad_masks = _mask_grad(x, grad_y, ctx.index, masks, ctx.backend)
        return grad_x, grad_masks, None, None, None


class _Adjoint(Function):
    """x = A(G)^T y with an explicit backward."""

    @staticmethod
    def forward(ctx, y: Tensor, masks: Tensor, index: PlacementIndex, bands: int, width: int, backend: str
                ) -> Tensor:
        ctx.save_for_backward(y, masks)
        ctx.index, ctx.backend = index, backend
        return pick(y, masks, index, bands, width, backend)

    @staticmethod
    def backward(ctx, grad_x: Tensor):
        y, masks = ctx.saved_tensors
        grad_y = grad_masks = None
        if ctx.needs_input_grad[0]:
            grad_y = _sum_to(place(grad_x, masks, ctx.index, y.shape[-1], ctx.backend), y.shape[0])
        if ctx.needs_input_grad[1]:
            grad_masks = _mask_grad(grad_x, y, ctx.index, masks, ctx.backend)
        return grad_y, grad_masks, None, None, None, None


class EnlargedGridOperator(nn.Module):
    """The N x K enlarged-grid instrument as a detector-grid operator, for a batch of candidates.

    Args:
        mask: nominal coded mask (H, W), a tensor or numpy array; integer or boolean data as float32
            (:func:`cassi.operator.mask_tensor`, as :class:`cassi.CassiOperator` takes it).
        params: (B, 5) candidate parameters (dx, dy px; theta deg; a1 px/band; alpha deg), or one
            :class:`Mismatch` (one left without a1 has a1 = ``step``, :meth:`Mismatch.for_step`); may require grad.
        bands, step: band count L and nominal dispersion (px per band).
        spatial, spectral: oversampling N and K of the instrument model (the simulator's defaults 4, 2).
        windows: row windows ``[(r0, r1), ...]`` of equal height h (default: all H rows); columns are
            always all W. Candidate b, window s is batch entry ``b * S + s``.
        backend: how the placement sums run (:mod:`calib.placement`): "numba" (CPU kernels, the
            default for a CPU mask) or "torch" (torch ops on the mask's device, the default elsewhere).
        interpolation: how the mask is read between pixels (:data:`MASK_INTERPOLATIONS`; "cubic"
            only with N = 1).

    The model lives on the mask's device; ``params`` may be on the CPU (the small per-candidate
    tables are computed there). ``forward``: cubes (E, L, h, W) -> (E, h, W + step*(L-1)) with E a
    multiple of B*S (g consecutive entries share one candidate-window's masks) or 1; ``adjoint`` back.
    Same interface as :class:`cassi.CassiOperator` where :func:`cassi.gap_tv.gap_tv` needs it.
    """

    def __init__(self, mask: Tensor | np.ndarray, params: Tensor | Mismatch, bands: int = 28, step: int = 2,
                 spatial: int = 4, spectral: int = 2,
                 windows: list[tuple[int, int]] | None = None, backend: str | None = None,
                 interpolation: str = "linear") -> None:
        super().__init__()
        if interpolation not in MASK_INTERPOLATIONS or interpolation != "linear" and spatial != 1:
            raise ValueError(f"mask interpolation must be one of {MASK_INTERPOLATIONS} ('cubic' on the native "
                             f"grid, N = 1, only), got {interpolation!r} with N={spatial}")
        mask = mask_tensor(mask)
        if mask.dim() != 2:
            raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
        if isinstance(params, Mismatch):
            params = params_tensor(params.for_step(step))      # an a1 left out is the nominal slope, the step
        if params.dim() != 2 or params.shape[1] != 5:
            raise ValueError(f"params must be (B, 5) = (dx, dy, theta, a1, alpha), got {tuple(params.shape)}")
        if spatial < 1 or spectral < 1:
            raise ValueError(f"oversampling factors must be >= 1, got N={spatial}, K={spectral}")
        windows = [(0, mask.shape[0])] if windows is None else [(int(a), int(b)) for a, b in windows]
        heights = {b - a for a, b in windows}
        if len(heights) != 1 or any(not 0 <= a < b <= mask.shape[0] for a, b in windows):
            raise ValueError(f"row windows {windows} must lie inside the mask's {mask.shape[0]} rows "
                             "and have equal heights")
        self.bands, self.step, self.spatial, self.spectral = bands, step, spatial, spectral
        self.windows, self.full_width, self.interpolation = windows, mask.shape[1], interpolation
        self.backend = check_backend(backend or default_backend(mask.device), mask.device)
        weights, band, row, col = effective_mask_weights(params, bands, step, spatial, spectral)
        h, w = heights.pop(), mask.shape[1]
        kept = active_placements(band, row, col, h, w, w + step * (bands - 1))
        self.index = PlacementIndex(*([v[i] for i in kept] for v in (band, row, col)))
        weights = weights[:, kept]
        if self.backend == "numba" and not (torch.is_grad_enabled() and params.requires_grad):
            from calib.kernels import effective_masks
            self.masks = effective_masks(mask, params, weights, [a for a, _ in windows], h, spatial,
                                         interpolation)
        else:
            self.masks = self._masks_differentiable(mask, params.to(mask.device), weights.to(mask.device), h)

    def _masks_differentiable(self, mask: Tensor, params: Tensor, weights: Tensor, height: int) -> Tensor:
        """The effective masks (B*S, P, h, W) as torch ops, differentiable in ``params`` (B, 5)."""
        b, s, n, w = params.shape[0], len(self.windows), self.spatial, mask.shape[1]
        fine = torch.stack([fine_mask(mask, n, params, rows, self.interpolation)                  # (B, S, Nh, NW)
                            for rows in self.windows], 1)
        blocks = fine.view(b * s, height, n, w, n).permute(0, 2, 4, 1, 3).reshape(b * s, n * n, height * w)
        weights = weights.to(blocks.dtype).repeat_interleave(s, 0)                            # (B*S, P, N*N)
        return torch.bmm(weights, blocks).view(b * s, -1, height, w)                          # (B*S, P, h, W)

    @property
    def height(self) -> int:
        return self.windows[0][1] - self.windows[0][0]

    @property
    def width(self) -> int:
        return self.full_width

    @property
    def measurement_width(self) -> int:
        return self.width + self.step * (self.bands - 1)

    @property
    def batch(self) -> int:
        return self.masks.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """Measurements (E, h, W + step*(L-1)) of cubes (E, L, h, W); see the class docstring for E."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.bands, self.height, self.width):
            raise ValueError(f"cube must be (B, {self.bands}, {self.height}, {self.width}), got {tuple(x.shape)}")
        return _Forward.apply(x, self.masks.to(x.dtype), self.index, self.measurement_width, self.backend)

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y`` (E, L, h, W) of measurements (E, h, W + step*(L-1))."""
        if y.dim() != 3 or tuple(y.shape[1:]) != (self.height, self.measurement_width):
            raise ValueError(f"measurement must be (B, {self.height}, {self.measurement_width}), "
                             f"got {tuple(y.shape)}")
        return _Adjoint.apply(y, self.masks.to(y.dtype), self.index, self.bands, self.width, self.backend)

    def normal(self, x: Tensor, weight: Tensor) -> Tensor:
        """``A^T (weight * A x)`` (E, L, h, W) for cubes x (E, L, h, W) and a detector weight (E or 1, h, Wm)."""
        return self.adjoint(self(x) * weight)
