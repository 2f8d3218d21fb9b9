"""The handed mask un-shifted by a bilinear phase: a gated further reading on the native grid.

A mask handed over shifted by a fraction of a pixel with bilinear interpolation is blurred by a 2-tap
filter per axis, handed(o) = (1 - f) B(o) + f B(o + 1), i.e. handed = ``warp_mask(B, -fx, -fy)``; read
bilinearly (or cubically) again it pulls the sub-pixel estimate towards whole pixels (README,
"Forward-model selection (issue 12 §1)"). When the native grid is chosen and the two readings of
:func:`calib.model_selection.check_interpolation` disagree (the evidence that the handed mask is a
resampled image), :func:`try_unshift` tries the handed mask deconvolved by the filter of a trial phase
(:func:`unshift_mask`: a recursion per axis in its stable direction) as a further reading:

1. the phase is chosen blindly by the held-out score: a compass search over the estimate's sub-pixel
   (dx, dy) (steps :data:`STEPS`), seeded at the better plain reading's estimate, each candidate scored
   once (the criterion's refinement setting with the plain reading's prior weights, its warm starts
   re-solved there from the plain ones in :data:`WARM_ITERATIONS` steps) at the whole-pixel point of the
   un-shifted mask ξ_B = ξ - (fx, fy) -- at the true phase ξ_B is a whole shift (KAIST snapshot 01: scores
   of phases 0.05 apart differ by 5-16 %, the same minimum after 15 or 40 steps; the search setting put
   one axis 0.02-0.04 px low on snapshots 02-05);
2. refused near phase 1/2 per axis (:data:`PHASE_REFUSE`: the filter has a zero there), and when the
   un-shifted mask leaves the handed mask's value range by more than :data:`OVERSHOOT` of its maximum
   (inside its support less the rows where the recursion's start value still rings): deconvolution at a
   wrong phase, or of a mask that was never shifted, overshoots;
3. otherwise one refinement (Algorithm 2) with the un-shifted mask from that point; the reading is kept
   only when its held-out score beats both plain readings by more than :data:`MARGIN` standard errors
   (paired block scores, as the other model choices).

Kept: the calibration continues with the un-shifted mask (status, solver check) and the estimate is
composed back into the handed mask's frame by :class:`calib.handed_mask.HandedMask` (ξ = ξ_B + (fx, fy)
in dx, dy), as for a detected binary code; ``settings.handed_mask`` records the search, the gate's numbers
and the decision either way.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from calib.handed_mask import HandedMask, nearest_frame
from calib.model_selection import ModelFit, refine_fit, score_estimate
from calib.ranges import Ranges
from calib.refine import RefineSettings
from calib.result import StageClock
from calib.search import Evaluations
from calib.status import relative_difference, same_prior, score_like

STEPS = (0.1, 0.05, 0.025)     # compass-search steps (px) of the phase, coarse to fine
PHASE_REFUSE = 0.05            # a phase within this of 1/2 on either axis is refused (the filter's zero)
OVERSHOOT = 0.1                # of the handed mask's maximum: the un-shifted mask's excess beyond its range
RINGING = 0.01                 # rows left out of the overshoot test until the start value's error decays below this
MARGIN = 4.0                   # standard errors by which the un-shifted reading must beat both plain readings
WARM_ITERATIONS = 15           # CG steps re-solving the warm starts for a candidate phase
MOVES = 8                      # compass moves per step size at most


def unshift_mask(handed: Tensor, fy: float, fx: float) -> tuple[Tensor, tuple[float, float]]:
    """The mask B (H, W) with ``handed = warp_mask(B, -fx, -fy)`` for a phase (fy, fx) in [0, 1)^2 px, and
    that phase in [-1/2, 1/2)^2 (B's frame the one nearest the handed mask's, as :mod:`calib.handed_mask`).
    Per axis (1 - f) B[i] + f B[i + 1] = handed[i] is solved by recursion in its stable direction: from the
    first row forwards for f >= 1/2, from the last backwards otherwise, started at the edge value."""
    m = torch.as_tensor(handed).detach().to("cpu", torch.float64).numpy()
    code, phase = nearest_frame(_unshift_axis(_unshift_axis(m, fy).T, fx).T, fy, fx)     # from (H + 1, W + 1)
    return torch.from_numpy(code).float(), phase


def _unshift_axis(h: np.ndarray, f: float) -> np.ndarray:
    """m (n + 1, ...) with (1 - f) m[i] + f m[i + 1] = h[i] for h (n, ...)."""
    n = h.shape[0]
    m = np.zeros((n + 1,) + h.shape[1:])
    if f >= 0.5:
        m[0] = h[0]
        for i in range(n):
            m[i + 1] = (h[i] - (1 - f) * m[i]) / f
    else:
        m[n] = h[n - 1]
        for i in range(n - 1, -1, -1):
            m[i] = (h[i] - f * m[i + 1]) / (1 - f)
    return m


def ringing_margin(f: float) -> int:
    """Rows (or columns) the overshoot test leaves out at each end of the mask's support for phase ``f``: where an
    error of the recursion's start value still exceeds :data:`RINGING`, and two more."""
    ratio = min(f % 1, 1 - f % 1) / max(f % 1, 1 - f % 1)
    return 2 + (math.ceil(math.log(RINGING) / math.log(ratio)) if 0 < ratio < 1 else 0)


def range_refusal(handed: Tensor, unshifted: Tensor, fy: float, fx: float) -> tuple[float, str | None]:
    """:func:`overshoot` of ``unshifted`` and the reason to refuse it (None: within :data:`OVERSHOOT`); a mask too
    small to leave any pixel for the test is refused saying so."""
    excess = overshoot(handed, unshifted, fy, fx)
    if math.isinf(excess):
        rows, cols = ringing_margin(fy), ringing_margin(fx)
        return excess, (f"the mask is too small to check the un-shifted mask against the handed mask's value "
                        f"range: at this phase the check leaves out {rows} rows "
                        f"and {cols} columns at each end of its support (where the un-shifting still rings), and no "
                        "pixel remains")
    if excess <= OVERSHOOT:
        return excess, None
    return excess, (f"the un-shifted mask leaves the handed mask's value range by {excess:.3g} of its maximum "
                    f"(more than {OVERSHOOT}): not a mask resampled at this phase")


def overshoot(handed: Tensor, unshifted: Tensor, fy: float, fx: float) -> float:
    """max excess of ``unshifted`` beyond [min, max] of ``handed``, over its maximum, inside the handed
    mask's support less, per axis, the rows where an error of the recursion's start value still exceeds
    :data:`RINGING` (it decays by min(f, 1 - f) / max(f, 1 - f) per row) and two more at the far end; inf
    when nothing is left."""
    h = torch.as_tensor(handed).double()
    b = torch.as_tensor(unshifted).double()
    top, low = float(h.max()), float(h.min())
    box = []
    for axis, f in ((0, fy), (1, fx)):
        margin = ringing_margin(f)
        used = torch.nonzero(h.abs().sum(1 - axis) > 0).flatten()
        if len(used) == 0 or int(used[-1]) - int(used[0]) < 2 * margin + 2:
            return math.inf
        box.append(slice(int(used[0]) + margin, int(used[-1]) + 1 - margin))
    inner = b[box[0], box[1]]
    return max(float(inner.max()) - top, low - float(inner.min()), 0.0) / top


def try_unshift(plain: ModelFit, other: ModelFit, y: Tensor, mask: Tensor, bands: int, step: int, ranges: Ranges,
                scales: Tensor, settings: RefineSettings, blocks: int) -> tuple[ModelFit | None, HandedMask]:
    """For the native-grid readings ``plain`` (kept) and ``other`` of the handed ``mask`` (both refined and
    scored by :func:`calib.model_selection.check_interpolation`): search, gate and refine the un-shifted
    reading (module docstring). Returns its fit in B's frame (history and search log moved there; None when
    refused) and a :class:`HandedMask` holding the record (``unshift``), and B and the phase when kept."""
    clock = StageClock()
    start = plain.point
    tried: dict[tuple[float, float], float] = {}          # handed-frame sub-pixel (dx, dy) -> score

    def score(dx: float, dy: float) -> tuple[float, float, float]:
        key = (round(dx, 6), round(dy, 6))
        if key not in tried:
            code, _, point = _unshifted_point(mask, start, *key)
            candidate = score_like(plain.full, y, code, point, WARM_ITERATIONS, interpolation="linear",
                                   **same_prior(plain.full, code))
            tried[key] = float(candidate(point[None])[0])
        return (*key, tried[key])

    with clock.stage("2U phase search"):
        best = score(float(start[0]), float(start[1]))
        for size in STEPS:
            for _ in range(MOVES):
                move = min((score(best[0] + sx * size, best[1] + sy * size)
                            for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1))), key=lambda c: c[2])
                if move[2] >= best[2]:
                    break
                best = move
    fy, fx = best[1] % 1.0, best[0] % 1.0
    record = {"tried": True, "phase": {"fy": fy, "fx": fx}, "score": best[2],
              "candidates": [{"dx": dx, "dy": dy, "score": v} for (dx, dy), v in tried.items()],
              "margin_required_standard_errors": MARGIN, "overshoot_tolerance": OVERSHOOT,
              "phase_refused_within": PHASE_REFUSE}

    def refuse(why: str) -> tuple[None, HandedMask]:
        record.update(kept=False, reason=why, cpu_seconds=round(sum(clock.cpu.values()), 3))
        plain.clock.merge(clock, " (un-shifted mask)")
        return None, HandedMask(False, why, unshift=record)

    if min(abs(fy - 0.5), abs(fx - 0.5)) < PHASE_REFUSE:
        return refuse(f"the phase (fy, fx) = ({fy:.3f}, {fx:.3f}) px is within {PHASE_REFUSE} of 1/2, where the "
                      "bilinear filter has a zero")
    code, phase, point = _unshifted_point(mask, start, best[0], best[1])
    excess, refusal = range_refusal(mask, code, fy, fx)
    record["overshoot"] = excess
    if refusal:
        return refuse(refusal)
    handed = HandedMask(True, "", code, phase)
    with clock.stage("0 setup"):
        full, cheap = (score_like(criterion, y, handed.code, point, criterion.settings.rebase_iterations,
                                  interpolation="linear", **same_prior(criterion, code))
                       for criterion in (plain.full, plain.cheap))
    evaluations = Evaluations(cheap, plain.evaluations.batch, plain.evaluations.progress)
    shift = [-phase[1], -phase[0], 0.0, 0.0, 0.0]
    evaluations.log = [(stage, [v + s for v, s in zip(p, shift)], value) for stage, p, value in plain.evaluations.log]
    fit = ModelFit(plain.oversample, cheap, full, evaluations, point, handed.into_code_frame(plain.history),
                   plain.diagnostics, plain.nominal_parts, clock, interpolation="linear")
    refine_fit(fit, handed.code_ranges(ranges), scales, settings, False)
    score_estimate(fit, "2U un-shifted score", blocks)
    margins = {}
    for reading in (plain, other):
        margin, se = relative_difference(reading.parts, fit.parts)          # > 0: the un-shifted reading is better
        margins[reading.interpolation] = {"score": reading.score, "relative_margin": margin, "standard_error": se,
                                          "margin_in_standard_errors": margin / se if se > 0 else math.inf}
    record.update(refined_score=fit.score, margins=margins)
    weakest = min(m["margin_in_standard_errors"] for m in margins.values())
    if not weakest > MARGIN:
        return refuse(f"the un-shifted mask predicts the held-out pixels better than both plain readings by only "
                      f"{weakest:.1f} standard errors (needs more than {MARGIN:g})")
    record.update(kept=True, reason=f"the held-out score ({fit.score:.4g}) beats the plain readings by "
                                    f"{weakest:.1f} standard errors or more and the un-shifted mask stays in the "
                                    f"handed mask's range ({excess:.2g} of its maximum)",
                  cpu_seconds=round(sum(clock.cpu.values()), 3))
    return fit, replace(handed, reason="the handed mask un-shifted by a bilinear phase chosen by the held-out score",
                        unshift=record)


def _unshifted_point(mask: Tensor, start: Tensor, dx: float, dy: float
                     ) -> tuple[Tensor, tuple[float, float], Tensor]:
    """The mask un-shifted at the phase of the handed-frame (dx, dy), that phase in [-1/2, 1/2)^2 and the
    point (5,) in its frame: the whole shifts (dx, dy) - phase, theta, a1, alpha of ``start``."""
    code, (py, px) = unshift_mask(mask, dy % 1.0, dx % 1.0)
    point = start.clone()
    point[0], point[1] = round(dx - px), round(dy - py)
    return code.to(mask.device), (py, px), point
