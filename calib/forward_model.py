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

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd import Function

from cassi.mismatch import Mismatch, dispersion_offsets
from cassi.translate import pick, place

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


def fine_mask(mask: Tensor, spatial: int, params: Tensor, rows: tuple[int, int]) -> Tensor:
    """The enlarged-grid warped mask on scene rows ``rows``: (B, N*(r1-r0), N*W).

    Equals ``warp_mask(mask.repeat_interleave(N, 0).repeat_interleave(N, 1), N dx, N dy, theta)``
    (the simulator's fine mask, :mod:`cassi.warp` convention) on fine rows ``N*r0 ... N*r1 - 1``,
    computed by sampling the coarse ``mask`` (H, W) directly, so the full fine grid is never built.
    ``params`` (B, 5): only dx, dy (px) and theta (deg) are used; differentiable in them.
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


@dataclass(frozen=True)
class Placement:
    """Which band goes where: entry p places band ``band[p]`` at integer shift (``row[p]``, ``col[p]``)."""

    band: tuple[int, ...]
    row: tuple[int, ...]
    col: tuple[int, ...]


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
                           ) -> tuple[Tensor, Placement]:
    """``Phi_{c,T}(v)`` of the module docstring for a batch of parameters.

    ``params`` (B, 5). Returns (weights (B, P, N*N), placement of the P active (band, T) entries);
    an entry is active when any candidate of the batch gives it a non-zero weight.
    """
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
    placement = Placement(tuple(band.tolist()), tuple((r + row_min).tolist()), tuple((q + col_min).tolist()))
    return weights, placement


def _place_all(x: Tensor, masks: Tensor, plan: Placement, height: int, width: int) -> Tensor:
    """``sum_p place(x[:, band_p] * masks[:, p], T_p)`` on a (B, height, width) canvas (no autograd)."""
    batch = max(x.shape[0], masks.shape[0])
    y = x.new_zeros(batch, height, width)
    for p, (c, r, q) in enumerate(zip(plan.band, plan.row, plan.col)):
        place(y, x[:, c].expand(batch, -1, -1), [(r, q, 1.0)], factor=masks[:, p])
    return y


def _pick_all(y: Tensor, masks: Tensor, plan: Placement, bands: int, height: int, width: int) -> Tensor:
    """Adjoint of :func:`_place_all`: (B, L, height, width) (no autograd)."""
    batch = max(y.shape[0], masks.shape[0])
    x = y.new_zeros(batch, bands, height, width)
    for p, (c, r, q) in enumerate(zip(plan.band, plan.row, plan.col)):
        x[:, c] += pick(y, [(r, q, 1.0)], height, width) * masks[:, p]
    return x


def _mask_grad(a: Tensor, b_canvas: Tensor, plan: Placement, mask_batch: int) -> Tensor:
    """d<.,.>/d masks: ``a[:, band_p] * pick(b_canvas, T_p)`` summed to the masks' batch, (Bm, P, h, w)."""
    h, w = a.shape[-2:]
    grads = torch.stack([a[:, c] * pick(b_canvas, [(r, q, 1.0)], h, w)
                         for c, r, q in zip(plan.band, plan.row, plan.col)], dim=1)
    return grads if grads.shape[0] == mask_batch else grads.sum(0, keepdim=True)


class _Forward(Function):
    """y = A(G) x with an explicit backward (the adjoint), so autograd never tapes the ~300 placements."""

    @staticmethod
    def forward(ctx, x: Tensor, masks: Tensor, plan: Placement, width: int) -> Tensor:
        ctx.save_for_backward(x, masks)
        ctx.plan = plan
        return _place_all(x, masks, plan, x.shape[-2], width)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, masks = ctx.saved_tensors
        grad_x = grad_masks = None
        if ctx.needs_input_grad[0]:
            grad_x = _pick_all(grad_y, masks, ctx.plan, x.shape[1], x.shape[-2], x.shape[-1])
            if grad_x.shape[0] != x.shape[0]:
                grad_x = grad_x.sum(0, keepdim=True)
        if ctx.needs_input_grad[1]:
            grad_masks = _mask_grad(x.expand(grad_y.shape[0], -1, -1, -1), grad_y, ctx.plan, masks.shape[0])
        return grad_x, grad_masks, None, None


class _Adjoint(Function):
    """x = A(G)^T y with an explicit backward."""

    @staticmethod
    def forward(ctx, y: Tensor, masks: Tensor, plan: Placement, bands: int, width: int) -> Tensor:
        ctx.save_for_backward(y, masks)
        ctx.plan = plan
        return _pick_all(y, masks, plan, bands, y.shape[-2], width)

    @staticmethod
    def backward(ctx, grad_x: Tensor):
        y, masks = ctx.saved_tensors
        grad_y = grad_masks = None
        if ctx.needs_input_grad[0]:
            grad_y = _place_all(grad_x, masks, ctx.plan, y.shape[-2], y.shape[-1])
            if grad_y.shape[0] != y.shape[0]:
                grad_y = grad_y.sum(0, keepdim=True)
        if ctx.needs_input_grad[1]:
            grad_masks = _mask_grad(grad_x, y.expand(grad_x.shape[0], -1, -1), ctx.plan, masks.shape[0])
        return grad_y, grad_masks, None, None, None


class EnlargedGridOperator(nn.Module):
    """The N x K enlarged-grid instrument as a detector-grid operator, one per candidate.

    Args:
        mask: nominal coded mask (H, W).
        params: (B, 5) candidate parameters (dx, dy px; theta deg; a1 px/band; alpha deg), or one
            :class:`Mismatch`; may require grad.
        bands, step: band count L and nominal dispersion (px per band).
        spatial, spectral: oversampling N and K of the instrument model (the simulator's defaults 4, 2).
        rows: scene rows (r0, r1) the operator covers (default all); columns are always all W.

    ``forward``: (B or 1, L, h, W) -> (B, h, W + step*(L-1)); ``adjoint`` back. Same interface as
    :class:`cassi.CassiOperator` where :func:`cassi.gap_tv.gap_tv` needs it.
    """

    def __init__(self, mask: Tensor, params: Tensor | Mismatch, bands: int = 28, step: int = 2,
                 spatial: int = 4, spectral: int = 2, rows: tuple[int, int] | None = None) -> None:
        super().__init__()
        if mask.dim() != 2:
            raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
        if isinstance(params, Mismatch):
            params = params_tensor(params)
        if params.dim() != 2 or params.shape[1] != 5:
            raise ValueError(f"params must be (B, 5) = (dx, dy, theta, a1, alpha), got {tuple(params.shape)}")
        if spatial < 1 or spectral < 1:
            raise ValueError(f"oversampling factors must be >= 1, got N={spatial}, K={spectral}")
        rows = (0, mask.shape[0]) if rows is None else (int(rows[0]), int(rows[1]))
        if not 0 <= rows[0] < rows[1] <= mask.shape[0]:
            raise ValueError(f"rows {rows} outside the mask's {mask.shape[0]} rows")
        self.bands, self.step, self.spatial, self.spectral, self.rows = bands, step, spatial, spectral, rows
        self.full_width = mask.shape[1]
        mask = mask.float() if not mask.is_floating_point() else mask
        weights, self.plan = effective_mask_weights(params, bands, step, spatial, spectral)
        fine = fine_mask(mask, spatial, params, rows)                       # (B, N h, N W)
        b, h, w, n = params.shape[0], rows[1] - rows[0], mask.shape[1], spatial
        blocks = fine.view(b, h, n, w, n).permute(0, 2, 4, 1, 3).reshape(b, n * n, h * w)
        self.masks = torch.bmm(weights.to(blocks.dtype), blocks).view(b, -1, h, w)   # (B, P, h, W)

    @property
    def height(self) -> int:
        return self.rows[1] - self.rows[0]

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
        """Measurement (B, h, W + step*(L-1)) of cubes (B or 1, L, h, W)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.bands, self.height, self.width):
            raise ValueError(f"cube must be (B, {self.bands}, {self.height}, {self.width}), got {tuple(x.shape)}")
        return _Forward.apply(x, self.masks.to(x.dtype), self.plan, self.measurement_width)

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y`` (B, L, h, W) of measurements (B or 1, h, W + step*(L-1))."""
        if y.dim() != 3 or tuple(y.shape[1:]) != (self.height, self.measurement_width):
            raise ValueError(f"measurement must be (B, {self.height}, {self.measurement_width}), "
                             f"got {tuple(y.shape)}")
        return _Adjoint.apply(y, self.masks.to(y.dtype), self.plan, self.bands, self.width)

    def gram_row_sums(self) -> Tensor:
        """Row sums of ``A A^T`` with zeros set to 1, (B, h, Wm): GAP's normaliser."""
        ones = self.masks.new_ones(1, self.height, self.measurement_width)
        s = self.forward(self.adjoint(ones))
        return torch.where(s == 0, torch.ones_like(s), s)
