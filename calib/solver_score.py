"""The blind criterion through the user's inner solver S: the measurement residual of S's reconstruction.

For a candidate instrument ``xi`` the solver reconstructs the cube from the measurement ``y``:

* a mask-aware network G (frozen: eval mode, no parameter gradients) gets the inputs the operator
  :class:`cassi.CassiOperator` builds for ``xi`` (warped mask, shifted masks, dispersion), as it
  would in use, and its cube is then made consistent with the candidate by ``consistency_iterations``
  unrolled GAP-TV steps through the calibration forward model ``A_xi``
  (:class:`calib.forward_model.EnlargedGridOperator`);
* GAP-TV runs ``gap_iterations`` unrolled steps from zero through ``A_xi``.

The score is ``||y - A_xi x||^2 / ||y||^2`` over a few full-width row stripes (border rows excluded):
only the measurement and the nominal mask enter. A fixed, small number of GAP-TV steps does not fit
y exactly, so the residual is not flat in ``xi``. Gradients with respect to ``xi`` flow through
``A_xi``, the unrolled (checkpointed) GAP-TV and, for a network, its operator-built inputs.

Why the extra GAP-TV steps after a network (measured on pseudo-KAIST scene04 and a pseudo-real crop,
N=4 K=2 instrument with noise, ``benchmarks/bench_calibration.py --solver-landscapes``): the plain
residual ``||y - A_xi G(y; M_xi)||`` of the official BiSRNet has its minimum 0.25-0.5 px off the true
dx on both scenes (the network, fed through the native operator, reconstructs these measurements
better with a mask shifted by about half a pixel: 29.4 dB at dx - 0.5 px vs 26.4 dB at the truth on
scene04), and 0.1-0.3 deg off in alpha; ten consistency steps through the calibration model put the
dx and dy minima at the truth (alpha stays 0.15-0.3 deg off). The held-out CG criterion
(:mod:`calib.score`) locates all five parameters better; see the README, "Inner solver (issue 11)".

Algorithm 2 (:mod:`calib.refine`) takes its Levenberg-Marquardt steps on these residuals: J^T J from
forward differences of S (0.05 pixel units, one batched call) and, by default, the gradient from the
same differences; ``RefineSettings(gradient="autograd")`` differentiates through the unrolled,
checkpointed GAP-TV and the network's operator-built inputs instead (:meth:`SolverScore.loss`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from calib.forward_model import EnlargedGridOperator, PARAMETER_NAMES
from calib.score import stripe_windows
from calib.solvers import GAP_TV, HELD_OUT, check_solver_size, load_network, network_solver
from cassi.errors import UserError
from cassi.gap_tv import gap_tv
from cassi.mismatch import Mismatch
from cassi.operator import CassiOperator


CHUNK = 4          # candidates reconstructed together (each holds its model's effective masks, ~40 MB)


@dataclass(frozen=True)
class SolverScoreSettings:
    """How the solver criterion is computed (sizes in detector rows)."""

    stripes: int = 4                   # full-width row stripes, evenly spaced
    rows: int = 32                     # rows per stripe
    border: int = 3                    # rows left out of the residual at each stripe edge
    gap_iterations: int = 20           # GAP-TV from zero (solver gap_tv)
    consistency_iterations: int = 10   # GAP-TV steps from a network's cube
    tv_weight: float = 0.1
    spatial: int = 4                   # model oversampling N
    spectral: int = 2                  # model oversampling K

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


def candidate_operator(mask: Tensor, params: Tensor, bands: int, step: int) -> CassiOperator:
    """The native operator of one candidate (5,), differentiable in it (for a network's inputs)."""
    return CassiOperator(mask, bands, step, Mismatch(**{n: params[i] for i, n in enumerate(PARAMETER_NAMES)}))


class SolverScore:
    """Blind score of candidate instruments through a solver (lower is better); the interface of
    :class:`calib.score.HeldOutScore` (``__call__``, ``residuals``, ``differentiable_residuals``,
    ``loss``, ``set_reference``).

    Args:
        y: measurement (H, W + step*(L-1)).
        mask: nominal coded mask (H, W).
        network: a frozen mask-aware network, or None for GAP-TV alone.
        bands, step: band count and nominal dispersion.
        settings: :class:`SolverScoreSettings`.
    """

    def __init__(self, y: Tensor, mask: Tensor, network: nn.Module | None = None, bands: int = 28, step: int = 2,
                 settings: SolverScoreSettings = SolverScoreSettings(), backend: str | None = None) -> None:
        height, width = mask.shape
        if y.dim() != 2 or tuple(y.shape) != (height, width + step * (bands - 1)):
            raise ValueError(f"measurement must be (H, W + step*(L-1)) = ({height}, {width + step * (bands - 1)}) "
                             f"for the mask {tuple(mask.shape)}, got {tuple(y.shape)}")
        self.full_y, self.mask = y.float(), mask.float().to(y.device)
        self.network, self.bands, self.step, self.settings, self.backend = network, bands, step, settings, backend
        self.windows = stripe_windows(height, settings.stripes, settings.rows)
        self.y = torch.stack([self.full_y[a:b] for a, b in self.windows])               # (S, h, Wm)
        interior = torch.zeros_like(self.y)
        interior[:, settings.border:self.y.shape[1] - settings.border] = 1
        self.interior = interior
        self.energy = float((self.y ** 2 * interior).sum())

    def describe(self) -> dict:
        kind = type(self.network).__name__ if self.network is not None else GAP_TV
        return {"criterion": "solver residual", "solver": kind, **asdict(self.settings)}

    def set_reference(self, params: Tensor) -> None:
        """Nothing to re-centre: every candidate is reconstructed from scratch (kept for the interface)."""

    def operator(self, params: Tensor) -> EnlargedGridOperator:
        s = self.settings
        return EnlargedGridOperator(self.mask, params, self.bands, self.step, s.spatial, s.spectral,
                                    windows=self.windows, backend=self.backend)

    def _network_start(self, params: Tensor) -> Tensor:
        """The network's cube for every candidate, cut to the stripes: (B*S, L, h, W)."""
        cubes = []
        for p in params:
            op = candidate_operator(self.mask, p, self.bands, self.step)
            x = self.network.reconstruction(self.network(**self.network.prepare_inputs(self.full_y[None], op)))
            cubes.append(torch.stack([x[0, :, a:b] for a, b in self.windows]))
        return torch.cat(cubes).float()

    def _residuals(self, params: Tensor, checkpoint: bool) -> Tensor:
        s = self.settings
        n = params.shape[0]
        op = self.operator(params)
        y = self.y.repeat(n, 1, 1)
        if self.network is None:
            x = gap_tv(y, _GapView(op), s.gap_iterations, s.tv_weight, checkpoint=checkpoint)
        else:
            x = self._network_start(params)
            if s.consistency_iterations:
                x = gap_tv(y, _GapView(op), s.consistency_iterations, s.tv_weight, x0=x, checkpoint=checkpoint)
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
        """Residuals (1, N) of one candidate (1, 5), differentiable in it (through the operator, the
        unrolled GAP-TV and the network's operator-built inputs)."""
        return self._residuals(params.reshape(1, 5), checkpoint=True)

    def loss(self, params: Tensor) -> Tensor:
        """Differentiable score of one candidate (1, 5)."""
        return (self.differentiable_residuals(params) ** 2).sum()


def solver_criterion(solver: str, checkpoint, y: Tensor, mask: Tensor, bands: int, step: int,
                     oversample: tuple[int, int], settings: SolverScoreSettings = SolverScoreSettings()
                     ) -> SolverScore | None:
    """The criterion that decides the estimate for ``solver``: None for ``heldout`` (the held-out CG
    score of :mod:`calib.score` decides), else the residual through GAP-TV or a network, on the device of
    ``y``. A network is loaded, frozen and run once on ``y`` here, so a wrong name, checkpoint or size
    fails (:class:`cassi.errors.UserError`, one line) before the search."""
    if solver in (HELD_OUT, GAP_TV):
        if checkpoint is not None:
            raise UserError(f"--ckpt is only used with a network solver, not {solver}")
        if solver == HELD_OUT:
            return None
        network = None
    else:
        network = load_network(solver, checkpoint, y.device)
        check_solver_size(network_solver(network), solver, y[None], CassiOperator(mask, bands, step))
    settings = settings.with_(spatial=oversample[0], spectral=oversample[1])
    return SolverScore(y, mask, network, bands, step, settings)
