"""BiSRNet with the official pretrained weights against the official outputs stored in ../shared/data.

Simulation: ``bisrnet_simulation.pth`` on the ten ``kaist_meas`` snapshots (inputs built by ``prepare_inputs`` from
the nominal operator with the snapshot's mask) against ``pseudo_kaist``; real: ``bisrnet_real_state_dict.pth`` on the
five ``real/sceneN.mat`` captures (660 x 714, rescaled to max 0.8 by ``prepare_inputs``) against ``pseudo_real``
(rows/cols 74:586 of the 660 x 660 output). Outputs are clipped to [0, 1] as the stored ones were. Prints PSNR
per scene (target >= 45 dB: a binarised network flips a few signs between builds and thread counts) and the CPU
and wall seconds of each forward (no gradient, batch 1), all from this one run.
Usage: python -m benchmarks.bench_bisrnet [--threads N] [--skip-real]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import SHARED_DATA, psnr, shared_file
from cassi import CassiOperator
from data.io import load_cube, load_measurement
from models import from_official, load_toolbox_checkpoint



def shared_weights(name: str):
    """A file of ../shared/weights; exits with a clear message when it is missing."""
    path = SHARED_DATA.parent / "weights" / name
    if not path.is_file():
        raise SystemExit(f"official weights not found: {path} (this benchmark reads ../shared/weights)")
    return path


def timed_forward(model: torch.nn.Module, y: torch.Tensor, op: CassiOperator) -> tuple[torch.Tensor, float, float]:
    """(clipped output (28, H, W), CPU seconds, wall seconds) of one forward from a measurement (1, H, Wm)."""
    cpu, wall = time.process_time(), time.perf_counter()
    with torch.no_grad():
        out = model(**model.prepare_inputs(y, op)).clamp(0, 1)[0]
    return out, time.process_time() - cpu, time.perf_counter() - wall


def simulation_rows() -> list[tuple[str, float, float, float]]:
    model = load_toolbox_checkpoint("bisrnet", shared_weights("bisrnet_simulation.pth"))
    rows = []
    for n in range(1, 11):
        snapshot = np.load(shared_file("kaist_meas", f"scene{n:02d}_snapshot.npz"))
        op = CassiOperator(torch.from_numpy(snapshot["mask"]))
        out, cpu, wall = timed_forward(model, torch.from_numpy(snapshot["y"])[None], op)
        rows.append((f"scene{n:02d}", psnr(out, load_cube(shared_file("pseudo_kaist", f"scene{n:02d}.npz"))), cpu, wall))
        print(f"  {rows[-1][0]}  {rows[-1][1]:6.2f} dB  {cpu:6.2f} CPU s  {wall:6.2f} s", flush=True)
    return rows


def real_rows() -> list[tuple[str, float, float, float]]:
    state = torch.load(shared_weights("bisrnet_real_state_dict.pth"), map_location="cpu", weights_only=True)
    model = from_official("bisrnet_real", state)
    op = CassiOperator(torch.ones(660, 660))          # geometry only: the real model takes no mask
    rows = []
    for n in range(1, 6):
        y = torch.from_numpy(load_measurement(shared_file("real", f"scene{n}.mat"), key="meas_real"))[None]
        out, cpu, wall = timed_forward(model, y, op)
        rows.append((f"scene{n}", psnr(out[:, 74:586, 74:586], load_cube(shared_file("pseudo_real", f"scene{n}.npz"))),
                     cpu, wall))
        print(f"  {rows[-1][0]}  {rows[-1][1]:6.2f} dB  {cpu:6.2f} CPU s  {wall:6.2f} s", flush=True)
    return rows


def summary(title: str, rows: list[tuple[str, float, float, float]]) -> str:
    values = np.array([r[1:] for r in rows])
    return (f"{title}: PSNR min {values[:, 0].min():.2f} / mean {values[:, 0].mean():.2f} dB "
            f"({int((values[:, 0] >= 45).sum())}/{len(rows)} >= 45 dB); per forward {values[:, 1].mean():.2f} CPU s, "
            f"{values[:, 2].mean():.2f} s wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-real", action="store_true", help="only the ten simulation scenes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"BiSRNet vs the official outputs ({torch.get_num_threads()} CPU threads)")
    print("simulation, 256 x 256 (kaist_meas -> pseudo_kaist):")
    lines = [summary("simulation 256 x 256", simulation_rows())]
    if not args.skip_real:
        print("real, 660 x 714 -> 660 x 660 (real/sceneN.mat -> pseudo_real):")
        lines.append(summary("real 660 x 714", real_rows()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
