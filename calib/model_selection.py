"""Forward-model selection by the data (issue 12, section 1): which calibration forward model (N, K)
explains the measurement, decided by the blind held-out criterion itself.

Every candidate model runs the beam search (Algorithm 1, the criterion's search setting); each search
estimate is then scored in the refinement setting with the warm starts solved at it. The scores of two
models are comparable: the same stripes, split, prior and held-out pixels, only the operator differs;
the margin is measured in the criterion's own standard errors (paired block scores, :mod:`calib.status`).
When the best model leads by more than :data:`DECISIVE` standard errors, only it is refined (Algorithm
2): the native model's search (28 placements per candidate) costs about a quarter of the enlarged
model's, so selection adds about that much. Otherwise every candidate is refined and the refined
estimates are compared the same way: on real TSA capture 1 the native model led at the search
estimates by 2.1 standard errors (0.00167 vs 0.00182) while refinement took the enlarged model to
0.00121 and the native one to 0.00139.

Candidates (:data:`CANDIDATE_MODELS`): the native grid (N = K = 1: a band lands at one integer
offset, as in the KAIST snapshots and the toolbox simulators) and the enlarged grid (N = 4, K = 2:
continuous dispersion and area-sampled sub-pixel mask shifts, as in :mod:`cassi.simulator`).

The native grid's mask interpolation is a second assumption (:data:`calib.forward_model.MASK_INTERPOLATIONS`;
the enlarged grid's is pinned): bilinear is exact for a sharp mask displaced by a fraction of a pixel
(area weights), but a handed mask that is itself a resampled image is blurred again by a bilinear
re-reading, by an amount that depends on the fraction, and the fit is pulled towards integer shifts
(KAIST snapshot 01, mask handed over bilinearly warped by (0.6, -1.4) px: +0.21 / +0.16 px along the dx
/ dy slices through the truth; the same mask handed over by an exact (Fourier) shift and modelled so:
+0.01 / 0.00). :func:`check_interpolation` refines the chosen native model again with the mask read by
Keys' cubic convolution, keeps the estimate that predicts the held-out pixels better (beyond the
noise; bilinear otherwise), and says
"ambiguous" when the two estimates differ by more than :data:`AGREEMENT` pixel units, or by more than a
quarter of that when the cubic reading wins: the sub-pixel estimate then rests on an assumption the data
do not settle (neither kernel is exact for a resampled mask: cubic still leaves +0.13 / +0.10 px along
those slices, and the refined cubic estimate 0.21-0.31 px in dx on snapshots 01-03).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from calib.forward_model import MASK_INTERPOLATIONS, params_to_mismatch
from calib.ranges import Ranges
from calib.refine import RefineSettings, refine
from calib.result import StageClock, StageRecord
from calib.score import HeldOutScore, ScoreSettings
from calib.search import Evaluations, SearchSettings, beam_search
from calib.status import relative_difference

CANDIDATE_MODELS: tuple[tuple[int, int], ...] = ((1, 1), (4, 2))
AGREEMENT = 0.1          # estimates closer than this (pixel units, every parameter) agree
# when the data prefer the cubic reading (the mask is a resampled image), estimates that differ by more
# than this fraction of AGREEMENT make the status "ambiguous": on KAIST snapshots 01-03 with the mask
# handed over bilinearly warped by (0.6, -1.4) px the readings differed by only 0.08-0.12 pixel units
# while the cubic estimate stayed 0.21-0.31 px off in dx (README "Forward-model selection")
RESAMPLED_AGREEMENT = 0.25
DECISIVE = 4.0           # a lead at the search estimates beyond this many standard errors: refine only the best


NATIVE = (1, 1)


@dataclass
class ModelFit:
    """One candidate model: its criterion in the search and refinement settings, its estimate (the
    search's, then refined), and the refinement-setting block scores at the nominal point and at the
    estimate (``parts``, once compared)."""

    oversample: tuple[int, int]
    cheap: HeldOutScore
    full: HeldOutScore
    evaluations: Evaluations
    point: Tensor
    history: list[StageRecord]
    diagnostics: dict
    nominal_parts: Tensor
    clock: StageClock
    parts: Tensor | None = None
    point_score: float = math.nan
    interpolation: str = "linear"

    @property
    def score(self) -> float:
        return float(self.parts.sum())


def search_model(y: Tensor, mask: Tensor, bands: int, step: int, oversample: tuple[int, int], ranges: Ranges,
                 search: SearchSettings, search_score: ScoreSettings, refine_score: ScoreSettings, blocks: int,
                 progress: bool, compare: bool) -> ModelFit:
    """Set up the criterion for the model ``oversample`` (N, K), score the nominal point (refinement
    setting, ``blocks`` column blocks) and run the beam search; with ``compare`` also score the search
    estimate in the refinement setting (warm starts solved there), for :func:`choose`."""
    n, k = oversample
    clock = StageClock()
    with clock.stage("0 setup"):
        cheap = HeldOutScore(y, mask, bands, step, search_score.with_(spatial=n, spectral=k))
        full = HeldOutScore(y, mask, bands, step, refine_score.with_(spatial=n, spectral=k))
        nominal = torch.tensor([0.0, 0.0, 0.0, float(step), 0.0], dtype=torch.float64)
        nominal_parts = full.block_scores(nominal[None], blocks)[0]
    evaluations = Evaluations(cheap, search.batch, progress)
    point, history, diagnostics = beam_search(evaluations, ranges, search, clock, progress)
    fit = ModelFit(oversample, cheap, full, evaluations, point, history, diagnostics, nominal_parts, clock)
    if compare:
        score_estimate(fit, "1f model score", blocks)
    return fit


def score_estimate(fit: ModelFit, stage: str, blocks: int) -> None:
    """The refinement-setting block scores of ``fit`` at its current estimate, warm starts solved there."""
    with fit.clock.stage(stage):
        fit.full.set_reference(fit.point[None])
        fit.parts = fit.full.block_scores(fit.point[None], blocks)[0]


def refine_fit(fit: ModelFit, ranges: Ranges, scales: Tensor, settings: RefineSettings, progress: bool) -> None:
    """Algorithm 2 from the search estimate of ``fit``, in place (its point, score, history, clock)."""
    fit.point, fit.point_score, refined = refine(fit.full, fit.point, ranges, scales, settings, fit.clock, progress)
    fit.history = fit.history + refined


def select_and_refine(fits: list[ModelFit], ranges: Ranges, scales: Tensor, settings: RefineSettings, z: float,
                      blocks: int, progress: bool) -> tuple[ModelFit, dict, list[str]]:
    """Choose among the searched ``fits`` (:func:`choose`) and refine: only the best when it leads by
    more than :data:`DECISIVE` standard errors (or is the only one), else all of them, then choose again
    at the refined estimates. Returns the chosen fit (refined), the record and the reasons of
    :func:`choose` (the record of the search-estimate comparison under "search" when all were refined)."""
    chosen, record, reasons = choose(fits, scales, z)
    if len(fits) == 1:
        refine_fit(chosen, ranges, scales, settings, progress)
        return chosen, record, reasons
    if record["margin_in_standard_errors"] > DECISIVE:
        refine_fit(chosen, ranges, scales, settings, progress)
        return chosen, {**record, "compared_at": "search estimates"}, reasons
    for fit in fits:
        refine_fit(fit, ranges, scales, settings, progress)
        score_estimate(fit, "2E model score", blocks)
    chosen, refined, reasons = choose(fits, scales, z)
    return chosen, {**refined, "compared_at": "refined estimates", "search": record}, reasons


def choose(fits: list[ModelFit], scales: Tensor, z: float) -> tuple[ModelFit, dict, list[str]]:
    """The model whose estimate predicts the held-out pixels best; the record for
    calibration.json and the "ambiguous" reasons (none when one model fits, or the choice is beyond
    ``z`` standard errors, or the models' estimates agree within :data:`AGREEMENT` pixel units)."""
    if len(fits) == 1:
        fit = fits[0]
        return fit, {"mode": "explicit", "chosen": list(fit.oversample)}, []
    ranked = sorted(fits, key=lambda f: f.score)
    best, runner_up = ranked[0], ranked[1]
    margin, se = relative_difference(runner_up.parts, best.parts)
    candidates = []
    for fit in fits:
        wall, cpu = sum(fit.clock.wall.values()), sum(fit.clock.cpu.values())
        candidates.append({"oversample": list(fit.oversample), "score": fit.score,
                           "nominal_score": float(fit.nominal_parts.sum()),
                           "estimate": params_to_mismatch(fit.point).to_dict(),
                           "seconds": round(wall, 3), "cpu_seconds": round(cpu, 3)})
    resolved = margin > z * se
    spread = ((best.point - runner_up.point).abs() / scales).max().item()
    record = {"mode": "auto", "candidates": candidates, "chosen": list(best.oversample),
              "runner_up": list(runner_up.oversample), "relative_margin": margin, "standard_error": se,
              "margin_in_standard_errors": margin / se if se > 0 else float("inf"), "resolved": resolved,
              "estimate_spread_pixel_units": spread}
    reasons = []
    if not resolved and spread > AGREEMENT:
        name = ", ".join(f"N={f.oversample[0]}, K={f.oversample[1]}" for f in (best, runner_up))
        reasons.append(f"the data do not decide the forward model: {name} predict the held-out pixels equally "
                       f"well ({100 * margin:.1f} % +- {100 * se:.1f} %, needs more than {z:g} standard errors) "
                       f"and their estimates differ by {spread:.2f} pixel units")
    return best, record, reasons


def check_interpolation(chosen: ModelFit, y: Tensor, mask: Tensor, bands: int, step: int, ranges: Ranges,
                        scales: Tensor, settings: RefineSettings, z: float, blocks: int, progress: bool,
                        interpolations: tuple[str, ...] = MASK_INTERPOLATIONS
                        ) -> tuple[ModelFit, ModelFit | None, dict | None, list[str]]:
    """For a native-grid ``chosen`` fit (refined, mask read bilinearly): refine again from its estimate
    with the mask read by each other interpolation in ``interpolations``, compare the refined estimates
    by their held-out block scores (paired, as :func:`choose`) and keep the other one only when it predicts
    better by more than ``z`` standard errors (the bilinear reading is exact for a sharp mask).

    Returns (the kept fit, the other fit or None, the record for ``settings.model_selection["interpolation"]``
    or None when nothing was checked, "ambiguous" reasons: one when the estimates differ by more than
    :data:`AGREEMENT` pixel units, or by more than :data:`RESAMPLED_AGREEMENT` of that when the other
    reading predicts better -- then the mask is a resampled image, exact under neither kernel, and the
    better score does not make its estimate right to that precision)."""
    others = [name for name in interpolations if name != chosen.interpolation]
    if chosen.oversample != NATIVE or not others:
        return chosen, None, None, []
    if len(others) > 1:
        raise ValueError(f"one alternative mask interpolation is checked, got {others}")
    score_estimate(chosen, "2E interpolation score", blocks)
    clock = StageClock()
    with clock.stage("0 setup"):
        cheap = HeldOutScore(y, mask, bands, step, chosen.cheap.settings.with_(interpolation=others[0]))
        full = HeldOutScore(y, mask, bands, step, chosen.full.settings.with_(interpolation=others[0]))
    other = ModelFit(chosen.oversample, cheap, full, chosen.evaluations, chosen.point.clone(), list(chosen.history),
                     chosen.diagnostics, chosen.nominal_parts, clock, interpolation=others[0])
    refine_fit(other, ranges, scales, settings, progress)
    score_estimate(other, "2E interpolation score", blocks)
    margin, se = relative_difference(chosen.parts, other.parts)            # > 0: the other predicts better
    best, runner_up = (other, chosen) if margin > z * se else (chosen, other)
    margin, se = relative_difference(runner_up.parts, best.parts)
    spread = ((chosen.point - other.point).abs() / scales).max().item()
    record = {"candidates": [{"interpolation": f.interpolation, "score": f.score,
                              "estimate": params_to_mismatch(f.point).to_dict()} for f in (chosen, other)],
              "chosen": best.interpolation, "relative_margin": margin, "standard_error": se,
              "margin_in_standard_errors": margin / se if se > 0 else float("inf"), "resolved": margin > z * se,
              "estimate_spread_pixel_units": spread,
              "cpu_seconds": round(sum(clock.cpu.values()), 3)}
    resampled = best is other                   # the data reject the sharp mask read bilinearly
    limit = AGREEMENT * RESAMPLED_AGREEMENT if resampled else AGREEMENT
    reasons = []
    if spread > limit:
        estimates = "; ".join(f"{f.interpolation}: " + ", ".join(
            f"{k} {v:+.3f}" for k, v in params_to_mismatch(f.point).to_dict().items()) for f in (chosen, other))
        why = (f"{best.interpolation} predicts the held-out pixels better ({100 * margin:.1f} % +- {100 * se:.1f} %): "
               "the mask is not a sharp pattern read with area weights, the one case the native grid models "
               "exactly, and a resampled mask is exact under neither reading" if resampled else
               f"the two readings predict the held-out pixels equally well ({100 * margin:.1f} % +- {100 * se:.1f} %)")
        reasons.append(f"the sub-pixel estimate depends on how the mask is read between its pixels ({estimates}): "
                       f"they differ by {spread:.3f} pixel units, more than {limit:g}; {why}")
    return best, runner_up, record, reasons
