"""Why the held-out criterion prefers a benchmark miss to the truth: its sampling (which rows, which
pixels) or the measurement noise? (README "Calibration", the paragraph on the criterion's noise term.)

For each named scene of ``benchmarks.bench_calibration`` (its draw, its N=4, K=2 measurement with
Poisson 1e4 + 0.5 % read noise): the estimate of ``calib.calibrate`` (default options), then the
held-out score at the truth and at that estimate, each with its warm starts solved at itself:

* sampling: ``(estimate - truth) / truth`` of the paired block scores with its standard error
  (:func:`calib.status.relative_difference`; > 0: the truth predicts better) in the refinement setting
  (4 stripes of 24 rows) and over the whole height (8 stripes of 32 rows), each with split seeds 0-5;
* priors (whole height, seed 0): the same for the clean measurement, and for the measurement with
  a smoother (lambda 3) or narrower (4 cosines) prior, which carry less noise into the prediction;
* noise (refinement setting), on the line truth -> estimate (0, 1/2, 1, 3/2 of the way): the score less
  the truth's in absolute units (squared held-out error / held-out energy of the measurement) for the
  measurement, the clean one, and the noise term: the score of pure-noise inputs n ~ N(0, var)
  (``--probes`` draws, the benchmark's noise variance), whose expectation ``tr S_h + tr(P S_f P^T)``
  depends on the candidate through P, its held-out predictor (the noise carried through P). Last, the
  measurement's score less the noise term.

The estimate analysed is that of ``calib.calibrate`` without its last, noise-corrected refinement
(``noise_correction=None``): the plain held-out criterion's.

``--refine`` (instead of the above): from each such estimate, the noise-corrected refinement of
:mod:`calib.noise_term` (``--probes`` random-sign draws), with the variance fitted blind (what
``calibrate`` does by default) and with the benchmark's true variance (``gain`` = clean maximum / 1e4
photons, ``read`` = 0.005 x the clean maximum), side by side.

Usage: python -m benchmarks.bench_criterion_noise [--scenes scene04,scene1_256,scene3_0,scene4_256]
       [--seeds 6] [--probes 4] [--threads 1] [--refine]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import Tensor

from benchmarks.bench_calibration import NOISE_PEAK, NOISE_READ, TOLERANCE, draw_mismatch, measure, pseudo_real_crops
from benchmarks.common import kaist_mask, pseudo_kaist_cubes
from calib import calibrate
from calib.forward_model import params_tensor, params_to_mismatch
from calib.noise_term import NoiseCorrectedScore, NoiseCorrection, corrected_refinement, fit_noise_variance
from calib.pipeline import REFINE_SCORE
from calib.ranges import Ranges, pixel_scales
from calib.score import HeldOutScore, ScoreSettings
from calib.status import relative_difference
from cassi import Mismatch

WHOLE_HEIGHT = REFINE_SCORE.with_(stripes=8, rows=32)
LINE = (0.0, 0.5, 1.0, 1.5)          # points on the line truth -> estimate (0: truth, 1: estimate)


def benchmark_cases(names: list[str], seed: int = 0) -> list[tuple[str, torch.Tensor, Mismatch, int]]:
    """(name, cube, true mismatch, noise seed) of the named scenes, drawn as ``bench_calibration`` draws
    them (pseudo-KAIST: rng seed, noise 1000 seed + index; pseudo-real crops: rng seed + 2, noise + 500)."""
    sets = ((pseudo_kaist_cubes(), np.random.default_rng(seed), 1000 * seed),
            (pseudo_real_crops(10), np.random.default_rng(seed + 2), 1000 * seed + 500))
    cases = {}
    for cubes, rng, noise_seed in sets:
        for index, (name, cube) in enumerate(cubes):
            cases[name] = (name, cube, draw_mismatch(rng), noise_seed + index)
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise SystemExit(f"unknown scene(s) {unknown}; known: {sorted(cases)}")
    return [cases[n] for n in names]


def paired(y: Tensor, mask: Tensor, points: Tensor, settings: ScoreSettings, blocks: int = 16) -> list[Tensor]:
    """Block scores of each point (P, 5), its warm starts solved at itself (150 CG steps from zero)."""
    return [HeldOutScore(y, mask, settings=settings, reference=p[None]).block_scores(p[None], blocks)[0]
            for p in points]


def relative(y: Tensor, mask: Tensor, points: Tensor, settings: ScoreSettings) -> tuple[float, float]:
    """(score of point 1 - score of point 0) / score of point 0 for points (2, 5), and its standard error."""
    truth, other = paired(y, mask, points, settings)
    return relative_difference(other, truth)


def held_out_energy(y: Tensor, mask: Tensor, settings: ScoreSettings) -> float:
    """Sum of y^2 over the pixels whose errors the score sums (its stripes, borders left out)."""
    score = HeldOutScore(y, mask, settings=settings.with_(reference_iterations=0))
    return float((score.y ** 2 * score.interior).sum())


def absolute(y: Tensor, mask: Tensor, points: Tensor, settings: ScoreSettings, energy: float) -> np.ndarray:
    """Scores of the points (P, 5) less the first one's for the input ``y``, as squared error over ``energy``."""
    totals = np.array([float(part.sum()) for part in paired(y, mask, points, settings)])
    return (totals - totals[0]) * held_out_energy(y, mask, settings) / energy


def noise_draws(clean: Tensor, count: int, seed: int) -> list[Tensor]:
    """``count`` pure-noise inputs n ~ N(0, var) shaped as ``clean``, var the benchmark's noise variance
    (Poisson with NOISE_PEAK photons at the clean maximum, Gaussian NOISE_READ x that maximum)."""
    top = float(clean.max())
    std = (clean * (top / NOISE_PEAK) + (NOISE_READ * top) ** 2).sqrt()
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(clean.shape, generator=gen) * std for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", default="scene04,scene1_256,scene3_0,scene4_256")
    parser.add_argument("--seeds", type=int, default=6, help="split seeds of the sampling rows")
    parser.add_argument("--probes", type=int, default=4, help="pure-noise draws of the noise term (with --refine: "
                        "of the corrected score)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--refine", action="store_true", help="only: refine each estimate on the noise-corrected "
                        "score (blind variance, then the benchmark's) and print the errors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mask = kaist_mask()
    for name, cube, truth, noise_seed in benchmark_cases(args.scenes.split(",")):
        start = time.process_time()
        clean = measure(cube, truth, None)
        y = measure(cube, truth, noise_seed)
        estimate = calibrate(y, mask, progress=False, solver_check=False, noise_correction=None).estimate
        error = {k: estimate.to_dict()[k] - v for k, v in truth.to_dict().items()}
        inside = all(abs(error[k]) <= TOLERANCE[k] for k in error)
        print(f"\n{name}: estimate - truth " + " ".join(f"{k} {v:+.3f}" for k, v in error.items())
              + f" ({'in' if inside else 'outside'} tolerance)", flush=True)
        points = torch.stack([params_tensor(truth)[0], params_tensor(estimate)[0]])
        if args.refine:
            correction = NoiseCorrection(draws=args.probes)
            top = float(clean.max())
            variances = {"blind": fit_noise_variance(y[None], mask, 28, 2, REFINE_SCORE, points[1], correction),
                         "true": {"gain": top / NOISE_PEAK, "read_variance": (NOISE_READ * top) ** 2}}
            for label, variance in variances.items():
                score = NoiseCorrectedScore(y[None], mask, 28, 2, REFINE_SCORE, points[1], variance, correction)
                end, trace = corrected_refinement(score, points[1], Ranges(), pixel_scales(*mask.shape, 28, 2),
                                                  correction)
                error = {n: v - truth.to_dict()[n] for n, v in params_to_mismatch(end).to_dict().items()}
                inside = all(abs(error[n]) <= TOLERANCE[n] for n in error)
                print(f"  corrected, {label} variance (gain {variance['gain']:.3g}, read^2 "
                      f"{variance['read_variance']:.3g}), {len(trace)} steps: "
                      + " ".join(f"{n} {v:+.3f}" for n, v in error.items())
                      + f" ({'in' if inside else 'outside'} tolerance, {time.process_time() - start:.0f} CPU s)",
                      flush=True)
            continue
        for label, base in (("4 x 24 rows", REFINE_SCORE), ("8 x 32 rows", WHOLE_HEIGHT)):
            rows = [relative(y, mask, points, base.with_(seed=s)) for s in range(args.seeds)]
            mean = np.mean([d for d, _ in rows])
            print(f"  sampling {label}: (estimate - truth) / truth per split seed "
                  + " ".join(f"{100 * d:+.2f}" for d, _ in rows) + f" %; mean {100 * mean:+.2f} %, "
                  f"standard error {100 * np.mean([e for _, e in rows]):.2f} %", flush=True)
        variants = (("this measurement", y, WHOLE_HEIGHT), ("clean", clean, WHOLE_HEIGHT),
                    ("lambda 3", y, WHOLE_HEIGHT.with_(smooth_space=3.0)), ("4 cosines", y, WHOLE_HEIGHT.with_(spectral_basis=4)))
        print("  8 x 32 rows, seed 0, (estimate - truth) / truth: " + ", ".join(
            "{} {:+.2f} % +- {:.2f} %".format(label, *(100 * v for v in relative(data, mask, points, settings)))
            for label, data, settings in variants), flush=True)
        line = points[0] + torch.tensor(LINE, dtype=torch.float64)[:, None] * (points[1] - points[0])
        energy = held_out_energy(y, mask, REFINE_SCORE)
        noisy = absolute(y, mask, line, REFINE_SCORE, energy)
        terms = np.stack([absolute(n, mask, line, REFINE_SCORE, energy) for n in noise_draws(clean, args.probes, 7)])
        term, spread = terms.mean(0), terms.std(0, ddof=1) / np.sqrt(args.probes)
        print(f"  4 x 24 rows, score - score at the truth (x 1e-6 of the held-out energy) at {LINE} of the way "
              "truth -> estimate:", flush=True)
        for label, values in (("this measurement", noisy), ("clean", absolute(clean, mask, line, REFINE_SCORE, energy)),
                              ("noise term", term), ("measurement - noise term", noisy - term)):
            print(f"    {label:25}" + " ".join(f"{1e6 * v:+8.1f}" for v in values)
                  + (f"   (+- {1e6 * spread[2]:.1f} at the estimate)" if label == "noise term" else ""))
        print(f"  ({time.process_time() - start:.0f} CPU s)", flush=True)


if __name__ == "__main__":
    main()
