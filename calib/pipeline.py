"""``calibrate``: blind estimate of (dx, dy, theta, a1, alpha) from one snapshot (or several captures of one
instrument) and the nominal mask.

Pipeline: Algorithm 1 (:mod:`calib.search`) with a cheap setting of the held-out score for every
candidate forward model, the choice of model by the held-out score in the full setting at each
model's search estimate (:mod:`calib.model_selection`; skipped when the caller names one), Algorithm 2
(:mod:`calib.refine`) with the full setting (for the chosen model, or for every candidate and a second
comparison when the first is not decisive), a last refinement on the held-out score less the noise it
carries (:mod:`calib.noise_term`; for a network solver, before its own stage), the mirror test of a1 about
the grid-aligned slope (:mod:`calib.dispersion_symmetry`), the status tests and 1-D landscape slices
through the estimate (:mod:`calib.status`, cheap setting: the slices span about a pixel, where it
resolves the landscape as the search does), and the user's solver run through the calibration forward model at
the nominal point and at the estimate (residual before / after). Only ``y`` and the nominal ``mask``
are used.

The inner solver (``solver``) decides the estimate. ``heldout`` (the default): the held-out score
throughout, as above. ``gap_tv`` (:mod:`calib.solver_score`): the held-out pipeline above chooses the forward
model and gives the starting point; from there GAP-TV's measurement residual through the chosen model ranks a
round of coordinate polishing and is the loss of Algorithm 2 (gradients through the unrolled solver). A
mask-aware network S: S reconstructs the measurement at the nominal instrument once, and every held-out
solve of the pipeline above (Algorithm 1, model selection, Algorithm 2, the noise-corrected stage, the
status tests) keeps spectra in the first principal directions of S's cube instead of the DCT cosines
(:func:`calib.network_score.network_spectral_basis`, unless they predict the held-out pixels far worse:
:func:`calib.network_score.choose_spectral_basis`); with ``network_stage`` a polish and Algorithm 2 follow on
the held-out criterion with S's cube at each candidate as prior mean, gradients through S
(:mod:`calib.network_score`; measured less accurate on the pseudo-real crops, README "Inner solver"). The
stages S decides after the held-out ones are recorded with the suffix " (solver)" in ``history`` and
``timings``. The status tests stay those of the held-out criterion (:mod:`calib.status`, whose noise model
they need), run at S's estimate: they say whether the calibrated model explains the measurement and whether
the held-out landscape pins each parameter there; one more test compares the held-out criterion's own
refined estimate with S's, and a significantly better held-out point makes the status "ambiguous"
(:func:`calib.status.solver_agreement`).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from calib.dispersion_symmetry import mirror_test
from calib.forward_model import MASK_INTERPOLATIONS, PARAMETER_NAMES, params_to_mismatch
from calib.handed_mask import read_handed_mask
from calib.instrument import instrument_operator
from calib.model_selection import CANDIDATE_MODELS, check_interpolation, search_model, select_and_refine
from calib.network_score import choose_spectral_basis, network_spectral_basis
from calib.noise_term import NoiseCorrection, correct_for_noise
from calib.ranges import Ranges, pixel_scales
from calib.refine import RefineSettings, refine
from calib.result import SOLVER_STAGE, CalibrationResult, StageClock, StageRecord
from calib.score import ScoreSettings
from calib.search import Evaluations, SearchSettings, polish_stage
from calib.solver_score import SolverScoreSettings, inner_solver
from calib.solvers import GAP_TV, HELD_OUT, Solver, check_solver_name, gap_tv_solver, network_solver, residual
from calib.status import StatusSettings, assess, solver_agreement
from calib.unshift import try_unshift
from cassi.checks import check_mask, check_measurement
from cassi.errors import UserError
from cassi.mismatch import Mismatch

# the search's 5-iteration solves need mu > 0 to converge far from their warm start; refinement
# (warm starts at the current point) keeps mu = 0, which is less biased
SEARCH_SCORE = ScoreSettings(stripes=2, rows=16, iterations=5, smooth_spectrum=1.0)
REFINE_SCORE = ScoreSettings(stripes=4, rows=24, iterations=12)
MODEL_OVERSAMPLE = (4, 2)                  # (N, K) of the enlarged-grid calibration forward model


def _check_inputs(y: Tensor, mask: Tensor, bands: int, step: int) -> tuple[Tensor, Tensor]:
    """``y`` as (M, H, W + step*(L-1)) float32 (one capture (H, W') becomes M = 1) and the mask as
    float32, or ValueError naming the wrong shape / the capture without light."""
    y, mask = torch.as_tensor(y), torch.as_tensor(mask)
    if mask.dim() != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
    expected = (mask.shape[0], mask.shape[1] + step * (bands - 1))
    if y.dim() not in (2, 3) or tuple(y.shape[-2:]) != expected or y.numel() == 0:
        raise ValueError(f"measurement must be (H, W + step*(L-1)) = {expected}, or (M, H, W + step*(L-1)) for M "
                         f"captures of one instrument, for a {tuple(mask.shape)} mask, {bands} bands and step "
                         f"{step}; got shape {tuple(y.shape)}")
    check_mask(mask)                                # before any work: a zero mask has nothing to calibrate
    y = y.reshape(-1, *expected)
    for m, capture in enumerate(y):
        check_measurement(capture, f"capture {m}" if len(y) > 1 else "measurement")
    return y.float(), mask.float()


def _check_height(height: int, solver: str, *scores: ScoreSettings) -> None:
    """ValueError unless the blind scores keep a row of every stripe between its border rows, which they leave out:
    a mask of fewer rows has no pixel to score (the refinement's steps came out NaN)."""
    border = max([s.border for s in scores] + ([SolverScoreSettings().border] if solver == GAP_TV else []))
    if height <= 2 * border:
        raise ValueError(f"the mask has {height} rows; the blind score leaves out {border} rows at each stripe edge, "
                         f"so the calibration needs at least {2 * border + 1}")


def _check_bands(bands: int, *scores: ScoreSettings) -> None:
    """ValueError unless there are bands enough to calibrate: two for a1 and alpha to move one against another, and
    the blind scores' spectral basis (:attr:`calib.score.ScoreSettings.spectral_basis`, k cosines over the band
    index) at most the band count (3 bands ended inside the search, 1 band in a ZeroDivisionError)."""
    basis = max(s.spectral_basis for s in scores)
    if bands < max(2, basis):
        why = (f"the blind score keeps each spectrum in the span of the first {basis} DCT cosines over the band index"
               if basis > 1 else "a1 and alpha move one band against another")
        raise ValueError(f"{bands} spectral band(s): the calibration needs at least {max(2, basis)} ({why})")


def _solver_check(solver_name: str, solve: Solver, y: Tensor, mask: Tensor, bands: int, step: int,
                  estimate: Mismatch, oversample: tuple[int, int], interpolation: str, clock: StageClock) -> dict:
    """Reconstruct the captures ``y`` (M, H, W') with the chosen solver through the calibration forward
    model (what operator.npz records: N, K and the mask reading ``interpolation``) at the nominal point
    and at the estimate, on the device of ``y``
    and ``mask``; measurement residuals (all captures together) before / after."""
    with clock.stage("4 solver check"):
        try:
            out = {"solver": solver_name, "oversample": list(oversample), "mask_interpolation": interpolation}
            for label, mismatch in (("nominal", None), ("calibrated", estimate)):
                op = instrument_operator(mask, bands, step, mismatch, oversample, interpolation)
                out[f"residual_{label}"] = residual(y, op, solve(y, op))
        except (ValueError, RuntimeError) as err:       # e.g. a network that does not accept this size
            out = {"solver": solver_name, "error": str(err)}
    return out


def _criterion_name(basis: dict | None) -> str:
    """What decided a held-out estimate (``settings.criterion``): the held-out CG criterion, and the network
    whose spectral directions its solves used, if any (``basis``: ``settings.spectral_basis``)."""
    if basis is None or not basis["kept"]:
        return "held-out CG"
    return f"held-out CG with the spectral directions of {basis['learned_from']}"


def calibrate(y: Tensor, mask: Tensor, solver: str = HELD_OUT, ckpt=None, bands: int = 28, step: int = 2,
              ranges: Ranges | dict | None = None, progress: bool = True,
              search: SearchSettings = SearchSettings(), refinement: RefineSettings = RefineSettings(),
              search_score: ScoreSettings = SEARCH_SCORE, refine_score: ScoreSettings = REFINE_SCORE,
              oversample: tuple[int, int] | None = None, solver_check: bool = True,
              status_settings: StatusSettings = StatusSettings(),
              device: str | torch.device = "cpu",
              models: tuple[tuple[int, int], ...] = CANDIDATE_MODELS,
              mask_interpolations: tuple[str, ...] = MASK_INTERPOLATIONS,
              noise_correction: NoiseCorrection | None = NoiseCorrection(),
              network: nn.Module | None = None, network_stage: bool = False) -> CalibrationResult:
    """Estimate the instrument mismatch from one measurement ``y`` (H, W + step*(L-1)) and the nominal
    coded ``mask`` (H, W), blind (no scene is given or used); or one instrument from M captures
    ``y`` (M, H, W + step*(L-1)) (a scene each): every stage scores the mean of the captures' held-out
    errors (:class:`calib.score.HeldOutScore`), the status tests each capture too (:mod:`calib.status`).

    ``solver``: the inner solver: "heldout" (the held-out CG criterion; GAP-TV makes the check),
    "gap_tv", or a registered mask-aware network ("bisrnet", "mst_l", ...) with ``ckpt`` (.pth, train.py
    .ckpt or release folder); it decides the estimate (see the module docstring) and reconstructs with the
    nominal and the calibrated operator (``result.checks``).
    ``ranges``: :class:`Ranges` or a dict name -> (lo, hi). ``oversample``: (N, K) of the calibration
    forward model (:mod:`calib.forward_model`; (1, 1) is the native-grid operator), or None (the
    default): the data choose among ``models`` (:mod:`calib.model_selection`; the record is
    ``result.settings["model_selection"]``, the chosen model ``result.settings["oversample"]``).
    ``mask_interpolations``: how the native grid may read the mask between pixels; when the native
    grid is chosen it is refined under each (:func:`calib.model_selection.check_interpolation`: the
    better held-out score is kept, ``result.settings["model_selection"]["interpolation"]`` records both,
    estimates that differ by more than 0.1 pixel units make the status "ambiguous"); ("linear",): no check.
    ``network``: a network ``solver``'s weights already loaded from ``ckpt`` (:func:`calib.solvers.load_network`:
    calibrations of several captures share one load); None: loaded here. ``network_stage``: a network ``solver``
    also polishes and refines with its cube as the held-out solves' prior mean (module docstring;
    ``result.settings["network_stage"]``); other solvers refuse it.
    ``solver_check``: run that reconstruction (off: ``result.checks`` is empty).
    ``noise_correction``: the last refinement on the noise-corrected score (:class:`NoiseCorrection`; None:
    none; the record is ``result.settings["noise_correction"]``).
    ``status_settings``: how ``result.status`` is decided (:mod:`calib.status`). ``device``: where
    the forward model, the score's solves and the solver check run (torch ops; on the CPU the
    placement sums are numba kernels); the search and refinement bookkeeping stays on the CPU.
    The handed ``mask`` is first tested for a binary code resampled at one sub-pixel phase
    (:mod:`calib.handed_mask`, ``result.settings["handed_mask"]``); if it is one, the code is calibrated and
    the estimate is given for the handed mask. When the native grid's two mask readings disagree, the handed
    mask un-shifted by a bilinear phase is tried as a further, gated reading (:mod:`calib.unshift`), composed
    back the same way when kept.
    Returns a :class:`CalibrationResult`.
    """
    y, mask = _check_inputs(y, mask, bands, step)
    _check_height(mask.shape[0], solver, search_score, refine_score)
    _check_bands(bands, search_score, refine_score)
    device = torch.device(device)
    y, mask = y.to(device), mask.to(device)
    ranges = Ranges.from_dict(ranges) if isinstance(ranges, dict) else (ranges or Ranges())
    clock = StageClock()
    with clock.stage("0 handed mask"):           # a resampled binary code: calibrate with the code itself
        handed = read_handed_mask(mask)
        mask, ranges = (handed.code.to(device) if handed.detected else mask), handed.code_ranges(ranges)
    scales = pixel_scales(*mask.shape, bands, step)
    with clock.stage("0 solver load"):
        check_solver_name(solver)                # a misspelt name is said as such, not as a joint-fit refusal
        if solver != HELD_OUT and y.shape[0] > 1:
            raise UserError(f"--solver {solver} calibrates from one capture; several captures are fitted jointly "
                            f"with the held-out criterion only (--solver {HELD_OUT})")
        inner = inner_solver(solver, ckpt, y[0], mask, bands, step, network)  # a bad solver fails here
        if network_stage and (inner is None or inner.network is None):
            raise UserError(f"--network-stage is only used with a network solver, not {solver}")
    basis_record = None
    if inner is not None and inner.network is not None and refine_score.spectral_basis:
        with clock.stage("0 spectral basis"):       # the held-out solves keep spectra in the network's directions
            learned = network_spectral_basis(inner.network, solver, y[0], mask, bands, step)
            kept, basis_record = choose_spectral_basis(learned, y, mask, bands, step, refine_score,
                                                       status_settings.z, status_settings.blocks)
        if kept:
            search_score, refine_score = (s.with_(learned_basis=learned) for s in (search_score, refine_score))
    candidates = [tuple(oversample)] if oversample is not None else [tuple(m) for m in models]
    fits = [search_model(y, mask, bands, step, model, ranges, search, search_score, refine_score,
                         status_settings.blocks, progress, compare=len(candidates) > 1) for model in candidates]
    chosen, selection, selection_reasons = select_and_refine(fits, ranges, scales, refinement, status_settings.z,
                                                             status_settings.blocks, progress)
    chosen, other, interpolation, reasons = check_interpolation(chosen, y, mask, bands, step, ranges, scales,
                                                                refinement, status_settings.z, status_settings.blocks,
                                                                progress, mask_interpolations)
    if interpolation is not None:
        selection = {**selection, "interpolation": interpolation}
    plain = chosen
    if reasons:             # the readings disagree: the handed mask is a resampled image; try it un-shifted
        unshifted, reading = try_unshift(chosen, other, y, mask, bands, step, ranges, scales, refinement,
                                         status_settings.blocks)
        handed = handed.with_unshift(reading)
        if unshifted is not None:               # from here on in the un-shifted mask's frame
            chosen, reasons, selection = unshifted, [], handed.into_code_frame(selection)
            mask, ranges = handed.code, handed.code_ranges(ranges)
    selection_reasons += reasons
    for fit in {id(f): f for f in fits + [other, plain, chosen] if f is not None}.values():
        if fit is plain:
            suffix = ""
        elif fit is chosen:                                 # the handed mask un-shifted
            suffix = " (un-shifted mask)"
        elif fit.oversample == chosen.oversample:           # the same model, the mask read another way
            suffix = f" ({fit.interpolation} mask)"
        else:
            suffix = f" (N={fit.oversample[0]}, K={fit.oversample[1]})"
        clock.merge(fit.clock, suffix)
    oversample, full, evaluations = chosen.oversample, chosen.full, chosen.evaluations
    point, point_score, history, diagnostics = chosen.point, chosen.point_score, chosen.history, chosen.diagnostics
    nominal_parts = chosen.nominal_parts
    nominal_score = float(nominal_parts.sum())
    noise_record = None
    if noise_correction is not None:    # the held-out criterion less its noise term (S's start, if any)
        with clock.stage("2F noise-corrected"):
            point, noise_record = correct_for_noise(y, mask, bands, step, full.settings, point, ranges, scales,
                                                    noise_correction)
            full.set_reference(point[None])       # the plain score there, by the criterion of the nominal score
            point_score = float(full(point[None])[0])
        wall, cpu = clock.last("2F noise-corrected")
        history.append(StageRecord("2F noise-corrected", params_to_mismatch(point).to_dict(), point_score,
                                   sum(e["evaluations"] for e in noise_record["steps"]) + 1, wall, cpu,
                                   noise_record["steps"]))
    with clock.stage("2M mirror test"):     # a1 in one of two mirror-image minima about a1 = step?
        point, mirror_record = mirror_test(full, point, step, ranges, scales, status_settings.z,
                                            status_settings.blocks)
        if "profile" in mirror_record:      # the test moved the warm starts: back to the estimate
            full.set_reference(point[None])
            point_score = float(full(point[None])[0])
    wall, cpu = clock.last("2M mirror test")
    history.append(StageRecord("2M mirror test", params_to_mismatch(point).to_dict(), point_score,
                               mirror_record.get("evaluations", 0), wall, cpu))
    criterion, heldout_point = None, None
    if inner is not None and (inner.network is None or network_stage):   # S decides from the held-out estimate
        heldout_point = point.clone()
        criterion = inner.criterion(y[0], mask, bands, step, full.settings, point[None])
        with clock.stage("0 solver nominal"):
            nominal_score = float(criterion(torch.tensor([[0.0, 0.0, 0.0, float(step), 0.0]],
                                                         dtype=torch.float64))[0])
        point, record = polish_stage(Evaluations(criterion, search.batch, progress), point, ranges, search, clock,
                                     "1e polish" + SOLVER_STAGE)
        own = StageClock()              # S's refinement stages, named apart from the held-out ones they repeat
        point, point_score, refined = refine(criterion, point, ranges, scales, refinement, own, progress)
        clock.merge(own, SOLVER_STAGE)
        for stage in refined:
            stage.name += SOLVER_STAGE
        history += [record, *refined]
    with clock.stage("3 status"):
        if criterion is not None:                       # the held-out tests' warm starts move to the estimate
            full.set_reference(point[None])
        assessment = assess(chosen.cheap, full, y, mask, point, ranges, scales, status_settings, nominal_parts,
                            heldout_point)
        if criterion is not None and assessment.status != "failed":
            # the plain criterion's own minimum, or where the mirror test put a1 (its wells are the cusp's)
            own = heldout_point if mirror_record["applied"] else chosen.point
            solver_agreement(full, point, own, scales, assessment, status_settings)
    if assessment.status == "ok" and selection_reasons:
        assessment.status = "ambiguous"
    if assessment.status != "failed":
        assessment.reasons += selection_reasons
    wall, cpu = clock.last("3 status")
    history.append(StageRecord("3 status", params_to_mismatch(point).to_dict(), assessment.centre_score,
                               assessment.evaluations, wall, cpu))
    estimate = params_to_mismatch(point)
    checks = {}
    if solver_check:
        solve = gap_tv_solver() if inner is None or inner.network is None else network_solver(inner.network)
        checks = _solver_check(GAP_TV if solver == HELD_OUT else solver, solve, y, mask, bands, step, estimate,
                               oversample, chosen.interpolation, clock)
    settings = {"solver": solver, "ckpt": None if ckpt is None else str(Path(ckpt).resolve()),
                "criterion": _criterion_name(basis_record) if criterion is None else criterion.describe(),
                "network_stage": criterion is not None and inner.network is not None,
                "bands": bands, "step": step, "ranges": ranges.to_dict(),
                "oversample": list(oversample), "mask_interpolation": chosen.interpolation,
                "model_selection": selection, "device": str(device),
                "captures": int(y.shape[0]),
                "search": asdict(search), "search_score": chosen.cheap.settings.record(),
                "refine_score": full.settings.record(),
                "refinement": asdict(refinement), "status": asdict(status_settings),
                "noise_correction": noise_record, "mirror_test": mirror_record, "spectral_basis": basis_record,
                "diagnostics": diagnostics}
    log = [{"stage": stage, "point": dict(zip(PARAMETER_NAMES, point)), "score": value}
           for stage, point, value in evaluations.log]
    return handed.to_handed_frame(CalibrationResult(estimate, point_score, nominal_score, assessment.status,
                                                    assessment.reasons, history, clock.summary(), settings,
                                                    assessment.landscape, checks, log, assessment.tests))
