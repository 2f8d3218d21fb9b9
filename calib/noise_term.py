"""The held-out score corrected for the measurement noise it carries: a blind last refinement.

Why: the held-out error at a candidate ξ is, in expectation, the clean prediction error plus the
noise term ``tr Σ_h + tr(P_ξ Σ_f P_ξᵀ)``: the noise of the held-out pixels and that of the fitted
pixels carried through ξ's held-out predictor ``P_ξ``. The second part depends on ξ, and on noisy
benchmark data it falls toward instruments that carry less noise into the prediction by more than the
clean error rises: the criterion's minimum is pulled off the truth (README "Blind score",
``benchmarks/bench_criterion_noise.py``).

What: (1) the noise variance, blind, from the measurement alone: ``var = gain · y⁺ + read²`` (Poisson
plus Gaussian read noise, ``y⁺`` the measurement clipped at 0 as the intensity), fitted at the
estimate by non-negative least squares of the measurement's squared held-out errors, binned by
intensity, on those of two pure-noise inputs (variance ``y⁺`` and 1) through the same predictor. The
clean prediction error counts as noise, so the fit is an upper bound: 0.77-1.27 x the true mean
variance on the benchmark's 20 realistic scenes (the noise is 90-98 % of their held-out error near
the truth), 2.9 x on the synthetic generator's 64 px scenes, whose spectra the 6-cosine prior fits
less well. The correction is only as good as this fit (README "Blind score"). (2) The corrected
score: the measurement's held-out error less that of ``draws`` fixed random-sign inputs of that
variance, zero on each fold's held-out pixels (so their error is the noise carried through the
predictor alone, ``-P n_f``), all solved as one batch of captures (the same stripes, split, prior
and warm starts). (3) Levenberg-Marquardt steps on it from the estimate: gradient
``Σ_k w_k 2 J_kᵀ e_k``, Gauss-Newton matrix ``Σ_k w_k 2 J_kᵀ J_k`` with an eigenvalue floor, forward
differences, backtracking.

Shapes: ``y`` (M, H, W') captures of one instrument, as :class:`calib.score.HeldOutScore`; points
(5,) or (P, 5) float64 on the CPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

from calib.forward_model import PARAMETER_NAMES, params_to_mismatch
from calib.ranges import Ranges
from calib.score import HeldOutScore, ScoreSettings


@dataclass(frozen=True)
class NoiseCorrection:
    """How the noise term is estimated and how far the corrected score is followed."""

    draws: int = 1                    # pure-noise inputs whose mean held-out error is the noise term
    seed: int = 11                    # their generator seed (fixed: the same draws at every candidate)
    bins: int = 16                    # intensity bins of the variance fit
    steps: int = 8                    # Levenberg-Marquardt steps at most
    rebase_iterations: int = 30       # CG iterations moving the warm starts to each step's point
    difference: float = 0.05          # forward-difference step (pixel units)
    floor: float = 0.02               # smallest eigenvalue of the metric, relative (see _corrected_metric)
    backtrack: tuple[float, ...] = (0.4, 0.1)   # shorter steps tried when the full step does not lower it
    tolerance: float = 0.01           # stop once a step moves no parameter further (pixel units)


def _pure_noise(y: Tensor, variance: Tensor, count: int, seed: int, signs: bool = False) -> Tensor:
    """``count`` inputs (count, M, H, W') of independent zero-mean noise with the given variance: Gaussian, or
    with ``signs`` random signs (Rademacher: the same variance, a noise term with less spread of its own)."""
    gen = torch.Generator().manual_seed(seed)
    if signs:
        unit = torch.randint(0, 2, (count, *y.shape), generator=gen).float() * 2 - 1
    else:
        unit = torch.randn((count, *y.shape), generator=gen, dtype=torch.float32)
    return unit.to(y.device) * variance.sqrt()


class CaptureBatch:
    """Held-out errors of several inputs (the measurement first) at the same candidates, in absolute
    units (squared error of the input), one :class:`HeldOutScore` over all inputs as captures. With
    ``predicted_only`` the inputs after the first are zero on each fold's held-out pixels: their errors are
    the noise carried through the predictor alone, ``-P n_f`` (the held-out pixels' own noise, constant
    in ξ, and its random cross term with the prediction left out)."""

    def __init__(self, inputs: list[Tensor], mask: Tensor, bands: int, step: int, settings: ScoreSettings,
                 point: Tensor, predicted_only: bool = False) -> None:
        self.count, self.captures = len(inputs), inputs[0].shape[0]
        self.score = HeldOutScore(torch.cat(inputs), mask, bands, step, settings, reference=point.reshape(1, 5))
        self.rows = self.captures * len(self.score.windows) * len(self.score.folds)    # solves per input
        if predicted_only:
            self.score.y_folds[self.rows:] *= self.score.fits[self.rows:]
        # the score scales capture c's errors by 1 / sqrt(C * energy_c); undo it per capture
        energy = (self.score.y ** 2 * self.score.interior).sum((1, 2)).view(-1, len(self.score.windows)).sum(1)
        self.unscale = (len(energy) * energy).sqrt().cpu().double()                     # (C,)
        self.energy = energy.view(self.count, self.captures).sum(1).cpu().double()     # (inputs,) held-out energy

    def set_reference(self, point: Tensor) -> None:
        self.score.set_reference(point.reshape(1, 5))

    def errors(self, points: Tensor) -> Tensor:
        """Held-out errors (P, inputs, N) of every input at the points (P, 5), each squared sum in the input's
        own absolute units (its captures together)."""
        residuals = self.score.residuals(points).double()
        absolute = residuals.view(len(points), len(self.unscale), -1) * self.unscale.view(1, -1, 1)
        return absolute.reshape(len(points), self.count, -1)

    def intensities(self) -> Tensor:
        """The measurement's value at every held-out error entry of one input (N,)."""
        return self.score.y_folds[:self.rows].flatten().cpu().double()


def fit_noise_variance(y: Tensor, mask: Tensor, bands: int, step: int, settings: ScoreSettings, point: Tensor,
                       correction: NoiseCorrection = NoiseCorrection()) -> dict:
    """Blind ``gain`` and ``read²`` of ``var = gain · y⁺ + read²`` from the held-out errors at ``point`` (5,)
    (see the module docstring). Returns {"gain", "read_variance", "explained"}: ``explained`` is the
    fitted noise term over the measurement's held-out error, all bins together (what the two-term
    model leaves; a clean error that grows like the noise is counted as noise, not left)."""
    bases = torch.stack([y.clamp_min(0), torch.ones_like(y)])
    noise = [_pure_noise(y, basis, 1, correction.seed + 1 + k)[0] for k, basis in enumerate(bases)]
    batch = CaptureBatch([y, *noise], mask, bands, step, settings, point)
    squared = batch.errors(point.reshape(1, 5))[0] ** 2                            # (3, N)
    intensity = batch.intensities()
    held = squared[1] > 0                                   # held-out entries (fitted and border ones are 0)
    edges = torch.quantile(intensity[held], torch.linspace(0, 1, correction.bins + 1, dtype=torch.float64))
    which = torch.bucketize(intensity[held], edges[1:-1])
    sums = torch.stack([torch.bincount(which, weights=row[held], minlength=correction.bins) for row in squared])
    rows = sums[0] > 0
    design = (sums[1:, rows] / sums[0, rows]).T.numpy()     # relative fit: every bin counts the same
    (gain, read_variance), _ = nnls(design, np.ones(int(rows.sum())))
    explained = float((gain * sums[1].sum() + read_variance * sums[2].sum()) / sums[0].sum())
    return {"gain": float(gain), "read_variance": float(read_variance), "explained": explained}


class NoiseCorrectedScore:
    """The measurement's held-out error less the mean held-out error of fixed pure-noise inputs of the
    fitted variance, relative to the measurement's held-out energy (the units of :class:`HeldOutScore`)."""

    def __init__(self, y: Tensor, mask: Tensor, bands: int, step: int, settings: ScoreSettings, point: Tensor,
                 variance: dict, correction: NoiseCorrection = NoiseCorrection()) -> None:
        var = variance["gain"] * y.clamp_min(0) + variance["read_variance"]
        draws = list(_pure_noise(y, var, correction.draws, correction.seed, signs=True))
        self.batch = CaptureBatch([y, *draws], mask, bands, step,
                                  settings.with_(rebase_iterations=correction.rebase_iterations), point,
                                  predicted_only=True)
        weights = torch.full((len(draws) + 1,), -1.0 / len(draws), dtype=torch.float64)
        weights[0] = 1.0
        self.weights = weights / self.batch.energy[0]
        self.at = point.reshape(5).to(torch.float64).clone()                       # where the warm starts are

    def errors(self, points: Tensor, at: Tensor) -> Tensor:
        """Held-out errors (P, inputs, N) at the points (P, 5), warm starts moved to ``at`` (5,) first."""
        if not torch.equal(self.at, at):
            self.batch.set_reference(at)
            self.at = at.clone()
        return self.batch.errors(points)

    def value(self, errors: Tensor) -> Tensor:
        """Corrected scores (P,) from :meth:`errors`."""
        return ((errors ** 2).sum(2) * self.weights).sum(1)


def _corrected_metric(jacobians: Tensor, weights: Tensor, correction: NoiseCorrection) -> Tensor:
    """Gauss-Newton matrix (5, 5) of the corrected score, ``2 Σ_k w_k J_kᵀ J_k`` from the Jacobians (5, inputs, N):
    the noise inputs take out the curvature the noise adds to the measurement's. Its eigenvalues are raised
    to at least ``floor`` of the largest eigenvalue of the measurement's own ``2 w_0 J_0ᵀ J_0`` (the noise
    part of a few draws can make the difference indefinite)."""
    per_input = 2 * torch.einsum("pkn,qkn->kpq", jacobians, jacobians)
    metric = (per_input * weights.view(-1, 1, 1)).sum(0)
    floor = correction.floor * float(torch.linalg.eigvalsh(per_input[0] * weights[0]).max())
    values, vectors = torch.linalg.eigh(metric)
    return vectors @ torch.diag(values.clamp_min(floor)) @ vectors.T


def corrected_refinement(score: NoiseCorrectedScore, start: Tensor, ranges: Ranges, scales: Tensor,
                         correction: NoiseCorrection = NoiseCorrection()) -> tuple[Tensor, list[dict]]:
    """Levenberg-Marquardt on the corrected score from ``start`` (5,): returns (point, trace), the trace one
    entry per step (the point after it, the corrected score before and after, how far it moved; a refused step's
    ``refused``: :func:`_refusal`). Steps move each parameter at most 1 pixel unit (``scales``:
    :func:`calib.ranges.pixel_scales`)."""
    point, trace = ranges.clamp(start.to(torch.float64)), []
    h = correction.difference
    fractions = torch.tensor(correction.backtrack, dtype=torch.float64)[:, None]
    for _ in range(correction.steps):
        probes = point + torch.cat([torch.zeros(1, 5), torch.diag(h * scales)]).to(point)
        errors = score.errors(probes, point)                                        # (6, inputs, N)
        jacobians = (errors[1:] - errors[:1]) / h                                    # (5, inputs, N)
        gradient = 2 * torch.einsum("pkn,kn,k->p", jacobians, errors[0], score.weights)
        metric = _corrected_metric(jacobians, score.weights, correction)
        move = -torch.linalg.solve(metric, gradient)
        move = move / max(1.0, float(move.abs().max()))
        trials = [ranges.clamp(point + move * scales)]
        values = torch.cat([score.value(errors[:1]), score.value(score.errors(trials[0][None], point))])
        tried = values[1:]                                      # every trial's value, the full step first
        evaluations = len(probes) + 1
        if values[1] >= values[0]:
            trials = list(ranges.clamp(point + fractions * move * scales))
            values = torch.cat([values[:1], score.value(score.errors(torch.stack(trials), point))])
            tried = torch.cat([tried, values[1:]])
            evaluations += len(trials)
        best = int(torch.argmin(values))
        moved = 0.0 if best == 0 else float(((trials[best - 1] - point) / scales).abs().max())
        entry = {"point": params_to_mismatch(point if best == 0 else trials[best - 1]).to_dict(),
                 "corrected_score": float(values[best]), "start_corrected_score": float(values[0]),
                 "moved_pixel_units": moved, "evaluations": evaluations}
        if best == 0:
            entry["refused"] = _refusal(score, point, errors, tried - values[0], h, scales)
            entry["evaluations"] += 5
        point = point if best == 0 else trials[best - 1]
        trace.append(entry)
        if moved < correction.tolerance:
            break
    return point, trace


def _refusal(score: NoiseCorrectedScore, point: Tensor, forward: Tensor, trial_rises: Tensor, h: float,
             scales: Tensor) -> dict:
    """Why a step kept ``point`` (5,): how much its trials raised the corrected score (``trial_rises``: the full
    step, then its backtracked fractions, if tried), and how much each parameter moved ``h`` pixel units either
    way does (``forward``: the step's errors at the point and its forward probes; the backward ones are scored
    here). ``minimum``: none of these moves lowers it, the point is a minimum at the stage's difference step."""
    backward = score.errors(point - torch.diag(h * scales).to(point), point)
    rises = torch.cat([score.value(forward[1:]), score.value(backward)]) - score.value(forward[:1])
    names = [f"{name} {sign}{h:g}" for sign in "+-" for name in PARAMETER_NAMES]
    return {"trial_rises": trial_rises.tolist(), "probe_rises": dict(zip(names, rises.tolist())),
            "minimum": bool(rises.min() >= 0)}


def outcome(record: dict) -> str:
    """Why the stage stopped, one sentence from its record (:func:`correct_for_noise`), for the terminal."""
    steps, settings = record["steps"], record["settings"]
    last = steps[-1]
    refused = last.get("refused")
    if refused is None:
        if last["moved_pixel_units"] < settings["tolerance"]:
            return f"stopped: the last step moved no parameter {settings['tolerance']:g} pixel units or more"
        return f"stopped after the most steps ({settings['steps']}), still moving"
    kept = "kept the refined point" if len(steps) == 1 else "kept the last point"
    probes = refused["probe_rises"]
    lowest = min(probes, key=probes.get)
    fractions = ", ".join(f"{f:g}" for f in settings["backtrack"])
    trials = ", ".join(f"{rise:+.2g}" for rise in refused["trial_rises"])
    text = (f"{kept}: neither the step nor {fractions} of it lowered the corrected score (changes {trials}, "
            "blind score units)")
    if refused["minimum"]:
        return (f"{text}, nor did any parameter moved {settings['difference']:g} pixel units either way (the "
                f"smallest change {probes[lowest]:+.2g}): a minimum of the corrected score at the stage's "
                "difference step")
    return (f"{text}, but {lowest} pixel units lowered it by {-probes[lowest]:.2g}: a lower point the "
            "Gauss-Newton step missed")


def correct_for_noise(y: Tensor, mask: Tensor, bands: int, step: int, settings: ScoreSettings, start: Tensor,
                      ranges: Ranges, scales: Tensor, correction: NoiseCorrection = NoiseCorrection()
                      ) -> tuple[Tensor, dict]:
    """The blind variance fit at ``start`` (5,), then :func:`corrected_refinement`. Returns (point, the
    record for ``calibration.json``: fitted variance, settings, steps, and ``outcome``: :func:`outcome`)."""
    variance = fit_noise_variance(y, mask, bands, step, settings, start, correction)
    score = NoiseCorrectedScore(y, mask, bands, step, settings, start, variance, correction)
    point, trace = corrected_refinement(score, start, ranges, scales, correction)
    record = {"variance": {**variance, "model": "gain * max(y, 0) + read_variance (measurement units)"},
              "settings": asdict(correction), "steps": trace,
              "moved_pixel_units": float(((point - start.to(point)) / scales).abs().max())}
    record["outcome"] = outcome(record)
    return point, record
