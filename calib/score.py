"""The blind calibration criterion: held-out prediction error of a regularised reconstruction.

For a candidate instrument ``xi`` the detector pixels of a few full-width row stripes are split at
random into two halves (fixed seed). Each half is reconstructed through the calibration forward
model ``A_xi`` (:class:`calib.forward_model.EnlargedGridOperator`) with a smooth-spectrum prior: the
spectra are ``x = U z``, U the first k DCT-II cosines over the band index (default k = 6), and
``min_z ||W (y - A_xi U z)||^2 + lam ||grad_rc z||^2 (+ mu ||grad_band U z||^2)`` (conjugate
gradients, a fixed number of iterations from a warm start, so the score is a deterministic,
differentiable function of ``xi``); it predicts the *other* half. The score is the relative
prediction error of the held-out pixels, border rows of every stripe excluded (light from outside a
stripe is not modelled there).

Why this criterion (measured on pseudo-KAIST and synthetic scenes, N=4/K=2 simulator, noise; see
the README and ``benchmarks/bench_calibration.py --landscapes``): the plain residual
``||y - A R(y)||`` after GAP-TV is flat in ``xi`` (GAP fits any operator), GAP-TV on held-out pixels
is erratic or biased in dx and a1 (its per-band TV has no spectral coupling), and the regularised
objective itself is biased towards operators without sub-pixel blur (Tikhonov shrinkage rewards a
larger operator gain). Held-out prediction is immune to that shrinkage bias, but with all 28 bands
free and only a band-difference penalty (k = 0, mu = 10) it was pulled in alpha: on noise-free data
made by this very model, a point 0.7 deg off in alpha (and 0.24 px in dx) predicted 3 % better than
the truth. With the spectra confined to 6 cosines (which fit the pseudo-KAIST cubes to ~6 %) the
truth predicts ~9 % better than that point, and 8 instead of 7 of the 10 benchmark scenes land in
tolerance. The subspace system converges slowly, so the warm starts are solved long (150 / 80
iterations) and candidates start from them.
A network solver replaces the cosines by the first k principal directions of its own cube's spectra
(:class:`SpectralBasis`, ``ScoreSettings.learned_basis``; :mod:`calib.network_score`).
Only the measurement and the nominal mask enter: no ground truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as recompute

from calib.forward_model import EnlargedGridOperator

MASK_BYTES_PER_CHUNK = 24 * 2 ** 20    # candidates are scored in chunks whose effective masks fit this


@dataclass(frozen=True)
class SpectralBasis:
    """Spectral directions learned from one reconstruction of the measurement: orthonormal columns over the band
    index, most energy first. In :class:`ScoreSettings` (``learned_basis``) they replace the DCT-II cosines: the
    held-out solves keep each spectrum in the span of the first k of them."""

    source: str                               # what they were learned from (calibration.json records it)
    columns: tuple[tuple[float, ...], ...]    # the directions, each L values

    @classmethod
    def from_cube(cls, cube: Tensor, source: str) -> "SpectralBasis":
        """The principal directions of the spectra of ``cube`` (L, H, W), uncentred (the first is the mean
        spectrum's): the left singular vectors of the (L, H*W) matrix of its spectra."""
        if cube.dim() != 3 or not torch.isfinite(cube).all():
            raise ValueError(f"a spectral basis is learned from a finite cube (L, H, W), got shape {tuple(cube.shape)}")
        directions = torch.linalg.svd(cube.detach().cpu().double().reshape(cube.shape[0], -1), full_matrices=False)[0]
        return cls(source, tuple(tuple(float(v) for v in column) for column in directions.T))

    def matrix(self, bands: int, k: int) -> Tensor:
        """The first ``k`` directions as columns (bands, k) float32."""
        if len(self.columns[0]) != bands or not 1 <= k <= len(self.columns):
            raise ValueError(f"the learned spectral basis has {len(self.columns)} directions of {len(self.columns[0])} "
                             f"bands; asked for {k} of {bands}")
        return torch.tensor(self.columns[:k], dtype=torch.float64).T.float()


@dataclass(frozen=True)
class ScoreSettings:
    """How the held-out score is computed (sizes in detector rows)."""

    stripes: int = 4               # full-width row stripes, evenly spaced
    rows: int = 24                 # rows per stripe
    border: int = 2                # rows left out of the error at each stripe edge
    smooth_space: float = 1.0      # lam, relative to mean(mask^2) (3 put dx 0.06-0.1 px off on pseudo-KAIST)
    smooth_spectrum: float = 0.0   # mu, relative to mean(mask^2) (10 with spectral_basis=0)
    iterations: int = 6            # conjugate-gradient iterations per fold, from the warm start
    reference_iterations: int = 150  # iterations of the first warm-start solve (at the nominal point)
    rebase_iterations: int = 80    # iterations of later warm-start solves, from the previous ones
    folds: int = 2                 # 2: both halves predict each other; 1: one half predicts the other
    spectral_basis: int = 6        # k: spectra in the first k DCT-II cosines or learned directions (0: all free)
    seed: int = 0                  # held-out split
    spatial: int = 4               # model oversampling N
    spectral: int = 2              # model oversampling K
    interpolation: str = "linear"  # how the model reads the mask between pixels ("cubic": N = 1 only)
    learned_basis: SpectralBasis | None = None   # the spectra's k directions instead of the DCT cosines

    def with_(self, **changes) -> "ScoreSettings":
        return replace(self, **changes)

    def record(self) -> dict:
        """The settings as ``calibration.json`` records them: a learned basis by its source, not its numbers."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["learned_basis"] = None if self.learned_basis is None else self.learned_basis.source
        return out

    def basis(self, bands: int) -> Tensor | None:
        """The spectra's basis (bands, k) float32: the first k learned directions, or DCT-II cosines; None for k = 0."""
        k = self.spectral_basis
        if not k:
            return None
        return self.learned_basis.matrix(bands, k) if self.learned_basis is not None else dct_basis(bands, k)


def stripe_windows(height: int, stripes: int, rows: int) -> list[tuple[int, int]]:
    """``stripes`` windows of ``rows`` rows centred at (2i+1) H / (2 stripes), inside [0, H)."""
    rows = min(rows, height)
    stripes = max(1, min(stripes, height // rows))
    windows = []
    for i in range(stripes):
        start = round((2 * i + 1) * height / (2 * stripes) - rows / 2)
        start = min(max(start, 0), height - rows)
        windows.append((start, start + rows))
    return windows


def dct_basis(bands: int, k: int) -> Tensor:
    """The first ``k`` DCT-II cosines over the band index, orthonormal columns: (bands, k) float32."""
    if not 1 <= k <= bands:
        raise ValueError(f"spectral basis size must be in [1, {bands}], got {k}")
    n = torch.arange(bands, dtype=torch.float64)
    cosines = torch.stack([torch.cos(math.pi * (n + 0.5) * j / bands) for j in range(k)], 1)
    return (cosines / cosines.norm(dim=0)).float()


def band_roughness(basis: Tensor) -> Tensor:
    """``||D_b u_j||^2`` for the columns u_j of ``basis`` (L, k), D_b the band differences (Neumann ends): the
    diagonal of ``U^T D_b^T D_b U``, which the band penalty of the subspace solves uses (:func:`_smoothness`). The
    DCT-II cosines diagonalise ``D_b^T D_b`` (eigenvalues ``4 sin^2(pi j / 2L)``), so for them this is the whole
    penalty; for learned directions it penalises each direction's roughness. (k,) float32."""
    return torch.diff(basis.double(), dim=0).pow(2).sum(0).float()


def _smoothness(x: Tensor, lam: float, mu: float, band_curvature: Tensor | None = None) -> Tensor:
    """``(lam (D_r^T D_r + D_c^T D_c) + mu D_b^T D_b) x`` for first differences along rows, columns
    and bands of x (B, L, h, W), Neumann ends. With ``band_curvature`` (k,), x holds basis coefficients
    (B, k, h, W) and the band term is ``mu * band_curvature * x`` (see :func:`band_roughness`)."""
    out = torch.zeros_like(x)
    dims = ((2, lam), (3, lam)) if band_curvature is not None else ((2, lam), (3, lam), (1, mu))
    for dim, weight in dims:
        n = x.shape[dim]
        d = torch.diff(x, dim=dim) * weight
        out.narrow(dim, 1, n - 1).add_(d)
        out.narrow(dim, 0, n - 1).sub_(d)
    if band_curvature is not None and mu:
        out.add_(x * (mu * band_curvature.to(x.dtype)).view(1, -1, 1, 1))
    return out


class SpectralSubspace:
    """``A U``: an operator applied to cubes whose spectra are ``U z``, for coefficients z (B, k, h, W).

    ``op``: any operator with ``__call__`` / ``adjoint`` on (B, L, h, W) cubes; ``basis`` U (L, k).
    """

    def __init__(self, op: EnlargedGridOperator, basis: Tensor) -> None:
        self.op, self.basis = op, basis

    def __call__(self, z: Tensor) -> Tensor:
        return self.op(torch.einsum("lk,bkhw->blhw", self.basis.to(z.dtype), z).contiguous())

    def adjoint(self, y: Tensor) -> Tensor:
        return torch.einsum("lk,blhw->bkhw", self.basis.to(y.dtype), self.op.adjoint(y)).contiguous()

    def fused(self, *tensors: Tensor | None) -> bool:
        """Whether the fused CPU kernels may compute with these tensors: the numba backend, and no
        autograd through them or the masks."""
        return self.op.backend == "numba" and not (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (self.op.masks, *tensors)))

    def normal(self, z: Tensor, weight: Tensor) -> Tensor:
        """``U^T A^T (weight * A U z)``; one fused CPU kernel per call when nothing needs autograd."""
        if self.fused(z, weight):
            from calib.kernels import subspace_normal
            return subspace_normal(z, self.basis.to(z.dtype), self.op.masks.to(z.dtype), weight.to(z.dtype),
                                   self.op.index)
        return self.adjoint(self(z) * weight)


def regularised_solve(op: EnlargedGridOperator | SpectralSubspace, y: Tensor, weight: Tensor, lam: float,
                      mu: float, iterations: int, x0: Tensor | None = None, checkpoint: bool = False,
                      band_curvature: Tensor | None = None, predict: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Conjugate gradients on ``(A^T W A + lam L_rc + mu L_band) x = A^T W y`` from ``x0`` (default 0).

    ``y`` (B, h, Wm); ``weight`` (1 or B, h, Wm) in {0, 1}; ``x0`` (B, L, h, W), a constant.
    Returns x (B, L, h, W), or with ``predict`` (x, A x). For a :class:`SpectralSubspace` operator x
    holds the basis coefficients (B, k, h, W) and ``band_curvature`` is :func:`band_roughness` of the basis.
    Batched (one system per batch entry); differentiable in the operator; ``checkpoint`` recomputes
    each iteration in backward.
    Without autograd, a subspace operator on the numba backend runs the whole solve as one CPU kernel
    (:func:`calib.kernels.subspace_cg`: the same iteration, entries that share masks together).
    """
    if isinstance(op, SpectralSubspace) and op.fused(y, weight, x0):
        from calib.kernels import subspace_cg
        k = op.basis.shape[1]
        start = y.new_zeros(y.shape[0], k, *op.op.masks.shape[-2:]) if x0 is None else x0
        curvature = band_curvature if band_curvature is not None else y.new_zeros(k)
        x, prediction = subspace_cg(start.to(y.dtype), y, weight.to(y.dtype), op.op.masks.to(y.dtype),
                                    op.basis.to(y.dtype), lam, mu, curvature, iterations, op.op.index, predict)
        return (x, prediction) if predict else x

    def normal(v: Tensor) -> Tensor:
        return op.normal(v, weight) + _smoothness(v, lam, mu, band_curvature)

    def step(x: Tensor, r: Tensor, p: Tensor, rs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        hp = normal(p)
        alpha = rs / (p * hp).sum((1, 2, 3)).clamp_min(1e-30)
        x = x + alpha.view(-1, 1, 1, 1) * p
        r = r - alpha.view(-1, 1, 1, 1) * hp
        rs_new = (r * r).sum((1, 2, 3))
        p = r + (rs_new / rs.clamp_min(1e-30)).view(-1, 1, 1, 1) * p
        return x, r, p, rs_new

    b = op.adjoint(y * weight)
    if x0 is None:
        x, r = torch.zeros_like(b), b
    else:
        x = x0.detach()
        r = b - normal(x)
    p, rs = r, (r * r).sum((1, 2, 3))
    for _ in range(iterations):
        if checkpoint and torch.is_grad_enabled():
            x, r, p, rs = recompute(step, x, r, p, rs, use_reentrant=False)
        else:
            x, r, p, rs = step(x, r, p, rs)
    return (x, op(x)) if predict else x


class HeldOutScore:
    """Blind score of candidate instruments for one measurement, or several of one instrument (lower
    is better).

    Args:
        y: measurement (H, W + step*(L-1)), or M measurements (M, H, W + step*(L-1)) of the same
            instrument: the score is then the mean of their relative held-out errors, each capture
            split and solved on its own (the same stripes and split for every capture).
        mask: nominal coded mask (H, W).
        bands, step: band count and nominal dispersion.
        settings: :class:`ScoreSettings`.
        reference: (1, 5) where the first warm starts are solved (default: the nominal point).
        backend: placement backend of the forward model (:mod:`calib.placement`; default: numba
            kernels on the CPU, torch ops elsewhere).

    Everything lives on ``y``'s device (the mask is moved there); candidate parameters are CPU
    float64 (B, 5), and scores and residuals come back on the CPU.
    """

    def __init__(self, y: Tensor, mask: Tensor, bands: int = 28, step: int = 2,
                 settings: ScoreSettings = ScoreSettings(), backend: str | None = None,
                 reference: Tensor | None = None) -> None:
        height, width = mask.shape
        expected = (height, width + step * (bands - 1))
        if y.dim() not in (2, 3) or tuple(y.shape[-2:]) != expected or y.dim() == 3 and y.shape[0] == 0:
            raise ValueError(f"measurement must be (H, W + step*(L-1)) = {expected} (or (M, ...) for M "
                             f"captures) for the mask {tuple(mask.shape)}, got {tuple(y.shape)}")
        captures = y.reshape(-1, *expected).float()
        self.mask = mask.float().to(y.device)
        self.bands, self.step, self.settings, self.backend = bands, step, settings, backend
        self.windows = stripe_windows(height, settings.stripes, settings.rows)
        self.captures = captures.shape[0]
        # entry m * S + s: capture m, stripe s
        self.y = torch.stack([c[a:b] for c in captures for a, b in self.windows])         # (M*S, h, Wm)
        stripes = len(self.windows)
        gen = torch.Generator().manual_seed(settings.seed)
        keep = (torch.rand(stripes, *self.y.shape[1:], generator=gen) < 0.5).float()
        keep = keep.repeat(self.captures, 1, 1).to(y.device)
        self.folds = (keep, 1 - keep)[:settings.folds]
        interior = torch.zeros_like(self.y)
        interior[:, settings.border:self.y.shape[1] - settings.border] = 1
        self.interior = interior
        energy = (self.y ** 2 * interior).sum((1, 2)).view(self.captures, stripes).sum(1)      # (M,)
        # held-out errors of capture m are scaled by 1 / sqrt(M * energy_m): the score is their mean
        scale = (self.captures * energy).rsqrt().repeat_interleave(stripes).view(-1, 1, 1)
        # the folds of a stripe are solved as neighbouring entries (m * S + s) * F + f, which share
        # the stripe's masks (the fused kernels read them once for both)
        folds = len(self.folds)
        self.fits = torch.stack(self.folds, 1).flatten(0, 1)                                 # (M*S*F, h, Wm)
        self.y_folds = self.y.repeat_interleave(folds, 0)
        self.held_out = (1 - self.fits) * (interior * scale).repeat_interleave(folds, 0)
        scale = float((self.mask ** 2).mean())
        self.lam, self.mu = settings.smooth_space * scale, settings.smooth_spectrum * scale
        basis = settings.basis(bands)
        self.basis = basis.to(y.device) if basis is not None else None
        self.band_curvature = band_roughness(basis).to(y.device) if basis is not None else None
        self.reference: Tensor | None = None
        nominal = torch.tensor([[0.0, 0.0, 0.0, float(step), 0.0]], dtype=torch.float64)
        self.set_reference(nominal if reference is None else reference)

    @torch.no_grad()
    def set_reference(self, params: Tensor) -> None:
        """Re-solve the warm starts (one per fold) at ``params`` (1, 5), from the previous ones.

        Candidates are solved with few iterations from these warm starts, so scores are accurate
        near the reference: move it to the current estimate before scoring its neighbourhood.
        """
        params = params.reshape(1, 5).detach().to(torch.float64)
        op = self.operator(params)
        s = self.settings
        iterations = s.rebase_iterations if self.reference is not None else s.reference_iterations
        self.reference = self.solve(op, self.y_folds - self.known(params, op), self.fits, iterations, self.reference)

    def known(self, params: Tensor, op: EnlargedGridOperator | SpectralSubspace) -> Tensor | float:
        """The part of every fold's measurement (B*M*S*F, h, Wm) that candidates (B, 5) predict before
        the solve (the solve fits the rest): nothing here; a prior cube's prediction in
        :class:`calib.network_score.NetworkHeldOutScore`."""
        return 0.0

    def operator(self, params: Tensor) -> EnlargedGridOperator | SpectralSubspace:
        """The criterion's operator for candidates (B, 5) on the stripes of every capture: ``A_xi``
        or ``A_xi U`` (batch entry ``(b * M + m) * S + s``)."""
        s = self.settings
        op = EnlargedGridOperator(self.mask, params, self.bands, self.step, s.spatial, s.spectral,
                                  windows=self.windows * self.captures, backend=self.backend,
                                  interpolation=s.interpolation)
        return op if self.basis is None else SpectralSubspace(op, self.basis)

    def solve(self, op: EnlargedGridOperator | SpectralSubspace, y: Tensor, fit: Tensor, iterations: int,
              x0: Tensor | None, checkpoint: bool = False, predict: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """:func:`regularised_solve` with this criterion's prior (``lam``, ``mu``, subspace)."""
        return regularised_solve(op, y, fit, self.lam, self.mu, iterations, x0, checkpoint, self.band_curvature,
                                 predict)

    def _residuals(self, params: Tensor, checkpoint: bool) -> Tensor:
        """Held-out prediction errors of every candidate, (B, N) on the CPU, scaled so that the
        score is their squared norm (each capture's held-out energy is 1 / M); fitted and border
        pixels hold 0."""
        op = self.operator(params)
        n = params.shape[0]
        y = self.y_folds.repeat(n, 1, 1) - self.known(params, op)
        _, prediction = self.solve(op, y, self.fits.repeat(n, 1, 1), self.settings.iterations,
                                   self.reference.repeat(n, 1, 1, 1), checkpoint, predict=True)
        return ((y - prediction) * self.held_out.repeat(n, 1, 1)).reshape(n, -1).cpu()

    def _in_chunks(self, params: Tensor, evaluate) -> Tensor:
        """``evaluate`` (no autograd) over memory-bounded chunks of the candidates (B, 5), results in
        their order. Chunks group candidates by the sign of alpha, then by a1: a chunk's model holds
        the union of its candidates' placements, and alpha's sign decides which rows they shift to
        (a 5 x 5 (a1, alpha) grid needs 534 placements at once, each sign about 360)."""
        h, w = self.y.shape[1], self.mask.shape[1]
        per_candidate = self.y.shape[0] * self._placements_estimate() * h * w * 4
        size = max(1, MASK_BYTES_PER_CHUNK // per_candidate)
        params = params.detach().to(torch.float64)
        signs = params[:, 4].nan_to_num().sign().tolist()
        order = sorted(range(len(params)), key=lambda i: (signs[i], float(params[i, 3])))
        groups = [[i for i in order if signs[i] == sign] for sign in (-1.0, 0.0, 1.0)]
        chunks = [group[k:k + size] for group in groups for k in range(0, len(group), size)]
        with torch.no_grad():
            parts = [evaluate(params[chunk]) for chunk in chunks]
        out = torch.cat(parts)
        result = torch.empty_like(out)
        result[torch.tensor([i for chunk in chunks for i in chunk])] = out
        return result

    def __call__(self, params: Tensor) -> Tensor:
        """Scores (B,) of candidate parameters (B, 5)."""
        return self._in_chunks(params, lambda part: (self._residuals(part, False) ** 2).sum(1))

    def residuals(self, params: Tensor) -> Tensor:
        """Held-out prediction errors (B, N) of candidates (B, 5); ``score = (residuals ** 2).sum(1)``."""
        return self._in_chunks(params, lambda part: self._residuals(part, False))

    def block_ids(self, blocks: int) -> Tensor:
        """Component of every held-out error (N,), as :meth:`residuals` orders them: (capture, stripe,
        fold, column block), ``min(blocks, width)`` column blocks of near-equal width."""
        entries, height, width = self.y_folds.shape
        columns = torch.cat([torch.full((len(c),), k) for k, c in
                             enumerate(torch.tensor_split(torch.arange(width), min(blocks, width)))])
        per_entry = int(columns.max()) + 1
        return (torch.arange(entries).view(-1, 1, 1) * per_entry + columns.view(1, 1, -1)).expand(
            entries, height, width).flatten()

    @torch.no_grad()
    def block_scores(self, params: Tensor, blocks: int) -> Tensor:
        """Scores of candidates (B, 5) split over (capture, stripe, fold, column block):
        (B, captures * stripes * folds * blocks), summing to ``self(params)``. Paired differences of these
        components between two candidates estimate the noise of their score difference (:mod:`calib.status`)."""
        errors = self.residuals(params) ** 2
        ids = self.block_ids(blocks)
        return errors.new_zeros(errors.shape[0], int(ids.max()) + 1).index_add_(1, ids, errors)

    def differentiable_residuals(self, params: Tensor) -> Tensor:
        """Held-out prediction errors (1, N) of one candidate (1, 5), differentiable in it
        (checkpointed unrolled CG)."""
        return self._residuals(params.reshape(1, 5), checkpoint=True)

    def loss(self, params: Tensor) -> Tensor:
        """Differentiable score of one candidate (1, 5)."""
        return (self.differentiable_residuals(params) ** 2).sum()

    def _placements_estimate(self) -> int:
        """Upper estimate of the (band, shift) entries per candidate, for chunk sizing."""
        s = self.settings
        per_band = 2 * (2 * s.spatial * s.spectral + s.spatial) // s.spatial + 2
        return self.bands * max(4, per_band)
