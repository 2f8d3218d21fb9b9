"""Why the held-out criterion prefers a benchmark miss to the truth: its sampling (which rows, which
pixels) or the measurement noise? (README "Calibration", the paragraph on the criterion's noise term.)

For each named scene of ``benchmarks.bench_calibration`` (its draw, its N=4, K=2 measurement with
Poisson 1e4 + 0.5 % read noise): the estimate of ``calib.calibrate`` (default options), then the
held-out score at the truth and at that estimate, each with its warm starts solved at itself:

* sampling: ``(estimate - truth) / truth`` of the paired block scores with its standard error
  (:func:`calib.status.relative_difference`; > 0: the truth predicts better) in the refinement setting
  (4 stripes of 24 rows) and over the whole height (8 stripes of 32 rows), each with split seeds 0-5;
* noise: the same difference in absolute units (squared held-out error / held-out energy of the
  measurement) for the noisy measurement, the clean one, and the noise term: the score of pure-noise
  inputs n ~ N(0, var) (``--probes`` draws, the benchmark's noise variance), whose expectation is
  ``tr S_h + tr(P S_f P^T)``, P the held-out predictor of the candidate: its second part, the noise
  carried through P, depends on the candidate. Last, noisy minus noise term.

Usage: python -m benchmarks.bench_criterion_noise [--scenes scene04,scene1_256,scene3_0,scene4_256]
       [--seeds 6] [--probes 4] [--threads 1]
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
from calib.forward_model import params_tensor
from calib.pipeline import REFINE_SCORE
from calib.score import HeldOutScore, ScoreSettings
from calib.status import relative_difference
from cassi import Mismatch

WHOLE_HEIGHT = REFINE_SCORE.with_(stripes=8, rows=32)


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
    """Block scores of each point (2, 5), its warm starts solved at itself (150 CG steps from zero)."""
    return [HeldOutScore(y, mask, settings=settings, reference=p[None]).block_scores(p[None], blocks)[0]
            for p in points]


def held_out_energy(y: Tensor, mask: Tensor, settings: ScoreSettings) -> float:
    """Sum of y^2 over the pixels whose errors the score sums (its stripes, borders left out)."""
    score = HeldOutScore(y, mask, settings=settings.with_(reference_iterations=0))
    return float((score.y ** 2 * score.interior).sum())


def absolute(y: Tensor, mask: Tensor, points: Tensor, settings: ScoreSettings, energy: float) -> float:
    """Score difference point 1 - point 0 (2, 5) for the input ``y``, as squared error over ``energy``."""
    parts = paired(y, mask, points, settings)
    return float(parts[1].sum() - parts[0].sum()) * held_out_energy(y, mask, settings) / energy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", default="scene04,scene1_256,scene3_0,scene4_256")
    parser.add_argument("--seeds", type=int, default=6, help="split seeds of the sampling rows")
    parser.add_argument("--probes", type=int, default=4, help="pure-noise draws of the noise term")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mask = kaist_mask()
    for name, cube, truth, noise_seed in benchmark_cases(args.scenes.split(",")):
        start = time.process_time()
        clean = measure(cube, truth, None)
        y = measure(cube, truth, noise_seed)
        estimate = calibrate(y, mask, progress=False, solver_check=False).estimate
        error = {k: estimate.to_dict()[k] - v for k, v in truth.to_dict().items()}
        inside = all(abs(error[k]) <= TOLERANCE[k] for k in error)
        print(f"\n{name}: estimate - truth " + " ".join(f"{k} {v:+.3f}" for k, v in error.items())
              + f" ({'in' if inside else 'outside'} tolerance)", flush=True)
        points = torch.stack([params_tensor(truth)[0], params_tensor(estimate)[0]])
        for label, base in (("4 x 24 rows", REFINE_SCORE), ("8 x 32 rows", WHOLE_HEIGHT)):
            rows = [relative_difference(*paired(y, mask, points, base.with_(seed=s))[::-1]) for s in range(args.seeds)]
            mean = np.mean([d for d, _ in rows])
            print(f"  sampling {label}: (estimate - truth) / truth per split seed "
                  + " ".join(f"{100 * d:+.2f}" for d, _ in rows) + f" %; mean {100 * mean:+.2f} %, "
                  f"standard error {100 * np.mean([e for _, e in rows]):.2f} %", flush=True)
        energy = held_out_energy(y, mask, REFINE_SCORE)
        top = float(clean.max())
        std = (clean * (top / NOISE_PEAK) + (NOISE_READ * top) ** 2).sqrt()
        gen = torch.Generator().manual_seed(7)
        noisy = absolute(y, mask, points, REFINE_SCORE, energy)
        plain = absolute(clean, mask, points, REFINE_SCORE, energy)
        terms = [absolute(torch.randn(y.shape, generator=gen) * std, mask, points, REFINE_SCORE, energy)
                 for _ in range(args.probes)]
        term, spread = float(np.mean(terms)), float(np.std(terms, ddof=1) / np.sqrt(len(terms)))
        print(f"  noise (4 x 24 rows, estimate - truth, x 1e-6 of the held-out energy): noisy {1e6 * noisy:+.1f}, "
              f"clean {1e6 * plain:+.1f}, noise term {1e6 * term:+.1f} +- {1e6 * spread:.1f}, noisy - noise term "
              f"{1e6 * (noisy - term):+.1f}  ({time.process_time() - start:.0f} CPU s)", flush=True)


if __name__ == "__main__":
    main()
