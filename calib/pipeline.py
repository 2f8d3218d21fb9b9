"""``calibrate``: blind estimate of (dx, dy, theta, a1, alpha) from one snapshot and the nominal mask.

Pipeline: Algorithm 1 (:mod:`calib.search`) with a cheap setting of the held-out score, Algorithm 2
(:mod:`calib.refine`) with the full setting, the status tests and 1-D landscape slices through the
estimate (:mod:`calib.status`, cheap setting: the slices span about a pixel, where it resolves the
landscape as the search does), and the user's solver run through the calibration forward model at
the nominal point and at the estimate (residual before / after). Only ``y`` and the nominal ``mask``
are used.

The inner solver (``solver``) decides the estimate. ``heldout`` (the default): the held-out score
throughout, as above. ``gap_tv`` or a mask-aware network S (:mod:`calib.solver_score`): the cheap
held-out score prunes Algorithm 1's grids (a network forward per grid point would cost hours on a
CPU), S's criterion ranks the polishing candidates of Algorithm 1 and is the loss of Algorithm 2
(gradients through S). The status tests stay those of the held-out criterion (:mod:`calib.status`,
whose noise model they need), run at S's estimate: they say whether the calibrated model explains the
measurement and whether the held-out landscape pins each parameter there; one more test refines the
held-out criterion from S's estimate, and a significantly better held-out point makes the status
"ambiguous" (:func:`calib.status.solver_agreement`).
"""
from __future__ import annotations

from dataclasses import asdict

import torch
from torch import Tensor

from calib.forward_model import PARAMETER_NAMES, params_to_mismatch
from calib.instrument import instrument_operator
from calib.ranges import Ranges, pixel_scales
from calib.refine import RefineSettings, refine
from calib.result import CalibrationResult, StageClock, StageRecord
from calib.score import HeldOutScore, ScoreSettings
from calib.search import Evaluations, SearchSettings, beam_search
from calib.solver_score import solver_criterion
from calib.solvers import GAP_TV, HELD_OUT, Solver, gap_tv_solver, network_solver, residual
from calib.status import StatusSettings, assess, solver_agreement
from cassi.checks import check_mask, check_measurement
from cassi.mismatch import Mismatch

# the search's 5-iteration solves need mu > 0 to converge far from their warm start; refinement
# (warm starts at the current point) keeps mu = 0, which is less biased
SEARCH_SCORE = ScoreSettings(stripes=2, rows=16, iterations=5, smooth_spectrum=1.0)
REFINE_SCORE = ScoreSettings(stripes=4, rows=24, iterations=12)
MODEL_OVERSAMPLE = (4, 2)                  # (N, K) of the default calibration forward model


def _check_inputs(y: Tensor, mask: Tensor, bands: int, step: int) -> tuple[Tensor, Tensor]:
    y, mask = torch.as_tensor(y), torch.as_tensor(mask)
    if mask.dim() != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
    if y.dim() == 3 and y.shape[0] == 1:
        y = y[0]
    expected = (mask.shape[0], mask.shape[1] + step * (bands - 1))
    if y.dim() != 2 or tuple(y.shape) != expected:
        raise ValueError(f"measurement must be (H, W + step*(L-1)) = {expected} for a {tuple(mask.shape)} mask, "
                         f"{bands} bands and step {step}; got shape {tuple(y.shape)}")
    check_mask(mask)                                # before any work: a zero mask has nothing to calibrate
    check_measurement(y)
    return y.float(), mask.float()


def _solver_check(solver_name: str, solve: Solver, y: Tensor, mask: Tensor, bands: int, step: int,
                  estimate: Mismatch, oversample: tuple[int, int], clock: StageClock) -> dict:
    """Reconstruct with the chosen solver through the calibration forward model (what operator.npz
    records) at the nominal point and at the estimate, on the device of ``y`` and ``mask``;
    measurement residuals before / after."""
    with clock.stage("4 solver check"):
        try:
            out = {"solver": solver_name, "oversample": list(oversample)}
            for label, mismatch in (("nominal", None), ("calibrated", estimate)):
                op = instrument_operator(mask, bands, step, mismatch, oversample)
                out[f"residual_{label}"] = residual(y[None], op, solve(y[None], op))
        except (ValueError, RuntimeError) as err:       # e.g. a network that does not accept this size
            out = {"solver": solver_name, "error": str(err)}
    return out


def calibrate(y: Tensor, mask: Tensor, solver: str = HELD_OUT, ckpt=None, bands: int = 28, step: int = 2,
              ranges: Ranges | dict | None = None, progress: bool = True,
              search: SearchSettings = SearchSettings(), refinement: RefineSettings = RefineSettings(),
              search_score: ScoreSettings = SEARCH_SCORE, refine_score: ScoreSettings = REFINE_SCORE,
              oversample: tuple[int, int] = MODEL_OVERSAMPLE, solver_check: bool = True,
              status_settings: StatusSettings = StatusSettings(),
              device: str | torch.device = "cpu") -> CalibrationResult:
    """Estimate the instrument mismatch from one measurement ``y`` (H, W + step*(L-1)) and the nominal
    coded ``mask`` (H, W), blind (no scene is given or used).

    ``solver``: the inner solver: "heldout" (the held-out CG criterion; GAP-TV makes the check),
    "gap_tv", or a registered mask-aware network ("bisrnet", "mst_l", ...) with ``ckpt`` (.pth or
    release folder); it decides the estimate (see the module docstring) and reconstructs with the
    nominal and the calibrated operator (``result.checks``).
    ``ranges``: :class:`Ranges` or a dict name -> (lo, hi). ``oversample``: (N, K) of the calibration
    forward model (:mod:`calib.forward_model`); (1, 1) is the native-grid operator, for data made with
    it. ``solver_check``: run that reconstruction (off: ``result.checks`` is empty).
    ``status_settings``: how ``result.status`` is decided (:mod:`calib.status`). ``device``: where
    the forward model, the score's solves and the solver check run (torch ops; on the CPU the
    placement sums are numba kernels); the search and refinement bookkeeping stays on the CPU.
    Returns a :class:`CalibrationResult`.
    """
    y, mask = _check_inputs(y, mask, bands, step)
    device = torch.device(device)
    y, mask = y.to(device), mask.to(device)
    ranges = Ranges.from_dict(ranges) if isinstance(ranges, dict) else (ranges or Ranges())
    clock = StageClock()
    scales = pixel_scales(*mask.shape, bands, step)
    search_score = search_score.with_(spatial=oversample[0], spectral=oversample[1])
    refine_score = refine_score.with_(spatial=oversample[0], spectral=oversample[1])
    with clock.stage("0 setup"):
        criterion = solver_criterion(solver, ckpt, y, mask, bands, step, oversample)    # fails early
        cheap = HeldOutScore(y, mask, bands, step, search_score)
        heldout = HeldOutScore(y, mask, bands, step, refine_score)
        full = heldout if criterion is None else criterion
        nominal = torch.tensor([0.0, 0.0, 0.0, float(step), 0.0], dtype=torch.float64)
        nominal_parts = heldout.block_scores(nominal[None], status_settings.blocks)[0]  # for calib.status
        nominal_score = float(nominal_parts.sum()) if criterion is None else float(full(nominal[None])[0])
    evaluations = Evaluations(cheap, search.batch, progress)
    decisive = None if criterion is None else Evaluations(criterion, search.batch, progress)
    point, history, diagnostics = beam_search(evaluations, ranges, search, clock, progress, decisive)
    point, point_score, refined = refine(full, point, ranges, scales, refinement, clock, progress)
    history += refined
    with clock.stage("3 status"):
        if criterion is not None:                       # the held-out tests' warm starts move to the estimate
            heldout.set_reference(point[None])
        assessment = assess(cheap, heldout, y, mask, point, ranges, scales, status_settings, nominal_parts)
        if criterion is not None and assessment.status != "failed":
            heldout_point, _, _ = refine(heldout, point, ranges, scales, refinement, StageClock())
            solver_agreement(heldout, point, heldout_point, scales, assessment, status_settings)
    wall, cpu = clock.last("3 status")
    history.append(StageRecord("3 status", params_to_mismatch(point).to_dict(), assessment.centre_score,
                               assessment.evaluations, wall, cpu))
    estimate = params_to_mismatch(point)
    checks = {}
    if solver_check:
        solve = gap_tv_solver() if criterion is None or criterion.network is None else network_solver(criterion.network)
        checks = _solver_check(GAP_TV if solver == HELD_OUT else solver, solve, y, mask, bands, step, estimate,
                               oversample, clock)
    settings = {"solver": solver, "ckpt": None if ckpt is None else str(ckpt),
                "criterion": "held-out CG" if criterion is None else criterion.describe(),
                "bands": bands, "step": step, "ranges": ranges.to_dict(),
                "oversample": list(oversample), "device": str(device),
                "search": asdict(search), "search_score": asdict(search_score),
                "refine_score": asdict(refine_score),
                "refinement": asdict(refinement), "status": asdict(status_settings),
                "diagnostics": diagnostics}
    log = [{"stage": stage, "point": dict(zip(PARAMETER_NAMES, point)), "score": value}
           for stage, point, value in evaluations.log]
    return CalibrationResult(estimate, point_score, nominal_score, assessment.status, assessment.reasons, history,
                             clock.summary(), settings, assessment.landscape, checks, log, assessment.tests)
