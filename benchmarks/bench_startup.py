"""Start-up of the entry points: ``--help``, and each one's smallest real run ("to first work").

Every command runs in a fresh subprocess, once to warm the OS file cache and numba's on-disk kernel
cache, then ``--repeats`` times; the table gives the best wall seconds and that run's CPU seconds
(the child's user + system time), so other processes on a shared machine inflate the wall figure
less. The load average is printed. Rows:

* ``--help`` of calibrate.py, eval.py, train.py and ``train.py fit --help`` (LightningCLI builds
  that from the classes, so it imports Lightning and the models);
* calibrate.py on a 32 x 32 synthetic measurement: whole run, and its own ``startup_s`` (first line
  of calibrate.py to the start of the calibration: imports and reading the files) from
  calibration.json;
* the calibration and GAP-TV kernels loaded from numba's cache in a fresh process (first call of
  each on tiny inputs), with numba's count of cache hits and misses (a miss: a kernel was compiled);
* eval.py kaist on one 32 x 32 synthetic scene with one GAP-TV iteration;
* train.py fit of the MST-S smoke config stopped after one training step, no logger.

Usage: python -m benchmarks.bench_startup [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

KERNELS = """
import time
start = time.perf_counter()
import torch
from calib.kernels import effective_masks, mask_products, pick, place, subspace_cg, subspace_normal
from calib.placement import PlacementIndex
from cassi.gap_tv import compile_tv_kernel
imported = time.perf_counter()
index = PlacementIndex([0, 1], [0, 1], [0, 2])
x, m, y = torch.ones(2, 2, 3, 4), torch.ones(2, 2, 3, 4), torch.ones(2, 3, 6)
place(x, m, index, 6); pick(y, m, index, 2, 4); mask_products(x, y, index, 4)
u = torch.ones(2, 1)
subspace_normal(x[:, :1], u, m, y, index)
subspace_cg(x[:, :1], y, y, m, u, 1.0, 0.0, torch.zeros(1), 1, index, True)
effective_masks(torch.ones(3, 4), torch.tensor([[0.1, 0.0, 0.0, 2.0, 0.0]], dtype=torch.float64),
                torch.ones(1, 2, 4), [0], 3, 2)
compile_tv_kernel()
first_calls = time.perf_counter() - imported
import numba
from calib import kernels
from cassi import gap_tv
stats = [f.stats for m in (kernels, gap_tv) for f in vars(m).values() if isinstance(f, numba.core.dispatcher.Dispatcher)]
hits, misses = (sum(sum(getattr(s, k).values()) for s in stats) for k in ("cache_hits", "cache_misses"))
print(f"{imported - start:.3f} {first_calls:.3f} {hits} {misses}")
"""


def timed(command: list[str], cwd: Path = REPO) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one subprocess run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{run.stderr[-2000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, run.stdout


def best_of(command: list[str], repeats: int) -> tuple[float, float, str]:
    timed(command)                                       # warm-up: file cache, numba cache
    return min((timed(command) for _ in range(repeats)), key=lambda r: r[0])


def write_inputs(folder: Path) -> tuple[Path, Path]:
    """A 32 x 32 synthetic measurement (N=4 K=2 simulator, small drift) and its mask."""
    code = (f"import numpy as np, torch; from data.synthetic import random_mask, synthetic_scene; "
            f"from cassi import Mismatch; from cassi.simulator import simulate_measurement; "
            f"cube, _ = synthetic_scene(32, 32, 28, seed=1); mask = random_mask(32, 32, seed=2); "
            f"y = simulate_measurement(torch.from_numpy(cube)[None], torch.from_numpy(mask), Mismatch(dx=0.4), 2, 4, 2); "
            f"np.savez(r'{folder / 'y.npz'}', y=y[0].numpy()); np.save(r'{folder / 'mask.npy'}', mask)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return folder / "y.npz", folder / "mask.npy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, command in (("calibrate.py --help", [python, "calibrate.py", "--help"]),
                               ("eval.py --help", [python, "eval.py", "--help"]),
                               ("train.py --help", [python, "train.py", "--help"]),
                               ("train.py fit --help", [python, "train.py", "fit", "--help"])):
            wall, cpu, _ = best_of(command, args.repeats)
            rows.append((label, wall, cpu, ""))
        meas, mask = write_inputs(folder)
        out = folder / "calibration"
        wall, cpu, _ = best_of([python, "calibrate.py", "--meas", str(meas), "--mask", str(mask), "--out", str(out),
                                "--no-progress", "--force"], args.repeats)
        timings = json.loads((out / "calibration.json").read_text())["timings"]
        rows.append(("calibrate.py, 32 x 32 measurement", wall, cpu,
                     f"start-up (imports, files) {timings['startup_s']:.2f} s, calibration "
                     f"{timings['total_s']:.2f} s (stage 0, incl. kernels from cache: {timings['0 setup_s']:.2f} s)"))
        wall, cpu, stdout = best_of([python, "-c", KERNELS], args.repeats)
        imports, first_calls, hits, misses = (float(v) for v in stdout.split())
        rows.append(("numba kernels from cache (fresh process)", wall, cpu,
                     f"imports {imports:.2f} s, first call of the 7 kernels {first_calls:.2f} s; numba cache "
                     f"{hits:.0f} hits, {misses:.0f} misses" + ("" if misses == 0 else " (NOT CACHED: compiled)")))
        wall, cpu, _ = best_of([python, "eval.py", "kaist", "--synthetic.count", "1", "--synthetic.size", "32",
                                "--gap.iterations", "1", "--previews", "0", "--out", str(folder / "eval"), "--force"],
                               args.repeats)
        rows.append(("eval.py kaist, one 32 x 32 scene, 1 GAP-TV iteration", wall, cpu, ""))
        wall, cpu, _ = best_of([python, "train.py", "fit", "--config", "configs/smoke/mst_s.yaml",
                                "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                                "--trainer.logger", "false",
                                "--trainer.default_root_dir", str(folder / "train")], args.repeats)
        rows.append(("train.py fit, MST-S smoke config, 1 step", wall, cpu, ""))
    print(f"{'command':56} {'wall s':>7} {'CPU s':>7}  notes")
    for label, wall, cpu, note in rows:
        print(f"{label:56} {wall:7.2f} {cpu:7.2f}  {note}")
    print(f"best of {args.repeats} runs after one warm-up; load average (1 min) {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
