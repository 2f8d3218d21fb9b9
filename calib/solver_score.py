"""The blind criteria through the user's inner solver S (``calibrate(..., solver=S)``).

* ``gap_tv``: :class:`SolverScore`, the measurement residual of a fixed number of unrolled GAP-TV steps
  from zero through the calibration forward model ``A_xi`` (:class:`calib.forward_model.EnlargedGridOperator`),
  ``||y - A_xi x||^2 / ||y||^2`` over a few full-width row stripes (border rows excluded). A fixed, small
  number of steps does not fit y exactly, so the residual is not flat in ``xi``; gradients with respect
  to ``xi`` flow through ``A_xi`` and the unrolled (checkpointed) GAP-TV.
* a mask-aware network: :class:`calib.network_score.NetworkHeldOutScore`, the held-out criterion of
  :mod:`calib.score` with the network's cube at ``xi`` as the prior mean of its solve.

Why not the network's measurement residual (the criterion before; measured on pseudo-KAIST scene04 and a
pseudo-real crop, N=4 K=2 instrument with noise, README "Inner solver (issue 11)"): the residual of
BiSRNet's cube, even after ten GAP-TV consistency steps through ``A_xi``, is dominated by the network's
own reconstruction error, so its minimum was off the truth (a1 still falling 3 % at +0.02, alpha
0.15 deg off on scene04; dx 0.1 px, a1 0.02 and alpha 0.3 deg off on the crop) and BiSRNet
calibrations slid along the soft dx-a1-alpha valley (0/5 and 1/5 scenes in tolerance; 9/10 and 7/10,
the held-out criterion's figures, with the held-out criterion through the network). Predicting held-out pixels is immune to how well
the cube fits y; the network supplies the prior mean the held-out solve corrects.

Algorithm 2 (:mod:`calib.refine`) takes its Levenberg-Marquardt steps on these residuals: J^T J from
forward differences (0.05 pixel units, one batched call) and, by default, the gradient from the same
differences; ``RefineSettings(gradient="autograd")`` differentiates through the unrolled solver and, for
a network, its operator-built inputs instead (``loss``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from calib.forward_model import EnlargedGridOperator
from calib.network_score import NetworkHeldOutScore
from calib.score import ScoreSettings, stripe_windows
from calib.solvers import GAP_TV, HELD_OUT, check_network_inputs, load_network
from cassi.errors import UserError
from cassi.gap_tv import gap_tv
from cassi.operator import CassiOperator


CHUNK = 4          # candidates reconstructed together (each holds its model's effective masks, ~40 MB)


@dataclass(frozen=True)
class SolverScoreSettings:
    """How the GAP-TV criterion is computed (sizes in detector rows)."""

    stripes: int = 4                   # full-width row stripes, evenly spaced
    rows: int = 32                     # rows per stripe
    border: int = 3                    # rows left out of the residual at each stripe edge
    gap_iterations: int = 20           # GAP-TV steps from zero
    tv_weight: float = 0.1
    spatial: int = 4                   # model oversampling N
    spectral: int = 2                  # model oversampling K
    interpolation: str = "linear"      # how the model reads the mask ("cubic": N = 1 only)

    def with_(self, **changes) -> "SolverScoreSettings":
        return replace(self, **changes)


class _GapView:
    """An :class:`EnlargedGridOperator` with the row sums of ``A A^T`` that GAP-TV normalises by."""

    def __init__(self, op: EnlargedGridOperator) -> None:
        self.op = op
        self.bands, self.height, self.width = op.bands, op.height, op.width

    def check_measurement(self, y: Tensor) -> None:
        if y.dim() != 3 or tuple(y.shape[1:]) != (self.height, self.op.measurement_width):
            raise ValueError(f"measurement must be (B, {self.height}, {self.op.measurement_width}), "
                             f"got shape {tuple(y.shape)}")

    def __call__(self, x: Tensor) -> Tensor:
        return self.op(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.op.adjoint(y)

    def gram_row_sums(self) -> Tensor:
        ones = torch.ones(self.op.batch, self.height, self.op.measurement_width, dtype=self.op.masks.dtype)
        s = self.op(self.op.adjoint(ones))
        return torch.where(s == 0, torch.ones_like(s), s)


class SolverScore:
    """Blind score of candidate instruments through GAP-TV (lower is better); the interface of
    :class:`calib.score.HeldOutScore` (``__call__``, ``residuals``, ``differentiable_residuals``,
    ``loss``, ``set_reference``).

    Args:
        y: measurement (H, W + step*(L-1)).
        mask: nominal coded mask (H, W).
        bands, step: band count and nominal dispersion.
        settings: :class:`SolverScoreSettings`.
    """

    def __init__(self, y: Tensor, mask: Tensor, bands: int = 28, step: int = 2,
                 settings: SolverScoreSettings = SolverScoreSettings(), backend: str | None = None) -> None:
        height, width = mask.shape
        if y.dim() != 2 or tuple(y.shape) != (height, width + step * (bands - 1)):
            raise ValueError(f"measurement must be (H, W + step*(L-1)) = ({height}, {width + step * (bands - 1)}) "
                             f"for the mask {tuple(mask.shape)}, got {tuple(y.shape)}")
        self.mask = mask.float().to(y.device)
        self.bands, self.step, self.settings, self.backend = bands, step, settings, backend
        self.windows = stripe_windows(height, settings.stripes, settings.rows)
        self.y = torch.stack([y.float()[a:b] for a, b in self.windows])               # (S, h, Wm)
        interior = torch.zeros_like(self.y)
        interior[:, settings.border:self.y.shape[1] - settings.border] = 1
        self.interior = interior
        self.energy = float((self.y ** 2 * interior).sum())

    def describe(self) -> dict:
        return {"criterion": "solver residual", "solver": GAP_TV, **asdict(self.settings)}

    def set_reference(self, params: Tensor) -> None:
        """Nothing to re-centre: every candidate is reconstructed from scratch (kept for the interface)."""

    def operator(self, params: Tensor) -> EnlargedGridOperator:
        s = self.settings
        return EnlargedGridOperator(self.mask, params, self.bands, self.step, s.spatial, s.spectral,
                                    windows=self.windows, backend=self.backend, interpolation=s.interpolation)

    def _residuals(self, params: Tensor, checkpoint: bool) -> Tensor:
        s = self.settings
        n = params.shape[0]
        op = self.operator(params)
        y = self.y.repeat(n, 1, 1)
        x = gap_tv(y, _GapView(op), s.gap_iterations, s.tv_weight, checkpoint=checkpoint)
        miss = (y - op(x)) * self.interior.repeat(n, 1, 1)
        return (miss.reshape(n, -1) / self.energy ** 0.5).cpu()

    @torch.no_grad()
    def residuals(self, params: Tensor) -> Tensor:
        """Measurement residuals (B, N) of candidates (B, 5), ``CHUNK`` at a time (memory-bounded);
        ``score = (residuals ** 2).sum(1)``."""
        parts = params.detach().to(torch.float64).split(CHUNK)
        return torch.cat([self._residuals(part, False) for part in parts])

    @torch.no_grad()
    def __call__(self, params: Tensor) -> Tensor:
        """Scores (B,) of candidate parameters (B, 5)."""
        return (self.residuals(params) ** 2).sum(1)

    def differentiable_residuals(self, params: Tensor) -> Tensor:
        """Residuals (1, N) of one candidate (1, 5), differentiable in it (through the operator and the
        unrolled GAP-TV)."""
        return self._residuals(params.reshape(1, 5), checkpoint=True)

    def loss(self, params: Tensor) -> Tensor:
        """Differentiable score of one candidate (1, 5)."""
        return (self.differentiable_residuals(params) ** 2).sum()


@dataclass(frozen=True)
class InnerSolver:
    """A loaded inner solver: GAP-TV (``network`` None) or a frozen mask-aware network."""

    name: str
    network: nn.Module | None

    def criterion(self, y: Tensor, mask: Tensor, bands: int, step: int, settings: ScoreSettings,
                  reference: Tensor) -> SolverScore | NetworkHeldOutScore:
        """This solver's criterion on ``y`` (H, W'), through the model of ``settings`` (the held-out
        criterion's refinement setting: its oversampling, mask reading, stripes, split and solve); a
        network's warm starts are solved at ``reference`` (1, 5)."""
        if self.network is None:
            return SolverScore(y, mask, bands, step, SolverScoreSettings(
                spatial=settings.spatial, spectral=settings.spectral, interpolation=settings.interpolation))
        return NetworkHeldOutScore(y, mask, self.network, bands, step, settings, reference=reference)


def inner_solver(solver: str, checkpoint, y: Tensor, mask: Tensor, bands: int, step: int,
                 network: nn.Module | None = None) -> InnerSolver | None:
    """The solver that decides the estimate: None for ``heldout`` (the held-out CG score of
    :mod:`calib.score` decides), else GAP-TV or a network on the device of ``y``. A network is loaded
    (unless ``network`` is it, loaded already), frozen and its size rule and inputs checked here
    (:func:`calib.solvers.check_network_inputs`), so a wrong name, checkpoint, size or band count fails
    (:class:`cassi.errors.UserError`, one line) before the search."""
    if solver in (HELD_OUT, GAP_TV):
        if checkpoint is not None:
            from models.checkpoints import recorded_model_name

            recorded = recorded_model_name(checkpoint)
            hint = (f"; {checkpoint} records the model {recorded}: pass --solver {recorded} to calibrate with it"
                    if recorded else "")
            raise UserError(f"--ckpt is only used with a network solver, not {solver}{hint}")
        return None if solver == HELD_OUT else InnerSolver(solver, None)
    if network is None:
        network = load_network(solver, checkpoint, y.device)
    check_network_inputs(network, solver, y[None], CassiOperator(mask, bands, step))
    return InnerSolver(solver, network)
