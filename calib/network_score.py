"""The held-out criterion through a frozen network: the network's cube is the prior mean of the
held-out solve.

For a candidate instrument ``xi`` the network G reconstructs the cube from the operator-built inputs
at ``xi`` (warped mask, shifted masks, dispersion: ``G.prepare_inputs(y, CassiOperator(mask, xi))``),
as it would in use. The held-out criterion of :mod:`calib.score` then runs with that cube as its
prior mean: on each fold's fitted pixels it solves for a smooth-spectrum correction ``U z``,
``min_z ||W (y - A_xi (G + U z))||^2 + lam ||grad_rc z||^2``, and scores how well ``A_xi (G + U z)``
predicts the held-out pixels (same stripes, split, warm starts, noise components and standard errors
as :class:`calib.score.HeldOutScore`). Only the measurement and the nominal mask enter.

``fill``: the network would otherwise see the held-out pixels it is scored on. With ``fill`` each
fold's network input has that fold's held-out pixels replaced by the plain held-out criterion's
prediction from the fitted pixels (not differentiated; one network forward per fold and candidate
instead of one per candidate).

Measured (official BiSRNet, N=4 K=2 instrument with noise; README "Inner solver (issue 11)"): on slices
through the truth of pseudo-KAIST scene04 and a pseudo-real crop this criterion is lowest at the truth
on 7 of 8 slices (dx, dy, a1, alpha; the eighth 0.005 off in a1), the plain held-out criterion on 4,
the network's measurement residual (the criterion before) on 3. Filling changed no minimum by more
than one slice step and cost 3-5x the CPU, so calibrations run without it; at three points off the
truth along the soft dx-dy-alpha valley (the benchmark's misses) it preferred the truth on one where
the unfilled criterion did not.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from calib.forward_model import EnlargedGridOperator, PARAMETER_NAMES
from calib.score import HeldOutScore, ScoreSettings, SpectralBasis, SpectralSubspace
from calib.solvers import network_solver
from calib.status import relative_difference
from cassi.mismatch import Mismatch
from cassi.operator import CassiOperator


def network_spectral_basis(network: nn.Module, name: str, y: Tensor, mask: Tensor, bands: int,
                           step: int) -> SpectralBasis:
    """The spectral directions of the frozen ``network``'s cube of ``y`` (H, W + step*(L-1)) at the nominal
    instrument (``mask`` (H, W) as handed, no mismatch): blind, one forward. The held-out solves then keep spectra
    in the span of its first k directions instead of k DCT cosines (README "Inner solver (issue 11)")."""
    cube = network_solver(network)(y[None].float(), CassiOperator(mask.float(), bands, step))[0]
    return SpectralBasis.from_cube(cube, f"{name}'s cube of the measurement at the nominal instrument")


FAR_WORSE = 0.1     # relative held-out error by which the learned directions may lose at the nominal point


def choose_spectral_basis(learned: SpectralBasis, y: Tensor, mask: Tensor, bands: int, step: int,
                          settings: ScoreSettings, z: float, blocks: int) -> tuple[bool, dict]:
    """Whether the held-out solves use ``learned`` instead of the DCT cosines: yes unless, at the nominal point,
    they predict the held-out pixels of ``y`` worse by more than ``z`` standard errors of the paired block scores
    *and* by more than :data:`FAR_WORSE` -- a network that does not know such scenes (random weights: 98 % worse on
    a 64 px crop). Not "better beyond the noise": at the nominal point the drift dominates the error, and the
    official BiSRNet's directions scored from 2.6 % worse (5 standard errors) to 31 % better than the cosines on
    benchmark scenes whose calibrations they made more accurate (README "Inner solver (issue 11)").
    Returns (kept, the record for ``settings.spectral_basis``)."""
    nominal = torch.tensor([[0.0, 0.0, 0.0, float(step), 0.0]], dtype=torch.float64)
    parts = {name: HeldOutScore(y, mask, bands, step, settings.with_(learned_basis=basis)).block_scores(nominal,
                                                                                                      blocks)[0]
             for name, basis in (("cosines", None), ("learned", learned))}
    margin, se = relative_difference(parts["cosines"], parts["learned"])     # > 0: the learned ones predict better
    kept = not (margin < -z * se and margin < -FAR_WORSE)
    record = {"learned_from": learned.source, "kept": kept, "directions": settings.spectral_basis,
              "score_cosines": float(parts["cosines"].sum()), "score_learned": float(parts["learned"].sum()),
              "relative_margin": margin, "standard_error": se, "refused_below": -FAR_WORSE,
              "used": "learned" if kept else "DCT-II cosines"}
    return kept, record


def candidate_operator(mask: Tensor, params: Tensor, bands: int, step: int) -> CassiOperator:
    """The native operator of one candidate (5,), differentiable in it (for a network's inputs)."""
    return CassiOperator(mask, bands, step, Mismatch(**{n: params[i] for i, n in enumerate(PARAMETER_NAMES)}))


class NetworkHeldOutScore(HeldOutScore):
    """:class:`calib.score.HeldOutScore` with a frozen mask-aware network's cube as the prior mean.

    Args:
        y: one measurement (H, W + step*(L-1)).
        mask: nominal coded mask (H, W).
        network: frozen mask-aware network (``prepare_inputs``, ``reconstruction``).
        bands, step, settings, backend, reference: as :class:`calib.score.HeldOutScore`.
        fill: feed the network each fold's held-out pixels replaced by the plain criterion's prediction.
    """

    def __init__(self, y: Tensor, mask: Tensor, network: nn.Module, bands: int = 28, step: int = 2,
                 settings: ScoreSettings = ScoreSettings(), backend: str | None = None,
                 reference: Tensor | None = None, fill: bool = False) -> None:
        if y.dim() != 2:
            raise ValueError(f"the network criterion takes one measurement (H, W'), got shape {tuple(y.shape)}")
        self.network, self.full_y, self.fill = network, y.float(), fill
        self.plain = HeldOutScore(y, mask, bands, step, settings, backend, reference) if fill else None
        super().__init__(y, mask, bands, step, settings, backend, reference)

    def describe(self) -> dict:
        """What ``calibration.json`` records as the criterion."""
        return {"criterion": "held-out CG with the network's cube as prior mean", "solver": type(self.network).__name__,
                "fill_held_out": self.fill, **self.settings.record()}

    @torch.no_grad()
    def set_reference(self, params: Tensor) -> None:
        if self.plain is not None:
            self.plain.set_reference(params)
        super().set_reference(params)

    def _inputs(self, params: Tensor) -> Tensor:
        """Network inputs per candidate and fold (B, F, H, Wm): y, or with ``fill`` y whose held-out
        stripe pixels hold the plain criterion's prediction."""
        folds = len(self.folds)
        if self.plain is None:
            return self.full_y.expand(params.shape[0], 1, *self.full_y.shape)
        n = params.shape[0]
        with torch.no_grad():
            _, predicted = self.plain.solve(self.plain.operator(params.detach()), self.y_folds.repeat(n, 1, 1),
                                            self.fits.repeat(n, 1, 1), self.settings.iterations,
                                            self.plain.reference.repeat(n, 1, 1, 1), predict=True)
        fits = self.fits.repeat(n, 1, 1)
        stripes = (fits * self.y_folds.repeat(n, 1, 1) + (1 - fits) * predicted).view(n, len(self.windows), folds,
                                                                                      *fits.shape[1:])
        inputs = self.full_y.repeat(n, folds, 1, 1)
        for s, (a, b) in enumerate(self.windows):
            inputs[:, :, a:b] = stripes[:, s]
        return inputs

    def network_cubes(self, params: Tensor) -> Tensor:
        """The network's cube at every candidate (B, 5), cut to the stripes: (B*S*F, L, h, W)."""
        folds = len(self.folds)
        cubes = []
        for p, y in zip(params, self._inputs(params)):
            op = candidate_operator(self.mask, p, self.bands, self.step)
            x = self.network.reconstruction(self.network(**self.network.prepare_inputs(y, op))).float()
            stripes = torch.stack([x[:, :, a:b] for a, b in self.windows], 1)          # (F or 1, S, L, h, W)
            cubes.append(stripes.expand(folds, *stripes.shape[1:]).transpose(0, 1).flatten(0, 1))
        return torch.cat(cubes)

    def known(self, params: Tensor, op: EnlargedGridOperator | SpectralSubspace) -> Tensor:
        """``A_xi G`` for every fold (B*S*F, h, Wm): the prediction the solve's correction starts from."""
        model = op.op if isinstance(op, SpectralSubspace) else op
        return model(self.network_cubes(params).contiguous())
