"""Start-up of the entry points: ``--help``, and each one's smallest real run ("to first work").

Every command runs in a fresh subprocess, once to warm the OS file cache, numba's on-disk kernel
cache and train.py's stored help texts, then ``--repeats`` times; the table gives the best wall seconds
and that run's CPU seconds (the child's user + system time), so other processes on a shared machine
inflate the wall figure less. The load average is printed. With ``--baseline DIR`` (another checkout,
e.g. ``git worktree add /tmp/base main``) every command also runs there, alternating with this checkout
run by run, and the table adds that checkout's figures and the ratios this / baseline, measured in one
run. Rows:

* ``--help`` of calibrate.py, eval.py, train.py and ``train.py fit --help``: train.py prints
  LightningCLI's text from its store (:mod:`training.help_cache`); the next row is ``train.py fit --help``
  with an empty store (LightningCLI builds the text from the classes: Lightning, torch and the project
  are imported), what the first request after an upgrade or a change of the sources costs;
* calibrate.py on a 32 x 32 synthetic measurement: whole run, and its own ``startup_s`` (first line
  of calibrate.py to the start of the calibration: imports and reading the files) from
  calibration.json;
* the calibration and GAP-TV kernels loaded from numba's cache in a fresh process (first call of
  each on tiny inputs), with numba's count of cache hits and misses (a miss: a kernel was compiled);
* eval.py kaist on one 32 x 32 synthetic scene with one GAP-TV iteration;
* train.py fit of the MST-S smoke config, no logger: with ``--trainer.max_steps 0`` (everything a run
  does except its steps: imports, options, data, model, trainer, the run folder), then stopped after one
  training step; last with 0 steps and the default logger (W&B, offline: it imports wandb and starts a run).

Last, what the 0-step fit imports (``python -X importtime``, this checkout, one run): the own time of each
top-level package and the module that first imported it, i.e. what remains of the start-up.

Usage: python -m benchmarks.bench_startup [--repeats 3] [--baseline DIR]
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


Timing = tuple[float, float, str]                      # wall seconds, CPU seconds, stdout
IMPORT_ROWS = 16


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> Timing:
    """(wall seconds, CPU seconds, stdout) of one subprocess run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} (in {cwd}) failed:\n{run.stderr[-2000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, run.stdout


def best_of(command: list[str], repos: list[Path], repeats: int, fresh_store: bool = False) -> list[Timing]:
    """Per checkout in ``repos``, the best of ``repeats`` runs after one warm-up (file cache, numba cache,
    stored help); the checkouts alternate run by run. ``fresh_store``: every run gets an empty help store."""
    def once(repo: Path) -> Timing:
        if not fresh_store:
            return timed(command, repo, {})
        with tempfile.TemporaryDirectory() as store:
            return timed(command, repo, {"XDG_CACHE_HOME": store})

    shown = " ".join(Path(part).name if part.startswith("/") else part for part in command[1:4])
    print(f"timing {shown} ... ({1 + repeats} runs per checkout)", file=sys.stderr, flush=True)
    for repo in repos:
        once(repo)
    runs = [[once(repo) for repo in repos[::-1]][::-1] for _ in range(repeats)]     # this checkout's run last
    return [min((run[k] for run in runs), key=lambda r: r[0]) for k in range(len(repos))]


def import_table(command: list[str], cwd: Path = REPO) -> tuple[list[tuple[str, float, str]], float]:
    """Run ``command`` (a ``python ...`` list) under ``-X importtime``: ([(top-level package, seconds of its own
    modules, the module outside it that first imported it)], total import seconds), largest first. The
    seconds include importtime's own overhead (a few per cent)."""
    run = subprocess.run([command[0], "-X", "importtime", *command[1:]], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    records = []                                         # (depth, module, own microseconds), children first
    for line in run.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            own, _, name = line.removeprefix("import time:").split("|")
            records.append((len(name) - len(name.lstrip()), name.strip(), int(own)))
    own_time: dict[str, int] = {}
    imported_by: dict[str, str] = {}
    for i, (depth, name, own) in enumerate(records):
        package = name.split(".")[0]
        own_time[package] = own_time.get(package, 0) + own
        if package not in imported_by:                   # its first module: walk up to an outside ancestor
            imported_by[package], level = "(the command)", depth
            for up_depth, up_name, _ in records[i + 1:]:
                if up_depth < level:                     # the next shallower record is an ancestor
                    level = up_depth
                    if up_name.split(".")[0] != package:
                        imported_by[package] = up_name
                        break
    table = sorted(((p, t / 1e6, imported_by[p]) for p, t in own_time.items()), key=lambda r: -r[1])
    return table, sum(own_time.values()) / 1e6


def train_fit(python: str, steps: int, folder: Path, logger: bool = False) -> list[str]:
    """train.py fit of the MST-S smoke config stopped after ``steps`` training steps; ``logger``: the default
    (W&B, offline here), else none."""
    return [python, "train.py", "fit", "--config", "configs/smoke/mst_s.yaml", "--trainer.max_steps", str(steps),
            "--trainer.limit_val_batches", "0", *([] if logger else ["--trainer.logger", "false"]),
            "--trainer.default_root_dir", str(folder / f"train{steps}{'-wandb' if logger else ''}")]


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
    parser.add_argument("--repeats", type=int, default=3, help="runs per command after one warm-up; the best is kept")
    parser.add_argument("--baseline", type=Path, help="another checkout to run every command in too (ratios)")
    args = parser.parse_args()
    repos = [REPO] + ([args.baseline.resolve()] if args.baseline else [])
    python = sys.executable
    load = os.getloadavg()[0]
    rows = []                                            # (label, timings per checkout, note)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, command, fresh in (
                ("calibrate.py --help", ["calibrate.py", "--help"], False),
                ("eval.py --help", ["eval.py", "--help"], False),
                ("train.py --help", ["train.py", "--help"], False),
                ("train.py fit --help", ["train.py", "fit", "--help"], False),
                ("train.py fit --help, empty help store", ["train.py", "fit", "--help"], True)):
            rows.append((label, best_of([python, *command], repos, args.repeats, fresh), ""))
        meas, mask = write_inputs(folder)
        out = folder / "calibration"
        timings = best_of([python, "calibrate.py", "--meas", str(meas), "--mask", str(mask), "--out", str(out),
                           "--no-progress", "--force"], repos, args.repeats)
        stages = json.loads((out / "calibration.json").read_text())["timings"]    # this checkout's last run
        rows.append(("calibrate.py, 32 x 32 measurement", timings,
                     f"start-up (imports, files) {stages['startup_s']:.2f} s, calibration "
                     f"{stages['total_s']:.2f} s (stage 0, incl. kernels from cache: {stages['0 setup_s']:.2f} s)"))
        timings = best_of([python, "-c", KERNELS], repos, args.repeats)
        imports, first_calls, hits, misses = (float(v) for v in timings[0][2].split())
        rows.append(("numba kernels from cache (fresh process)", timings,
                     f"imports {imports:.2f} s, first call of the 7 kernels {first_calls:.2f} s; numba cache "
                     f"{hits:.0f} hits, {misses:.0f} misses" + ("" if misses == 0 else " (NOT CACHED: compiled)")))
        timings = best_of([python, "eval.py", "kaist", "--synthetic.count", "1", "--synthetic.size", "32",
                           "--gap.iterations", "1", "--previews", "0", "--out", str(folder / "eval"), "--force"],
                          repos, args.repeats)
        rows.append(("eval.py kaist, one 32 x 32 scene, 1 GAP-TV iteration", timings, ""))
        for steps, logger in ((0, False), (1, False), (0, True)):
            timings = best_of(train_fit(python, steps, folder, logger), repos, args.repeats)
            rows.append((f"train.py fit, MST-S smoke config, {steps} step{'s' if steps != 1 else ''}"
                         + (", offline W&B" if logger else ""), timings,
                         "start-up: everything but the steps" if steps == 0 else ""))
        imports, import_total = import_table(train_fit(python, 0, folder))
    header = f"{'command':56} {'wall s':>7} {'CPU s':>7}"
    if args.baseline:
        header += f" {'base wall':>9} {'base CPU':>9} {'wall ratio':>10} {'CPU ratio':>9}"
    print(header + "  notes")
    for label, timings, note in rows:
        (wall, cpu, _), line = timings[0], f"{label:56} {timings[0][0]:7.2f} {timings[0][1]:7.2f}"
        if args.baseline:
            base_wall, base_cpu, _ = timings[1]
            line += f" {base_wall:9.2f} {base_cpu:9.2f} {wall / base_wall:10.2f} {cpu / base_cpu:9.2f}"
        print(f"{line}  {note}")
    print(f"best of {args.repeats} runs after one warm-up"
          + (f", alternating with the baseline {args.baseline}" if args.baseline else "")
          + f"; load average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
          f"({os.cpu_count()} CPUs)")
    print(f"\nimports of train.py fit with 0 steps (this checkout, python -X importtime, one run): "
          f"{import_total:.2f} s in all; own time of each top-level package, the first module that imported it")
    for package, seconds, importer in imports[:IMPORT_ROWS]:
        print(f"  {package:24} {seconds:6.2f}  {importer}")
    print(f"  {'(the rest)':24} {sum(r[1] for r in imports[IMPORT_ROWS:]):6.2f}")


if __name__ == "__main__":
    main()
