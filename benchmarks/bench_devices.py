"""GPU check of the entry points, timed from the shell: what a user with a CUDA device runs, on ``cuda`` and on
the CPU, with the estimates, metrics and exit codes side by side.

    python -m benchmarks.bench_devices [--shared ../shared] [--out outputs/bench_devices.json] [--parts ...]

Parts (each a subprocess with its own time limit; wall seconds include start-up, imports and the writing of
the outputs, as a user waits for them):

* ``calib``: ``calibrate.py --meas kaist_meas/scene01_snapshot.npz`` on ``--device cpu`` twice (the first
  run compiles the numba kernels into their cache, as a user's first run does), then on ``cuda`` (default
  options: held-out criterion, forward-model selection, status tests); the estimates must agree.
* ``calib_bisrnet``: the same snapshot with ``--solver bisrnet --ckpt weights/bisrnet_simulation.pth``
  on ``cuda``.
* ``real``: real TSA capture 1 (660 x 714, ``real/scene1.mat`` with ``real/mask.mat``) on ``cuda``
  (the CPU figure, 120-200 s on one thread, is in the README).
* ``real_joint``: real captures 1 and 2 fitted jointly (``--meas scene1.mat scene2.mat``) on ``cuda``.
* ``check_solver``: the snapshot with ``--check-solver`` (GAP-TV through the nominal and the calibrated
  instrument operator) on ``cuda``.
* ``eval``: ``eval.py kaist --model bisrnet`` with the official weights on ``cpu`` and ``cuda`` (synthetic
  scenes at the KAIST mask's size): the mean PSNR must agree.
* ``eval_real``: ``eval.py real --model bisrnet_real`` with the official real-data weights on the first two
  real captures, on ``cpu`` and ``cuda``: the mean scaled residual must agree (there is no truth to score).
* ``profile``: ``calib.calibrate`` of the snapshot on ``cuda`` in-process under ``torch.profiler``: the busiest
  CUDA kernels, the kernel count and the GPU's busy time against the wall time (whether the GPU path is bound
  by the GPU or by the host launching its many small kernels; on an H200 it took 11.7 CPU s of 12 s wall).
* ``train``: ``train.py fit`` smoke runs (MST-S, HSRA, CRSDUN, BiSRNet) with ``--trainer.accelerator gpu
  --trainer.precision bf16-mixed``; they must finish with exit code 0.

Without a CUDA device it prints one line and exits 0. ``--shared`` is the folder laid out as ``../shared``
(``data/kaist``, ``data/kaist_meas``, ``data/real``, ``weights``). Figures from one run: README, "Speed and
devices", "On a GPU".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, SHARED_DATA

PARTS = ("calib", "train", "eval", "real", "calib_bisrnet", "real_joint", "check_solver", "eval_real", "profile")
ESTIMATE_KEYS = ("dx", "dy", "theta", "a1", "alpha")
SMOKE_CONFIGS = ("mst_s", "hsra_s", "crsdun_3stg", "bisrnet")


def timed_run(argv: list[str], timeout: float, log: Path) -> dict[str, Any]:
    """Run ``python argv`` in the repository, its output to ``log``; exit code and wall seconds."""
    start = time.perf_counter()
    with open(log, "w") as stream:
        try:
            rc = subprocess.run([sys.executable, *argv], cwd=REPO, stdout=stream, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - start
    tail = log.read_text(errors="replace").splitlines()[-(3 if rc == 0 else 25):]
    shown = " / ".join(tail)[-(300 if rc == 0 else 3000):]
    print(f"  {' '.join(argv[:3])} ... rc={rc} wall {wall:.1f} s | {shown}", flush=True)
    return {"argv": argv, "rc": rc, "wall_s": round(wall, 2), "tail": tail}


def calibration(argv: list[str], device: str, work: Path, name: str, timeout: float) -> dict[str, Any]:
    """``calibrate.py argv --device device``; the run record with its estimate and status."""
    out = work / name
    run = timed_run(["calibrate.py", *argv, "--device", device, "--out", str(out)], timeout, work / f"{name}.log")
    result = out / "calibration.json"
    if result.exists():
        report = json.loads(result.read_text())
        run["estimate"] = {key: report["estimate"][key] for key in ESTIMATE_KEYS}
        run["status"] = report.get("status")
    return run


def largest_difference(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """The largest absolute difference between two runs' estimates (px, deg, px/band), or None."""
    if "estimate" not in a or "estimate" not in b:
        return None
    return max(abs(a["estimate"][key] - b["estimate"][key]) for key in ESTIMATE_KEYS)


def evaluation(argv: list[str], device: str, work: Path, name: str, timeout: float) -> dict[str, Any]:
    """``eval.py argv --device device``; the run record with the mean metrics."""
    out = work / name
    run = timed_run(["eval.py", *argv, "--device", device, "--out", str(out)], timeout, work / f"{name}.log")
    result = out / "results.json"
    if result.exists():
        run["mean"] = json.loads(result.read_text())["mean"]
    return run


def profile_calibration(snapshot: Path, rows: int = 15) -> None:
    """Print where ``calib.calibrate`` of ``snapshot`` (an .npz with ``y`` and ``mask``) spends its time on ``cuda``:
    the top CUDA kernels by GPU time, the kernel count, and the GPU's busy seconds against the wall seconds."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from calib import calibrate

    with np.load(snapshot) as data:
        y, mask = torch.from_numpy(data["y"]), torch.from_numpy(data["mask"])
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        calibrate(y, mask, device="cuda", progress=False)
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    kernels = [event for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(event.device_time for event in kernels) / 1e6
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows))
    print(f"profile: {len(kernels)} CUDA kernels, GPU busy {busy:.1f} s of {wall:.1f} s wall (profiled)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(SHARED_DATA.parent),
                        help="folder laid out as ../shared (default: $CASSI_SHARED or ../shared)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--timeout", type=float, default=150, help="seconds allowed to each subprocess")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_devices.json"))
    parser.add_argument("--profile-child", default=None, help=argparse.SUPPRESS)   # the profile part's subprocess
    args = parser.parse_args()
    if args.profile_child:
        profile_calibration(Path(args.profile_child))
        return 0
    shared, parts = Path(args.shared), args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    import torch

    if not torch.cuda.is_available():
        print("bench_devices: no CUDA device (torch.cuda.is_available() is False): nothing timed")
        return 0
    snapshot = shared / "data" / "kaist_meas" / "scene01_snapshot.npz"
    weights = shared / "weights" / "bisrnet_simulation.pth"
    real = shared / "data" / "real"
    real_mask = ["--mask", str(real / "mask.mat")]
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "cpu_threads": os.cpu_count(), "runs": {}}
    print(f"bench_devices: {report['device']}, torch {report['torch']}, {report['cpu_threads']} CPU threads",
          flush=True)
    runs = report["runs"]
    with tempfile.TemporaryDirectory(prefix="bench_devices_") as tmp:
        work = Path(tmp)
        for part in parts:
            print(f"[{part}]", flush=True)
            if part == "calib":
                for name, device in (("calib_cpu_first", "cpu"), ("calib_cpu", "cpu"), ("calib_cuda", "cuda")):
                    runs[name] = calibration(["--meas", str(snapshot)], device, work, name, args.timeout)
                runs["calib_difference"] = largest_difference(runs["calib_cpu"], runs["calib_cuda"])
                print(f"  largest cpu/cuda estimate difference: {runs['calib_difference']}", flush=True)
            elif part == "calib_bisrnet":
                runs[part] = calibration(["--meas", str(snapshot), "--solver", "bisrnet", "--ckpt", str(weights)],
                                         "cuda", work, part, args.timeout)
            elif part in ("real", "real_joint"):
                captures = (1,) if part == "real" else (1, 2)
                runs[part] = calibration(["--meas", *(str(real / f"scene{k}.mat") for k in captures), *real_mask],
                                         "cuda", work, part, 2 * args.timeout)
            elif part == "check_solver":
                runs[part] = calibration(["--meas", str(snapshot), "--check-solver"], "cuda", work, part, args.timeout)
            elif part == "eval":
                for device in ("cpu", "cuda"):
                    runs[f"eval_{device}"] = evaluation(
                        ["kaist", "--model", "bisrnet", "--ckpt", str(weights), "--mask",
                         str(shared / "data" / "kaist" / "mask.mat"), "--synthetic.count", "3"],
                        device, work, f"eval_{device}", args.timeout)
            elif part == "eval_real":
                real_weights = shared / "weights" / "bisrnet_real_state_dict.pth"
                for device in ("cpu", "cuda"):
                    runs[f"eval_real_{device}"] = evaluation(
                        ["real", "--model", "bisrnet_real", "--ckpt", str(real_weights), "--data.root",
                         str(real), "--limit", "2"],
                        device, work, f"eval_real_{device}", args.timeout)
            elif part == "profile":
                runs[part] = timed_run(["-m", "benchmarks.bench_devices", "--profile-child", str(snapshot)],
                                       2 * args.timeout, work / "profile.log")
                print((work / "profile.log").read_text(errors="replace")[-6000:], flush=True)
            elif part == "train":
                for config in SMOKE_CONFIGS:
                    runs[f"train_{config}"] = timed_run(
                        ["train.py", "fit", "--config", f"configs/smoke/{config}.yaml", "--trainer.logger", "false",
                         "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
                         "--trainer.default_root_dir", str(work / f"train_{config}")],
                        args.timeout, work / f"train_{config}.log")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
