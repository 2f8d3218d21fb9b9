"""``calibrate``: blind estimate of (dx, dy, theta, a1, alpha) from one snapshot and the nominal mask.

Pipeline: Algorithm 1 (:mod:`calib.search`) with a cheap setting of the held-out score, Algorithm 2
(:mod:`calib.refine`) with the full setting, 1-D landscape slices through the estimate, a status
check, and the user's solver run with the nominal and the calibrated operator (residual before /
after). Only ``y`` and the nominal ``mask`` are used.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
from torch import Tensor

from calib.forward_model import PARAMETER_NAMES, params_to_mismatch
from calib.ranges import Ranges, pixel_scales
from calib.refine import RefineSettings, refine
from calib.result import CalibrationResult, StageClock, StageRecord
from calib.score import HeldOutScore, ScoreSettings
from calib.search import Evaluations, SearchSettings, beam_search
from calib.solvers import load_solver, residual
from cassi.mismatch import Mismatch
from cassi.operator import CassiOperator

SEARCH_SCORE = ScoreSettings(stripes=2, rows=16, iterations=5)
REFINE_SCORE = ScoreSettings(stripes=4, rows=24, iterations=16)
SLICE_POINTS = (-1.0, -0.5, 0.5, 1.0)     # landscape slices, in pixel units (see pixel_scales)
FLAT_RISE = 0.005                          # score rise at +-1 px unit below which a parameter is "flat"
EDGE_FRACTION = 0.02                       # estimate within 2 % of the range width of an edge


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
    for name, t in (("measurement", y), ("mask", mask)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or Inf values")
    if float(y.abs().max()) == 0:
        raise ValueError("measurement is all zeros")
    return y.float(), mask.float()


def _landscape(score: HeldOutScore, point: Tensor, centre_score: float, ranges: Ranges, scales: Tensor,
               clock: StageClock) -> tuple[dict, StageRecord]:
    name = "3 landscape"
    with clock.stage(name):
        score.set_reference(point[None])
        offsets = torch.tensor(SLICE_POINTS, dtype=torch.float64)
        probes = point.repeat(5 * len(offsets), 1)
        for i in range(5):
            probes[i * len(offsets):(i + 1) * len(offsets), i] += offsets * scales[i]
        probes = ranges.clamp(probes)
        values = score(probes).view(5, len(offsets))
    slices = {}
    for i, n in enumerate(PARAMETER_NAMES):
        xs = probes[i * len(offsets):(i + 1) * len(offsets), i].tolist()
        order = sorted(range(len(xs) + 1), key=lambda k: ([*xs, float(point[i])])[k])
        all_x = [*xs, float(point[i])]
        all_v = [*values[i].tolist(), centre_score]
        slices[n] = {"values": [all_x[k] for k in order], "scores": [all_v[k] for k in order]}
    wall, cpu = clock.last(name)
    return slices, StageRecord(name, params_to_mismatch(point).to_dict(), centre_score, probes.shape[0], wall, cpu)


def _status(point: Tensor, point_score: float, slices: dict, ranges: Ranges, scales: Tensor
            ) -> tuple[str, list[str]]:
    if not (torch.isfinite(point).all() and point_score == point_score and abs(point_score) != float("inf")):
        return "failed", ["the score or the estimate is not finite"]
    reasons = []
    for i, n in enumerate(PARAMETER_NAMES):
        s = slices[n]
        far = [v for x, v in zip(s["values"], s["scores"]) if abs(x - float(point[i])) >= 0.99 * float(scales[i])]
        rise = (min(far) - point_score) / point_score if far else 0.0
        if rise < FLAT_RISE:
            reasons.append(f"flat landscape in {n}: the score rises only {100 * rise:.2f} % one pixel-unit "
                           f"({float(scales[i]):.3g}) away from the estimate")
    bounds = ranges.bounds()
    for i, n in enumerate(PARAMETER_NAMES):
        lo, hi = float(bounds[i, 0]), float(bounds[i, 1])
        margin = EDGE_FRACTION * (hi - lo)
        if float(point[i]) <= lo + margin or float(point[i]) >= hi - margin:
            reasons.append(f"{n} = {float(point[i]):.4g} is at the edge of its search range [{lo:g}, {hi:g}]")
    return ("ambiguous" if reasons else "ok"), reasons


def _solver_check(solver_name: str, ckpt, y: Tensor, mask: Tensor, bands: int, step: int, estimate: Mismatch,
                  clock: StageClock) -> dict:
    """Reconstruct with the chosen solver and the nominal / calibrated operator; residuals before/after."""
    with clock.stage("4 solver check"):
        try:
            solve = load_solver(solver_name, ckpt)
            out = {"solver": solver_name}
            for label, mismatch in (("nominal", None), ("calibrated", estimate)):
                op = CassiOperator(mask, bands, step, mismatch)
                out[f"residual_{label}"] = residual(y[None], op, solve(y[None], op))
        except (ValueError, RuntimeError) as err:       # e.g. a network that does not accept this size
            out = {"solver": solver_name, "error": str(err)}
    return out


def calibrate(y: Tensor, mask: Tensor, solver: str = "gap_tv", ckpt=None, bands: int = 28, step: int = 2,
              ranges: Ranges | dict | None = None, progress: bool = True,
              search: SearchSettings = SearchSettings(), refinement: RefineSettings = RefineSettings(),
              search_score: ScoreSettings = SEARCH_SCORE, refine_score: ScoreSettings = REFINE_SCORE,
              solver_check: bool = True) -> CalibrationResult:
    """Estimate the instrument mismatch from one measurement ``y`` (H, W + step*(L-1)) and the nominal
    coded ``mask`` (H, W), blind (no scene is given or used).

    ``solver``: "gap_tv" or "mst_s" / "mst_m" / "mst_l" with ``ckpt`` (toolbox .pth or release folder),
    used to reconstruct with the nominal and the calibrated operator (``result.checks``).
    ``ranges``: :class:`Ranges` or a dict name -> (lo, hi). Returns a :class:`CalibrationResult`.
    """
    y, mask = _check_inputs(y, mask, bands, step)
    ranges = Ranges.from_dict(ranges) if isinstance(ranges, dict) else (ranges or Ranges())
    if solver != "gap_tv" or ckpt is not None:
        load_solver(solver, ckpt)                       # fail early on a bad solver / checkpoint
    clock = StageClock()
    scales = pixel_scales(*mask.shape, bands, step)
    with clock.stage("0 setup"):
        cheap = HeldOutScore(y, mask, bands, step, search_score)
        full = HeldOutScore(y, mask, bands, step, refine_score)
        nominal = torch.tensor([0.0, 0.0, 0.0, float(step), 0.0], dtype=torch.float64)
        nominal_score = float(full(nominal[None])[0])
    evaluations = Evaluations(cheap, search.batch, progress)
    point, history, diagnostics = beam_search(evaluations, ranges, search, clock, progress)
    point, point_score, refined = refine(full, point, ranges, scales, refinement, clock, progress)
    history += refined
    slices, record = _landscape(full, point, point_score, ranges, scales, clock)
    history.append(record)
    status, reasons = _status(point, point_score, slices, ranges, scales)
    estimate = params_to_mismatch(point)
    checks = _solver_check(solver, ckpt, y, mask, bands, step, estimate, clock) if solver_check else {}
    settings = {"solver": solver, "bands": bands, "step": step, "ranges": ranges.to_dict(),
                "search": asdict(search), "search_score": asdict(search_score),
                "refine_score": asdict(refine_score),
                "refinement": {"stages": [list(s) for s in refinement.stages],
                               "evaluations": refinement.evaluations},
                "diagnostics": diagnostics}
    return CalibrationResult(estimate, point_score, nominal_score, status, reasons, history, clock.summary(),
                             settings, slices, checks)
