"""``calibrate``: blind estimate of (dx, dy, theta, a1, alpha) from one snapshot and the nominal mask.

Pipeline: Algorithm 1 (:mod:`calib.search`) with a cheap setting of the held-out score, Algorithm 2
(:mod:`calib.refine`) with the full setting, 1-D landscape slices through the estimate (cheap
setting: the slices span about a pixel, where it resolves the landscape as the search does), a
status check, and the user's solver run with the nominal and the calibrated operator (residual before /
after). Only ``y`` and the nominal ``mask`` are used.
"""
from __future__ import annotations

import math
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
from cassi.checks import check_mask, check_measurement
from cassi.mismatch import Mismatch
from cassi.operator import CassiOperator

# the search's 5-iteration solves need mu > 0 to converge far from their warm start; refinement
# (warm starts at the current point) keeps mu = 0, which is less biased
SEARCH_SCORE = ScoreSettings(stripes=2, rows=16, iterations=5, smooth_spectrum=1.0)
REFINE_SCORE = ScoreSettings(stripes=4, rows=24, iterations=12)
SLICE_POINTS = (-1.0, 1.0)                # landscape slices, in pixel units (see pixel_scales)
SLICE_MAX_FRACTION = 0.4                   # ... but at most this fraction of the parameter's range
FLAT_RISE = 0.005                          # smallest score rise at the slice ends of a trusted parameter
EDGE_FRACTION = 0.02                       # estimate within 2 % of the range width of an edge
MIN_MASK_CONTRAST = 0.01                   # std / mean over the mask's open area below which it has no code


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


def slice_steps(ranges: Ranges, scales: Tensor) -> Tensor:
    """Half-widths (5,) of the landscape slices: one pixel unit, capped at a fraction of the range."""
    width = ranges.bounds()[:, 1] - ranges.bounds()[:, 0]
    return torch.minimum(scales, SLICE_MAX_FRACTION * width)


def _landscape(score: HeldOutScore, point: Tensor, centre_score: float, steps: Tensor, clock: StageClock
               ) -> tuple[dict, StageRecord]:
    """Scores on 1-D slices through ``point``; a slice point outside the range mirrors to the other side."""
    name = "3 landscape"
    with clock.stage(name):
        score.set_reference(point[None])
        offsets = torch.tensor(SLICE_POINTS, dtype=torch.float64)
        probes = point.repeat(5 * len(offsets), 1)
        for i in range(5):
            probes[i * len(offsets):(i + 1) * len(offsets), i] += offsets * steps[i]
        values = score(probes).view(5, len(offsets))
    slices = {}
    for i, n in enumerate(PARAMETER_NAMES):
        xs = [*probes[i * len(offsets):(i + 1) * len(offsets), i].tolist(), float(point[i])]
        vs = [*values[i].tolist(), centre_score]
        order = sorted(range(len(xs)), key=xs.__getitem__)
        slices[n] = {"values": [xs[k] for k in order], "scores": [vs[k] for k in order]}
    wall, cpu = clock.last(name)
    return slices, StageRecord(name, params_to_mismatch(point).to_dict(), centre_score, probes.shape[0], wall, cpu)


def _status(point: Tensor, point_score: float, slices: dict, ranges: Ranges, steps: Tensor
            ) -> tuple[str, list[str]]:
    if not (torch.isfinite(point).all() and math.isfinite(point_score)):
        return "failed", ["the score or the estimate is not finite"]
    reasons = []
    for i, n in enumerate(PARAMETER_NAMES):
        s = slices[n]
        ends = [v for x, v in zip(s["values"], s["scores"]) if abs(x - float(point[i])) > 0.5 * float(steps[i])]
        rise = (min(ends) - point_score) / point_score
        if rise < FLAT_RISE:
            reasons.append(f"flat landscape in {n}: the score rises only {100 * rise:.2f} % at "
                           f"+-{float(steps[i]):.3g} from the estimate (needs {100 * FLAT_RISE:.1f} %)")
    bounds = ranges.bounds()
    for i, n in enumerate(PARAMETER_NAMES):
        lo, hi = float(bounds[i, 0]), float(bounds[i, 1])
        margin = EDGE_FRACTION * (hi - lo)
        if float(point[i]) <= lo + margin or float(point[i]) >= hi - margin:
            reasons.append(f"{n} = {float(point[i]):.4g} is at the edge of its search range [{lo:g}, {hi:g}]")
    return ("ambiguous" if reasons else "ok"), reasons


def mask_structure_reasons(mask: Tensor) -> list[str]:
    """Why the mask cannot pin the warp: [] for a coded mask; a reason for one that is uniform over
    the bounding box of its open pixels (an open aperture: only its outline moves with dx, dy, theta)."""
    rows, cols = (mask > 0).any(1).nonzero(), (mask > 0).any(0).nonzero()
    if rows.numel() == 0:
        return ["the mask is zero everywhere"]
    box = mask[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]
    contrast = float(box.std() / box.mean()) if box.numel() > 1 else 0.0
    if contrast < MIN_MASK_CONTRAST:
        return [f"the mask has no code: std / mean = {contrast:.2g} over its open area (needs {MIN_MASK_CONTRAST:g}); "
                "dx, dy and theta are then pinned by its outline alone"]
    return []


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
              oversample: tuple[int, int] = (4, 2), solver_check: bool = True) -> CalibrationResult:
    """Estimate the instrument mismatch from one measurement ``y`` (H, W + step*(L-1)) and the nominal
    coded ``mask`` (H, W), blind (no scene is given or used).

    ``solver``: "gap_tv" or "mst_s" / "mst_m" / "mst_l" with ``ckpt`` (toolbox .pth or release folder),
    used to reconstruct with the nominal and the calibrated operator (``result.checks``).
    ``ranges``: :class:`Ranges` or a dict name -> (lo, hi). ``oversample``: (N, K) of the calibration
    forward model (:mod:`calib.forward_model`); (1, 1) is the native-grid operator, for data made with
    it. Returns a :class:`CalibrationResult`.
    """
    y, mask = _check_inputs(y, mask, bands, step)
    ranges = Ranges.from_dict(ranges) if isinstance(ranges, dict) else (ranges or Ranges())
    if solver != "gap_tv" or ckpt is not None:
        load_solver(solver, ckpt)                       # fail early on a bad solver / checkpoint
    clock = StageClock()
    scales = pixel_scales(*mask.shape, bands, step)
    search_score = search_score.with_(spatial=oversample[0], spectral=oversample[1])
    refine_score = refine_score.with_(spatial=oversample[0], spectral=oversample[1])
    with clock.stage("0 setup"):
        cheap = HeldOutScore(y, mask, bands, step, search_score)
        full = HeldOutScore(y, mask, bands, step, refine_score)
        nominal = torch.tensor([0.0, 0.0, 0.0, float(step), 0.0], dtype=torch.float64)
        nominal_score = float(full(nominal[None])[0])
    evaluations = Evaluations(cheap, search.batch, progress)
    point, history, diagnostics = beam_search(evaluations, ranges, search, clock, progress)
    point, point_score, refined = refine(full, point, ranges, scales, refinement, clock, progress)
    history += refined
    steps = slice_steps(ranges, scales)
    with clock.stage("3 landscape"):
        cheap.set_reference(point[None])
        centre_score = float(cheap(point[None])[0])
    slices, record = _landscape(cheap, point, centre_score, steps, clock)
    history.append(record)
    status, reasons = _status(point, centre_score, slices, ranges, steps)
    structure = mask_structure_reasons(mask)
    if structure and status == "ok":
        status = "ambiguous"
    reasons = structure + reasons
    estimate = params_to_mismatch(point)
    checks = _solver_check(solver, ckpt, y, mask, bands, step, estimate, clock) if solver_check else {}
    settings = {"solver": solver, "bands": bands, "step": step, "ranges": ranges.to_dict(),
                "oversample": list(oversample),
                "search": asdict(search), "search_score": asdict(search_score),
                "refine_score": asdict(refine_score),
                "refinement": asdict(refinement),
                "diagnostics": diagnostics}
    log = [{"stage": stage, "point": dict(zip(PARAMETER_NAMES, point)), "score": value}
           for stage, point, value in evaluations.log]
    return CalibrationResult(estimate, point_score, nominal_score, status, reasons, history, clock.summary(),
                             settings, slices, checks, log)
