"""Operator speed: forward + adjoint time over one elementwise ``x * mask`` pass (target <= 3).

Batch (8, 28, 256, 256) on the CPU, float32, no autograd; all timings from this one run.
Usage: python -m benchmarks.bench_operator [--threads 2]
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import best_time
from cassi import CassiOperator, Mismatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=8, help="cubes per pass (the target is for 8)")
    parser.add_argument("--size", type=int, default=256, help="H = W in px (the target is for 256)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(args.size, args.size, generator=g)
    x = torch.rand(args.batch, 28, args.size, args.size, generator=g)
    mask3d = mask.expand(1, 28, -1, -1)
    with torch.no_grad():
        elementwise = best_time(lambda: x * mask3d)
        print(f"x * mask over {tuple(x.shape)}: {elementwise * 1e3:.1f} ms")
        print(f"{'operator':<28} {'forward ms':>10} {'adjoint ms':>10} {'ratio':>7}")
        for name, mismatch in (("nominal", None),
                               ("mismatched (sub-pixel)", Mismatch(0.3, -0.4, 0.2, 2.02, 0.3))):
            op = CassiOperator(mask, mismatch=mismatch)
            y = op(x)
            fwd, adj = best_time(lambda: op(x)), best_time(lambda: op.adjoint(y))
            print(f"{name:<28} {fwd * 1e3:>10.1f} {adj * 1e3:>10.1f} {(fwd + adj) / elementwise:>7.2f}")
    at_target = (args.batch, args.size) == (8, 256)
    print("target: nominal ratio <= 3 at batch 8, 256 x 256" + ("" if at_target else
          f" (this run: batch {args.batch}, {args.size} x {args.size}; small passes are dominated by fixed costs, "
          "so the ratio is not comparable with the target)"))


if __name__ == "__main__":
    main()
