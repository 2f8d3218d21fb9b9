"""Instrument tools: ``python calibrate.py simulate ...`` writes a measurement of a cube through the
high-fidelity instrument model (enlarged grid, mismatch, noise).

    python calibrate.py simulate --cube scene.npz --mask mask.mat --dx 1.2 --theta 0.4 --a1 2.02 \\
        --oversample 4 2 --noise-peak 1e4 --read-noise 0.005 --seed 0 --out y.npz

Units: dx, dy in pixels (right, down), theta and alpha in degrees (counter-clockwise), a1 in pixels
per band (nominal 2). The measurement (H, W + 2*(L-1)) is stored under key ``y``; light that falls
outside that width is lost. Cubes: ``.npz`` (key ``cube``, (L, H, W)) or ``.mat`` (key ``img``,
(H, W, L)); masks: ``.mat`` (key ``mask``) or ``.npy``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see README, "CPU threads"

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cassi import Mismatch  # noqa: E402
from cassi.noise import add_noise  # noqa: E402
from cassi.simulator import simulate_measurement  # noqa: E402
from data.io import load_cube, load_mask, save_npz_atomic  # noqa: E402


def simulate(args: argparse.Namespace) -> Path:
    """Run the ``simulate`` command; returns the written file."""
    cube = torch.from_numpy(load_cube(args.cube, bands=None))
    mask = torch.from_numpy(load_mask(args.mask))
    if tuple(mask.shape) != tuple(cube.shape[1:]):
        raise SystemExit(f"error: mask {args.mask} is {tuple(mask.shape)} but cube {args.cube} is "
                         f"{tuple(cube.shape[1:])} (H, W)")
    mismatch = Mismatch(dx=args.dx, dy=args.dy, theta=args.theta, a1=args.a1, alpha=args.alpha)
    spatial, spectral = args.oversample
    y = simulate_measurement(cube[None], mask, mismatch, step=args.step, spatial=spatial, spectral=spectral)
    if args.noise_peak is not None or args.read_noise > 0:
        y = add_noise(y, peak=args.noise_peak, read_noise=args.read_noise, seed=args.seed)
    out = Path(args.out)
    save_npz_atomic(out, y=y[0].numpy().astype(np.float32), mismatch=np.array(
        [mismatch.dx, mismatch.dy, mismatch.theta, mismatch.a1, mismatch.alpha]), step=np.int64(args.step),
        oversample=np.array(args.oversample, dtype=np.int64))
    print(f"wrote {out}: y {tuple(y.shape[1:])}, mismatch {mismatch.to_dict()}, N={spatial} K={spectral}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="measure a cube through the high-fidelity instrument")
    sim.add_argument("--cube", required=True, help=".npz (key cube, (L,H,W)) or .mat (key img, (H,W,L))")
    sim.add_argument("--mask", required=True, help=".mat (key mask) or .npy")
    sim.add_argument("--dx", type=float, default=0.0, help="mask shift right, px")
    sim.add_argument("--dy", type=float, default=0.0, help="mask shift down, px")
    sim.add_argument("--theta", type=float, default=0.0, help="mask rotation, degrees counter-clockwise")
    sim.add_argument("--a1", type=float, default=2.0, help="dispersion, px per band (nominal 2)")
    sim.add_argument("--alpha", type=float, default=0.0, help="dispersion axis angle, degrees")
    sim.add_argument("--step", type=int, default=2, help="nominal dispersion step, px per band")
    sim.add_argument("--oversample", type=int, nargs=2, default=(1, 1), metavar=("N", "K"),
                     help="spatial and spectral oversampling of the enlarged grid")
    sim.add_argument("--noise-peak", type=float, default=None, help="photons at the brightest pixel")
    sim.add_argument("--read-noise", type=float, default=0.0, help="Gaussian sigma / clean maximum")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--out", required=True, help="output .npz (measurement under key y)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        simulate(args)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main()
