"""GAP-TV on the 10 pseudo-KAIST cubes: our GAP-TV (torch + fused numba TV) against a plain numpy reference.

Noise-free nominal measurements with the KAIST mask; both solvers run the same accelerated GAP with
the same number of iterations and TV steps; the reference is plain numpy with scikit-image's
``denoise_tv_chambolle`` (the operator's A and A^T, a few percent of its time, come from ``cassi``).
Prints PSNR and seconds per scene for both, then the mean PSNR gap and the speed-up (targets: PSNR
>= reference, speed-up >= 3). Timings come from this one run; the first call (numba's JIT compile
or cache load) is a separate, untimed warm-up whose seconds are printed first.
Usage: python -m benchmarks.bench_gap_tv [--iterations 50] [--threads 2] [--scenes 10]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage.restoration import denoise_tv_chambolle

from benchmarks.common import kaist_mask, psnr, pseudo_kaist_cubes
from cassi import CassiOperator
from cassi.gap_tv import gap_tv


def reference_gap_tv(y: np.ndarray, op: CassiOperator, iterations: int, tv_weight: float,
                     tv_iterations: int) -> np.ndarray:
    """Plain accelerated GAP-TV: numpy arrays, scikit-image TV, the project's operator for A and A^T."""
    def forward(x: np.ndarray) -> np.ndarray:
        return op(torch.from_numpy(x)[None])[0].numpy()

    def adjoint(v: np.ndarray) -> np.ndarray:
        return op.adjoint(torch.from_numpy(v)[None])[0].numpy()

    phi_sum = forward(adjoint(np.ones_like(y)))
    phi_sum[phi_sum == 0] = 1
    x = np.zeros((op.bands, op.height, op.width), dtype=y.dtype)
    y_acc = np.zeros_like(y)
    for _ in range(iterations):
        projected = forward(x)
        y_acc = y_acc + (y - projected)
        x = x + adjoint((y_acc - projected) / phi_sum)
        x = denoise_tv_chambolle(x, weight=tv_weight, max_num_iter=tv_iterations, eps=0,
                                 channel_axis=0)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--tv-weight", type=float, default=0.1)
    parser.add_argument("--tv-iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    op = CassiOperator(kaist_mask())
    cubes = pseudo_kaist_cubes()[:args.scenes]
    start = time.perf_counter()
    with torch.no_grad():  # warm-up, not timed: numba compiles (or loads its cache), the operator caches
        gap_tv(op(cubes[0][1][None]), op, 1, args.tv_weight, args.tv_iterations)
    print(f"first call (JIT compile or cache load, excluded below): {time.perf_counter() - start:.2f} s")
    rows = []
    print(f"{'scene':<8} {'ours dB':>8} {'ours s':>7} {'ref dB':>8} {'ref s':>7}")
    for name, cube in cubes:
        with torch.no_grad():
            y = op(cube[None])
            start = time.perf_counter()
            ours = gap_tv(y, op, args.iterations, args.tv_weight, args.tv_iterations)[0]
            t_ours = time.perf_counter() - start
            start = time.perf_counter()
            ref = reference_gap_tv(y[0].numpy(), op, args.iterations, args.tv_weight, args.tv_iterations)
            t_ref = time.perf_counter() - start
        rows.append((psnr(ours, cube), t_ours, psnr(ref, cube), t_ref))
        print(f"{name:<8} {rows[-1][0]:>8.2f} {t_ours:>7.2f} {rows[-1][2]:>8.2f} {t_ref:>7.2f}", flush=True)
    ours_db, ours_s, ref_db, ref_s = np.mean(rows, axis=0)
    print(f"{'mean':<8} {ours_db:>8.2f} {ours_s:>7.2f} {ref_db:>8.2f} {ref_s:>7.2f}")
    print(f"PSNR gap (ours - reference): {ours_db - ref_db:+.2f} dB (target >= 0)")
    print(f"speed-up (reference s / ours s): {ref_s / ours_s:.2f}x (target >= 3)")


if __name__ == "__main__":
    main()
