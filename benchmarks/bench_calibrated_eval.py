"""Calibration + network reconstruction end to end, through the two command lines (issue 11, section 4).

For every pseudo-KAIST cube i (the scene the network should reconstruct):

1. ``calibrate.py simulate``: its measurement through the drifted instrument (``--mismatch``; N=4, K=2
   enlarged grid by default, ``--oversample 1 1`` the native grid of the issue's figures), Poisson 1e4 +
   0.5 % read noise with seed i (``--noise-peak 0``: none) -- the measurement ``eval.py`` simulates for II;
2. ``calibrate.py --solver S [--ckpt W] --out DIR/calibrations/sceneNN``: one blind calibration per scene
   (wall seconds of the whole command are recorded: what the user waits for);
3. ``eval.py kaist --model M --ckpt W --scenarios I,II,III,IV --calibration DIR/calibrations``: scenario III
   reads the calibration of the matching scene.

Prints the per-scene PSNR table, the mean recovery (III - II) / (IV - II) and the parameter errors.
The calibration model has the instrument's oversampling (``--model-oversample``).
Usage: python -m benchmarks.bench_calibrated_eval [--solver bisrnet] [--model bisrnet]
       [--mismatch dx=0.5,dy=0.3,theta=0.1] [--oversample 4 2] [--mask-reading auto] [--noise-peak 1e4] [--scenes 10]
       [--out outputs/calibrated_eval]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.io  # noqa: E402

from benchmarks.common import REPO, pseudo_kaist_cubes, shared_file  # noqa: E402
from evaluation.scenarios import UNDEFINED  # noqa: E402

WEIGHTS = REPO.parent / "shared" / "weights" / "bisrnet_simulation.pth"


def mst_layout(folder: Path, count: int) -> list[Path]:
    """``folder/Truth/sceneNN.mat`` (key img, (H, W, 28)) + ``folder/mask.mat`` from the pseudo-KAIST cubes;
    returns the cubes as .npz files for ``calibrate.py simulate``."""
    (folder / "Truth").mkdir(parents=True, exist_ok=True)
    (folder / "npz").mkdir(exist_ok=True)
    scipy.io.savemat(folder / "mask.mat", {"mask": scipy.io.loadmat(shared_file("kaist", "mask.mat"))["mask"]})
    files = []
    for name, cube in pseudo_kaist_cubes()[:count]:
        scipy.io.savemat(folder / "Truth" / f"{name}.mat", {"img": cube.numpy().transpose(1, 2, 0)})
        np.savez(folder / "npz" / f"{name}.npz", cube=cube.numpy())
        files.append(folder / "npz" / f"{name}.npz")
    return files


def run(command: list[str]) -> float:
    """Run a command in the repository; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *command], cwd=REPO, check=True)
    return time.perf_counter() - start


def recovery_line(results: dict) -> str:
    """The mean-PSNR recovery (III - II) / (IV - II) of ``eval.py kaist``'s results.json, or why it is undefined (IV
    no better than II, or better by less than a gap that means anything: ``recovery_undefined``)."""
    ratio = results["comparison"]["recovery_ratio"]["psnr"]
    if ratio is None:
        why = results[UNDEFINED]["recovery_ratio"]["psnr"]
        return f"recovery (III - II) / (IV - II) of the mean PSNR: undefined ({why})"
    return f"recovery (III - II) / (IV - II) of the mean PSNR: {ratio:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", default="bisrnet", help="inner solver of calibrate.py")
    parser.add_argument("--model", default="bisrnet", help="network eval.py reconstructs with")
    parser.add_argument("--ckpt", default=str(WEIGHTS), help="weights of the network (solver and model)")
    parser.add_argument("--mismatch", default="dx=0.5,dy=0.3,theta=0.1", help="the drift, eval.py syntax")
    parser.add_argument("--oversample", default=["4", "2"], nargs=2, metavar=("N", "K"),
                        help="instrument (simulator) oversampling; the calibration model uses the same")
    parser.add_argument("--mask-reading", default="auto", choices=("auto", "linear"),
                        help="calibrate.py --mask-reading (linear: the bilinear reading on every scene; auto may "
                             "keep cubic on some native-grid scenes, which eval.py --calibration DIR reconstructs "
                             "each through its own)")
    parser.add_argument("--noise-peak", default="1e4", help="photons at the brightest pixel (0: no noise)")
    parser.add_argument("--read-noise", default="0.005", help="Gaussian sigma / clean maximum")
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "outputs" / "calibrated_eval"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    cubes = mst_layout(out / "data", args.scenes)
    drift = dict(item.split("=") for item in args.mismatch.split(","))
    env_threads = ["--threads", str(args.threads)]
    noisy = float(args.noise_peak) > 0
    sim_noise = ["--noise-peak", args.noise_peak, "--read-noise", args.read_noise] if noisy else []
    eval_noise = ["--noise.peak", args.noise_peak, "--noise.read", args.read_noise, "--noise.seed", "0"] if noisy else []
    seconds = {}
    for index, cube in enumerate(cubes):
        y = out / "measurements" / f"{cube.stem}.npz"
        y.parent.mkdir(parents=True, exist_ok=True)
        run(["calibrate.py", "simulate", "--cube", str(cube), "--mask", str(out / "data" / "mask.mat"),
             *[a for k, v in drift.items() for a in (f"--{k}", v)], "--oversample", *args.oversample,
             *sim_noise, "--seed", str(index), "--out", str(y)])
        solver = ["--solver", args.solver] + (["--ckpt", args.ckpt] if args.solver not in ("heldout", "gap_tv") else [])
        seconds[cube.stem] = run(["calibrate.py", "--meas", str(y), "--mask", str(out / "data" / "mask.mat"),
                                  *solver, "--model-oversample", *args.oversample, "--mask-reading", args.mask_reading, "--out", str(out / "calibrations" / cube.stem), "--no-progress"])
        print(f"{cube.stem}: calibrate.py {seconds[cube.stem]:.0f} s wall", flush=True)
    run(["eval.py", *env_threads, "kaist", "--model", args.model, "--ckpt", args.ckpt,
         "--data.root", str(out / "data"), "--scenarios", "I,II,III,IV", "--mismatch", args.mismatch,
         "--oversample", *args.oversample, *eval_noise,
         "--calibration", str(out / "calibrations"), "--previews", "0", "--out", str(out / "eval")])
    results = json.loads((out / "eval" / "results.json").read_text())
    scenarios = results["scenarios"]
    print(f"\n{args.model} reconstructing, calibrations by calibrate.py --solver {args.solver}, drift {args.mismatch}")
    print(f"{'scene':8} {'I':>7} {'II':>7} {'III':>7} {'IV':>7} {'III-II':>7} {'IV-II':>7}  "
          "errors dx dy theta a1 alpha   cli s")
    for k, row in enumerate(scenarios["I"]["scenes"]):
        psnr = [scenarios[s]["scenes"][k]["psnr"] for s in ("I", "II", "III", "IV")]
        err = results["calibration"]["scenes"][k]["error"]
        print(f"{row['name']:8} " + " ".join(f"{p:7.2f}" for p in psnr)
              + f" {psnr[2] - psnr[1]:+7.2f} {psnr[3] - psnr[1]:+7.2f}  "
              + " ".join(f"{err[n]:+.3f}" for n in ("dx", "dy", "theta", "a1", "alpha"))
              + f"  {seconds[row['name']]:.0f}")
    mean = {s: scenarios[s]["mean"]["psnr"] for s in ("I", "II", "III", "IV")}
    print("mean     " + " ".join(f"{mean[s]:7.2f}" for s in mean)
          + f" {mean['III'] - mean['II']:+7.2f} {mean['IV'] - mean['II']:+7.2f}  mean |error| "
          + " ".join(f"{v:.3f}" for v in results["calibration"]["mean_abs_error"].values())
          + f"  max {max(seconds.values()):.0f} s")
    print(recovery_line(results))
    (out / "summary.json").write_text(json.dumps({"cli_seconds": seconds, "mean_psnr": mean,
                                                  "recovery_ratio": results["comparison"]["recovery_ratio"],
                                                  "mean_abs_error": results["calibration"]["mean_abs_error"]},
                                                 indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
