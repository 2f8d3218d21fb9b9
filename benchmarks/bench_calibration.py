"""Blind calibration on the 10 pseudo-KAIST cubes and ten pseudo-real crops, per inner solver, plus the
real-data checks.

``--solvers heldout,gap_tv,bisrnet`` (default heldout): the inner solver of ``calib.calibrate`` (networks
load ``--ckpt``, default the official BiSRNet simulation weights). Sets: (a) the 10 pseudo-KAIST cubes
(``--scenes``), (b) ``--pseudo-real`` 256 x 256 crops of ``../shared/data/pseudo_real`` (two per capture:
rows/cols 0:256 and 256:512, each divided by its maximum) with the KAIST mask and their own draws
(seed + 2) -- (b) matters because the pseudo-KAIST cubes are BiSRNet's own outputs -- and (c)
``--fresh-crops`` the off-diagonal crops (rows 0:256 x cols 256:512, rows 256:512 x cols 0:256) with
their own draws (seed + 11): a held-out set, since (a) and (b) have been used to choose settings.
Every cube is measured with its own random mismatch (dx, dy in [-3, 3] px, theta in [-1, 1] deg,
a1 in [1.95, 2.05], alpha in [-1, 1] deg) through the N=4, K=2 simulator with Poisson (peak 1e4) +
Gaussian (sigma = 0.005 x clean maximum) noise; ``calib.calibrate`` sees only that measurement and the
KAIST mask. Scenarios I, Ih, II-IV (evaluation.scenarios) reconstruct with GAP-TV through the native-grid
operator (nominal / estimated / true mismatch) and through the calibration forward model (N=4, K=2; the
"-model" columns); recovery = (III - II) / (IV - II); model error = IV-model - IV. Tolerances:
|dx|, |dy| <= 0.1 px, theta <= 0.05 deg, a1 <= 0.01, alpha <= 0.15 deg.

Seconds, per scene: "in-process" is wall and CPU of ``calib.calibrate`` called in this process (no
solver check, as the CLI by default); "CLI" runs what a user runs, ``python calibrate.py --meas y.npz
--mask mask.mat --out DIR`` as a subprocess on the same measurement, timed from its start to
calibration.json written and to its exit (the figures come last), with the child's CPU seconds (CPU
time is what other processes on a shared machine do not inflate; the load average is printed).
``--device cuda`` runs both on the GPU; without one a final line times scene01 on ``cuda`` when a CUDA
device is present and says "no CUDA device" otherwise.

Options: ``--kaist-meas N``: the first N real KAIST snapshots (made with the nominal mask and the native
operator), each handed a mask warped by the inverse of a known (dx, dy, theta): the calibrator must
find that warp with default options (the forward model chosen by the data, ``calib.model_selection``).
``--real N``: the first N of the 5 real captures (660 x 714) with the real 660 mask (issue 12 §3): (a) each
calibrated alone (estimate, held-out residual before / after, the model chosen) and the spread
(max - min) of the estimates against dx, dy 0.1 px, theta 0.05 deg, a1 0.005, alpha 0.15 deg, and chi^2 per
degree of freedom of the estimates about their weighted mean, with the status's uncertainties (about 1 when
the captures differ by what those measure); (b) leave
one out: one instrument calibrated on the other N-1 jointly, then the blind score of the capture left
out (its held-out prediction error through the calibration model at the nominal point vs at that
estimate); ``--real-parts alone|loo`` runs one of them. ``--landscapes``: the criterion comparison
figure (plain GAP-TV residual, GAP-TV held-out, Tikhonov objective, Tikhonov held-out) on one scene.
``--solver-landscapes``: 1-D slices of the solver criteria (held-out CG with BiSRNet's cube as prior
mean, with and without the held-out pixels in the network's input; GAP-TV alone) and of the plain
held-out criterion through the truth of two scenes.
``--gradient-probe``: Algorithm 2's gradient through the gap_tv and bisrnet criteria, by differences and
by autograd (README, "Inner solver (issue 11)").
Usage: python -m benchmarks.bench_calibration [--solvers heldout,gap_tv,bisrnet] [--scenes 10]
       [--pseudo-real 10] [--fresh-crops 10] [--skip 5] [--threads 2] [--no-cli] [--device cpu] [--kaist-meas 3]
       [--real 5 [--real-parts alone,loo] [--real-left-out scene4,scene5]]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import REPO, kaist_mask, pseudo_kaist_cubes, shared_file  # noqa: E402
from calib import calibrate  # noqa: E402
from calib.solvers import GAP_TV, HELD_OUT, gap_tv_solver  # noqa: E402
from cassi import Mismatch  # noqa: E402
from cassi.errors import EXIT_CALIBRATION_FAILED  # noqa: E402
from cassi.files import save_figure, write_text  # noqa: E402
from cassi.tolerance import CALIBRATION_TOLERANCE  # noqa: E402
from cassi.warp import warp_mask  # noqa: E402
from data.kaist import Scene  # noqa: E402
from evaluation.calibration import PER_SCENE, CalibratePerScene  # noqa: E402
from evaluation.protocol import Noise  # noqa: E402
from evaluation.scenarios import LIVE, ScenarioSetup, run_scenarios  # noqa: E402

TOLERANCE = CALIBRATION_TOLERANCE
DRAW = {"dx": (-3, 3), "dy": (-3, 3), "theta": (-1, 1), "a1": (1.95, 2.05), "alpha": (-1, 1)}
NOISE_PEAK, NOISE_READ = 1e4, 0.005        # Poisson photons at the clean maximum, Gaussian sigma / clean maximum


BISRNET_WEIGHTS = REPO.parent / "shared" / "weights" / "bisrnet_simulation.pth"


def run_cli(y: torch.Tensor, mask_file: Path, device: str, threads: int, solver: list[str]) -> dict:
    """``python calibrate.py --meas y.npz --mask MASK [--solver S --ckpt W] --out DIR`` in a subprocess: wall seconds from its
    start to calibration.json written and to its exit, its CPU seconds, its start-up and estimate."""
    with tempfile.TemporaryDirectory() as folder:
        meas, out = Path(folder) / "y.npz", Path(folder) / "out"
        np.savez(meas, y=y.numpy())
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        done = subprocess.run([sys.executable, str(REPO / "calibrate.py"), "--meas", str(meas), "--mask",
                               str(mask_file), "--out", str(out), "--device", device, "--no-progress", *solver],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL)
        if done.returncode not in (0, EXIT_CALIBRATION_FAILED):    # a "failed" status is a result, not a crash
            raise subprocess.CalledProcessError(done.returncode, done.args)
        end = time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        written = out / "calibration.json"
        content = json.loads(written.read_text())
        return {"wall_to_json": written.stat().st_mtime - start, "wall_to_exit": end - start,
                "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                "startup": content["timings"].get("startup_s"), "estimate": content["estimate"]}


class TimedCalibrator:
    """``calib.calibrate`` as a scenario-III calibrator that keeps the result and its wall / CPU seconds,
    then (``cli``) the same calibration through ``calibrate.py`` in a subprocess. Each scene's calibration chooses
    its forward model (``--forward-model auto``): III-model goes through it, as in ``eval.py kaist``
    (``evaluation.calibration.CalibratePerScene.record_model``)."""

    oversample = None                   # chosen per scene
    mask_interpolation = PER_SCENE

    def __init__(self, solver: str = HELD_OUT, ckpt: str | None = None, device: str = "cpu", cli: bool = True,
                 threads: int = 2) -> None:
        self.solver, self.ckpt, self.device, self.cli, self.threads = solver, ckpt, device, cli, threads
        self.models = CalibratePerScene(solver, ckpt)
        self.model_frames = self.models.model_frames
        self.description = {"source": LIVE, "solver": solver, "ckpt": ckpt,
                            "forward_models": self.models.forward_models}

    def __call__(self, y: torch.Tensor, mask: torch.Tensor, scene: str = "") -> Mismatch:
        wall, cpu = time.perf_counter(), time.process_time()
        self.result = calibrate(y[0], mask, solver=self.solver, ckpt=self.ckpt, progress=False, solver_check=False,
                                device=self.device)
        self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu
        estimate = self.models.record_model(self.result, mask, scene)
        self.cli_run = run_cli(y[0], shared_file("kaist", "mask.mat"), self.device, self.threads,
                               ["--solver", self.solver] + (["--ckpt", self.ckpt] if self.ckpt else [])
                               ) if self.cli else None
        return estimate


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def model_choice(result) -> str:
    """The forward model the calibration chose and the candidates' held-out scores, in one phrase."""
    selection = result.settings["model_selection"]
    mirror = result.settings["mirror_test"]
    moved = f"; a1 {mirror['a1']:.4f} set to {mirror['step']} by the mirror test" if mirror["applied"] else ""
    if selection["mode"] != "auto":
        return "model N={}, K={} (named){}".format(*selection["chosen"], moved)
    scores = " ".join("{},{}: {:.5f}".format(*c["oversample"], c["score"]) for c in selection["candidates"])
    return (f"model N={selection['chosen'][0]}, K={selection['chosen'][1]} ({scores}; margin "
            f"{selection['margin_in_standard_errors']:.1f} SE){moved}")


def draw_mismatch(rng: np.random.Generator) -> Mismatch:
    return Mismatch(**{k: float(rng.uniform(*v)) for k, v in DRAW.items()})


BENCHMARK_CORNERS = ((0, 0), (256, 256))     # the pseudo-real set: the diagonal crops
FRESH_CORNERS = ((0, 256), (256, 0))         # the fresh set: the off-diagonal ones, never used to tune anything


def pseudo_real_crops(count: int, corners: tuple[tuple[int, int], ...] = BENCHMARK_CORNERS
                      ) -> list[tuple[str, torch.Tensor]]:
    """``count`` 256 x 256 crops of the pseudo-real cubes, at the (row, col) ``corners`` of each, max 1;
    named ``sceneN_R`` on the diagonal, ``sceneN_R_C`` elsewhere."""
    from data.io import load_cube

    crops = []
    for path in sorted(shared_file("pseudo_real").glob("scene*.npz")):
        cube = torch.from_numpy(load_cube(path))
        for row, col in corners:
            crop = cube[:, row:row + 256, col:col + 256]
            name = f"{path.stem}_{row}" if row == col else f"{path.stem}_{row}_{col}"
            crops.append((name, crop / crop.max()))
    return crops[:count]


def solver_ckpt(solver: str, ckpt: str | None) -> str | None:
    """The checkpoint of a network solver: ``--ckpt``, or the official BiSRNet weights for bisrnet."""
    if solver in (HELD_OUT, GAP_TV):
        return None
    if ckpt is None and solver == "bisrnet":
        return str(BISRNET_WEIGHTS)
    return ckpt


def drifted_scenes(cubes: list[tuple[str, torch.Tensor]], rng: np.random.Generator, noise_seed: int,
                   solver: str, ckpt: str | None, args: argparse.Namespace) -> list[dict]:
    """Calibrate every cube, measured with its own random mismatch; GAP-TV scenarios; per-scene rows."""
    mask = kaist_mask()
    rows = []
    load = os.getloadavg()[0]
    columns = ("I", "Ih", "II", "III", "IV", "Ih-model", "III-model", "IV-model")
    header = (f"{'scene':8} {'param':6} {'true':>8} {'est':>8} {'err':>8}  | "
              + " ".join(f"{c:>9}" for c in columns)
              + f" {'ratio':>6} {'pass':>5} {'status':>9} | {'in-process s':>12} {'cpu s':>6} | {'CLI s':>6}"
              f" {'(exit)':>6} {'cpu s':>6} {'same':>5}")
    print(f"solver {solver}" + (f" ({ckpt})" if ckpt else ""))
    print(header)
    for index, (name, cube) in enumerate(cubes):
        truth = draw_mismatch(rng)
        if index < args.skip:                  # its draw is made all the same: the others keep theirs
            continue
        setup = ScenarioSetup(scenarios=("I", "Ih", "II", "III", "IV"), mismatch=truth, oversample=(4, 2),
                              noise=Noise(peak=NOISE_PEAK, read=NOISE_READ, seed=noise_seed + index))
        calibrator = TimedCalibrator(solver, ckpt, args.device, not args.no_cli, args.threads)
        report = run_scenarios([Scene(name, cube)], mask, gap_tv_solver(), setup, calibrator)
        est, tru = calibrator.result.estimate.to_dict(), truth.to_dict()
        err = {k: est[k] - tru[k] for k in tru}
        ok = {k: abs(err[k]) <= TOLERANCE[k] for k in err}
        psnr = {key: block["mean"]["psnr"] for key, block in report["scenarios"].items()}
        ratio = report["comparison"]["recovery_ratio"]["psnr"]
        row = {"scene": name, "true": tru, "estimate": est, "error": err, "pass": ok, "pass_all": all(ok.values()),
               "status": calibrator.result.status, "reasons": calibrator.result.reasons,
               "status_tests": calibrator.result.tests, "psnr": psnr,
               "comparison": {k: v["psnr"] for k, v in report["comparison"].items()},
               "recovery_ratio": ratio, "seconds": calibrator.wall, "cpu_seconds": calibrator.cpu,
               "cli": calibrator.cli_run,
               "held_out_nominal": calibrator.result.nominal_score, "held_out_calibrated": calibrator.result.score,
               "model_selection": calibrator.result.settings["model_selection"],
               "mirror_test": calibrator.result.settings["mirror_test"], "timings": calibrator.result.timings}
        rows.append(row)
        cli = calibrator.cli_run
        cli_text = (f"{cli['wall_to_json']:6.1f} {cli['wall_to_exit']:6.1f} {cli['cpu']:6.1f} "
                    f"{str(cli['estimate'] == est):>5}" if cli else f"{'-':>6} {'-':>6} {'-':>6} {'-':>5}")
        for j, k in enumerate(tru):
            tail = ""
            if j == 0:
                tail = ("  | " + " ".join(f"{psnr[c]:9.2f}" for c in columns)
                        + f" {(ratio if ratio is not None else math.nan):6.3f} {str(row['pass_all']):>5} "
                        f"{row['status']:>9} | {row['seconds']:12.1f} {row['cpu_seconds']:6.1f} | {cli_text}")
            print(f"{name if j == 0 else '':8} {k:6} {tru[k]:8.4f} {est[k]:8.4f} {err[k]:+8.4f}"
                  f"{'' if ok[k] else ' X'}{tail}", flush=True)
        print(f"{'':8} {model_choice(calibrator.result)}")
        for reason in row["reasons"]:
            print(f"{'':8} {row['status']}: {reason}")
    passed = sum(r["pass_all"] for r in rows)
    ratios = [r["recovery_ratio"] for r in rows if r["recovery_ratio"] is not None]
    print(f"\n{solver}: scenes passing all tolerances: {passed}/{len(rows)} (target >= 9/10)")
    for k in TOLERANCE:
        errs = [abs(r["error"][k]) for r in rows]
        print(f"  {k:6} |err| mean {np.mean(errs):.4f} max {np.max(errs):.4f}  within {TOLERANCE[k]}: "
              f"{sum(e <= TOLERANCE[k] for e in errs)}/{len(errs)}")
    statuses = {s: [r["scene"] for r in rows if r["status"] == s] for s in ("ok", "ambiguous", "failed")}
    print("status: " + ", ".join(f"{s} {len(v)}" for s, v in statuses.items())
          + f"; scenes in tolerance not ok: {[r['scene'] for r in rows if r['pass_all'] and r['status'] != 'ok']}"
          + f"; ok but out of tolerance (overclaims): {[r['scene'] for r in rows if r['status'] == 'ok' and not r['pass_all']]}")
    print(uncertainty_coverage(rows))
    print(f"mean recovery ratio: {np.mean(ratios):.3f} (target >= 0.9); mean PSNR "
          + " / ".join(f"{c} {np.mean([r['psnr'][c] for r in rows]):.2f}" for c in (*columns, "II-model")))
    parts = ("gap_i_iv", "instrument", "drift", "model_error")
    print("mean I - IV gap (dB) = instrument + drift + model error: "
          + " / ".join(f"{p} {np.mean([r['comparison'][p] for r in rows]):+.2f}" for p in parts))
    walls, cpus = [r["seconds"] for r in rows], [r["cpu_seconds"] for r in rows]
    print(f"in-process seconds per scene ({args.device}, {torch.get_num_threads()} threads): median {_median(walls):.1f} "
          f"max {max(walls):.1f} wall, median {_median(cpus):.1f} max {max(cpus):.1f} CPU")
    clis = [r["cli"] for r in rows if r["cli"]]
    if clis:
        for key, label in (("wall_to_json", "start to calibration.json"), ("wall_to_exit", "start to exit"),
                           ("cpu", "CPU")):
            values = [c[key] for c in clis]
            print(f"CLI seconds per scene, {label}: median {_median(values):.1f} max {max(values):.1f}"
                  + (" (target: median <= 30, max <= 40)" if key == "wall_to_json" else ""))
        print(f"CLI start-up (process start to calibration start): median {_median([c['startup'] for c in clis]):.1f} s")
    print(f"machine load average (1 min): {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
          f"({os.cpu_count()} CPUs)")
    if args.device == "cpu":
        gpu_line(cubes[args.skip][1], rows[0]["true"], noise_seed + args.skip, solver, ckpt, args.threads)
    return rows


def uncertainty_coverage(rows: list[dict]) -> str:
    """How often the true error lies within 1, 2, 3 of the status's uncertainties (``status_tests.uncertainty``:
    the criterion's noise and prior sensitivity in quadrature), and within 1, 2, 3 of the noise-only standard
    errors (Gaussian: 68 / 95 / 99.7 %)."""
    rows = [r for r in rows if "uncertainty" in r["status_tests"]]
    if not rows:
        return "uncertainty: none (no status tests)"
    lines = []
    for key, label in (("uncertainty", "uncertainties"), ("standard_error", "criterion-noise standard errors")):
        ratios = {k: [abs(r["error"][k]) / r["status_tests"]["uncertainty"][key][k] for r in rows] for k in TOLERANCE}
        every = [z for values in ratios.values() for z in values]
        within = " / ".join(f"{sum(z <= m for z in every)}" for m in (1, 2, 3))
        lines.append(f"errors within 1 / 2 / 3 {label}: {within} of {len(every)} (Gaussian: 68 / 95 / 99.7 %); "
                     f"median |error| / sigma {float(np.median(every)):.2f}; mean (error / sigma)^2 per parameter "
                     "(the real captures' chi^2 per degree of freedom compares with it): "
                     + ", ".join(f"{k} {np.mean(np.square(v)):.1f}" for k, v in ratios.items()))
    return "\n".join(lines)


def measure(cube: torch.Tensor, truth: Mismatch, noise_seed: int | None) -> torch.Tensor:
    """The benchmark's measurement (H, W + 2 (L-1)) of ``cube`` (L, H, W) through the N=4, K=2 instrument
    drifted by ``truth``, with its noise (``noise_seed``) or clean (None); as ``drifted_scenes`` makes it."""
    from cassi.noise import add_noise
    from cassi.simulator import simulate_measurement

    y = simulate_measurement(cube[None], kaist_mask(), truth, 2, 4, 2)
    return (y if noise_seed is None else add_noise(y, NOISE_PEAK, NOISE_READ, noise_seed))[0]


def gpu_line(cube: torch.Tensor, truth: dict, noise_seed: int, solver: str, ckpt: str | None, threads: int) -> None:
    """The first scene calibrated on ``cuda`` (in-process and CLI seconds), or a line saying there is no CUDA device."""
    if not torch.cuda.is_available():
        print("GPU: no CUDA device (torch.cuda.is_available() is False): not timed")
        return
    truth = Mismatch(**truth)
    y = measure(cube, truth, noise_seed)[None]
    calibrator = TimedCalibrator(solver, ckpt, "cuda", True, threads)
    est = calibrator(y, kaist_mask()).to_dict()
    err = " ".join(f"{k} {est[k] - v:+.4f}" for k, v in truth.to_dict().items())
    print(f"GPU ({torch.cuda.get_device_name(0)}): first scene in-process {calibrator.wall:.1f} s wall, CLI "
          f"{calibrator.cli_run['wall_to_json']:.1f} s to calibration.json; errors {err}")


def summary_table(results: dict[str, dict[str, list[dict]]]) -> str:
    """Markdown: per solver and set, scenes within every tolerance, mean |error| per parameter, seconds."""
    lines = ["| solver | set | in tolerance | mean abs error dx / dy / theta / a1 / alpha | s per scene wall (max) "
             "| CPU s (max) | CLI s (max) |", "|---|---|---|---|---|---|---|"]
    for solver, sets in results.items():
        for name, rows in sets.items():
            errors = " / ".join(f"{np.mean([abs(r['error'][k]) for r in rows]):.3g}" for k in TOLERANCE)
            wall, cpu = [r["seconds"] for r in rows], [r["cpu_seconds"] for r in rows]
            cli = [r["cli"]["wall_to_exit"] for r in rows if r["cli"]]
            cli_text = f"{np.mean(cli):.0f} ({max(cli):.0f})" if cli else "-"
            lines.append(f"| {solver} | {name} | {sum(r['pass_all'] for r in rows)}/{len(rows)} | {errors} | "
                         f"{np.mean(wall):.0f} ({max(wall):.0f}) | {np.mean(cpu):.0f} ({max(cpu):.0f}) | {cli_text} |")
    return "\n".join(lines)


def inverse_warp(mask: torch.Tensor, warp: Mismatch) -> torch.Tensor:
    """The mask M0 with ``warp_mask(M0, dx, dy, theta) ~= mask``: rotation -theta, shift -R (dy, dx)."""
    t = math.radians(warp.theta)
    dy = -(math.cos(t) * warp.dy - math.sin(t) * warp.dx)
    dx = -(math.sin(t) * warp.dy + math.cos(t) * warp.dx)
    return warp_mask(mask.double(), dx, dy, -warp.theta).float()


def kaist_snapshots(args: argparse.Namespace) -> list[dict]:
    from data.io import load_measurement

    mask = kaist_mask()
    rng = np.random.default_rng(args.seed + 1)
    rows = []
    print("\nreal KAIST snapshots, nominal mask handed over warped by the inverse of a known warp "
          "(default options: the forward model chosen by the data):")
    for path in sorted(shared_file("kaist_meas").glob("*.npz"))[:args.kaist_meas]:
        y = torch.from_numpy(load_measurement(path))
        warp = Mismatch(dx=float(rng.uniform(-2, 2)), dy=float(rng.uniform(-2, 2)), theta=float(rng.uniform(-0.5, 0.5)))
        wall, cpu = time.perf_counter(), time.process_time()
        result = calibrate(y, inverse_warp(mask, warp), progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        est, tru = result.estimate.to_dict(), warp.to_dict()
        err = {k: est[k] - tru[k] for k in tru}
        rows.append({"file": path.name, "true": tru, "estimate": est, "error": err, "status": result.status,
                     "reasons": result.reasons, "seconds": wall, "cpu_seconds": cpu,
                     "model_selection": result.settings["model_selection"],
                     "mirror_test": result.settings["mirror_test"]})
        print(f"{path.stem:18} " + " ".join(f"{k} {tru[k]:+.3f}->{est[k]:+.3f}" for k in tru)
              + f"  {model_choice(result)}  status {result.status}  {wall:.0f} s wall {cpu:.0f} s CPU"
              + "".join(f"\n{'':18} {reason}" for reason in result.reasons), flush=True)
    return rows


AGREEMENT = {"dx": 0.1, "dy": 0.1, "theta": 0.05, "a1": 0.005, "alpha": 0.15}   # issue 12 §3 (a): max - min


def real_data(count: int) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """The real 660 mask and the first ``count`` real captures (name, (660, 714))."""
    from data.io import load_mask, load_measurement

    mask = torch.from_numpy(load_mask(shared_file("real", "mask.mat")))
    paths = sorted(shared_file("real").glob("scene*.mat"))[:count]
    return mask, [(p.stem, torch.from_numpy(load_measurement(p))) for p in paths]


def spread(rows: list[dict]) -> dict[str, float]:
    """Max - min of each parameter's estimate over ``rows`` (their ``estimate`` dicts); printed against
    :data:`AGREEMENT`."""
    out = {k: max(r["estimate"][k] for r in rows) - min(r["estimate"][k] for r in rows) for k in AGREEMENT}
    print("spread (max - min) of the estimates across the captures vs the agreement target: "
          + ", ".join(f"{k} {out[k]:.3f} ({'<=' if out[k] <= AGREEMENT[k] else '>'} {AGREEMENT[k]})" for k in out))
    if all(r.get("uncertainty") for r in rows):
        print("do they agree within their uncertainties? chi^2 / (captures - 1) about the weighted mean "
              "(about 1 if they differ by what the uncertainties measure): "
              + ", ".join(f"{k} {agreement_chi2([r['estimate'][k] for r in rows], [r['uncertainty'][k] for r in rows]):.1f}"
                          for k in AGREEMENT))
    return out


def agreement_chi2(values: list[float], standard_errors: list[float]) -> float:
    """chi^2 per degree of freedom of ``values`` about their inverse-variance weighted mean."""
    weights = [1 / e ** 2 for e in standard_errors]
    mean = sum(w * v for w, v in zip(weights, values)) / sum(weights)
    return sum(w * (v - mean) ** 2 for w, v in zip(weights, values)) / (len(values) - 1)


def real_captures(args: argparse.Namespace) -> list[dict]:
    """(a) Each real capture calibrated alone (with the GAP-TV check), then the spread of the estimates."""
    mask, captures = real_data(args.real)
    rows = []
    print("\nreal captures (660 x 714, real 660 mask), each calibrated alone:")
    for name, y in captures:
        wall, cpu = time.perf_counter(), time.process_time()
        result = calibrate(y, mask, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append({"file": name, "estimate": result.estimate.to_dict(), "status": result.status,
                     "reasons": result.reasons, "held_out_nominal": result.nominal_score,
                     "held_out_calibrated": result.score, "checks": result.checks,
                     "oversample": result.settings["oversample"], "seconds": wall, "cpu_seconds": cpu,
                     "model_selection": result.settings["model_selection"],
                     "mirror_test": result.settings["mirror_test"], "uncertainty": result.uncertainty})
        print(f"{name:8} " + " ".join(f"{k} {v:+.4f} ({result.uncertainty.get(k, math.nan):.2g})"
                                      for k, v in result.estimate.to_dict().items())
              + f"  held-out residual {result.nominal_score:.5f} -> {result.score:.5f}  {model_choice(result)}"
              + f"  status {result.status}"
              + f"  {wall:.0f} s wall {cpu:.0f} s CPU", flush=True)
    if len(rows) > 1:
        spread(rows)
    return rows


def held_out_prediction(y: torch.Tensor, mask: torch.Tensor, estimate: Mismatch, oversample: tuple[int, int]
                        ) -> dict[str, float]:
    """The blind score of a capture that the calibration did not see: its held-out prediction error
    (refinement setting of the criterion) through the calibration model at the nominal point and at
    ``estimate``, each solved from the same warm start, and the native-grid operator at the nominal
    point; the relative difference calibrated vs nominal with its standard error (calib.status)."""
    from calib.forward_model import params_tensor
    from calib.pipeline import REFINE_SCORE
    from calib.score import HeldOutScore
    from calib.status import StatusSettings, relative_difference

    blocks = StatusSettings().blocks
    nominal = params_tensor(Mismatch())
    parts = {}
    for label, point, model in (("nominal", nominal, oversample), ("calibrated", params_tensor(estimate), oversample),
                                ("native_nominal", nominal, (1, 1))):
        score = HeldOutScore(y, mask, settings=REFINE_SCORE.with_(spatial=model[0], spectral=model[1]))
        score.set_reference(point)
        parts[label] = score.block_scores(point, blocks)[0]
    change, se = relative_difference(parts["calibrated"], parts["nominal"])
    return {**{k: float(v.sum()) for k, v in parts.items()}, "relative_change": change, "standard_error": se}


def leave_one_out(args: argparse.Namespace) -> list[dict]:
    """(b) For each real capture: calibrate one instrument on the others jointly, then predict the left-out
    capture's held-out pixels through the nominal and the calibrated instrument (the blind score)."""
    mask, captures = real_data(args.real)
    rows = []
    print(f"\nleave one out: one instrument from {len(captures) - 1} real captures jointly, blind score of the "
          "capture left out (held-out prediction error, lower is better):")
    for k, (name, y) in enumerate(captures):
        if args.real_left_out and name not in args.real_left_out.split(","):
            continue
        others = torch.stack([c for j, (_, c) in enumerate(captures) if j != k])
        wall, cpu = time.perf_counter(), time.process_time()
        result = calibrate(others, mask, progress=False, solver_check=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        oversample = tuple(result.settings["oversample"])
        blind = held_out_prediction(y, mask, result.estimate, oversample)
        better = blind["calibrated"] < blind["nominal"]
        rows.append({"left_out": name, "estimate": result.estimate.to_dict(), "status": result.status,
                     "reasons": result.reasons, "oversample": list(oversample), "blind": blind,
                     "calibrated_better": better, "seconds": wall, "cpu_seconds": cpu})
        print(f"without {name:7} " + " ".join(f"{k} {v:+.4f}" for k, v in result.estimate.to_dict().items())
              + f"  status {result.status}  {wall:.0f} s wall {cpu:.0f} s CPU\n"
              f"{'':16}{name}: nominal {blind['nominal']:.5f} -> calibrated {blind['calibrated']:.5f} "
              f"({100 * blind['relative_change']:+.1f} % +- {100 * blind['standard_error']:.1f} %; native grid at "
              f"nominal {blind['native_nominal']:.5f})  calibrated better: {better}"
              + "".join(f"\n{'':16}{reason}" for reason in result.reasons), flush=True)
    print(f"calibrated better on {sum(r['calibrated_better'] for r in rows)}/{len(rows)} left-out captures "
          f"(beyond 2 standard errors: "
          f"{sum(r['blind']['relative_change'] < -2 * r['blind']['standard_error'] for r in rows)}/{len(rows)})")
    if len(rows) > 1:
        spread(rows)
    return rows


class _Adapter:
    """An enlarged-grid operator seen through a 0/1 detector weight, with GAP's normaliser."""

    def __init__(self, op, weight: torch.Tensor) -> None:
        self.op, self.weight = op, weight
        self.bands, self.height, self.width = op.bands, op.height, op.width

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x) * self.weight

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(y * self.weight)

    def gram_row_sums(self) -> torch.Tensor:
        s = self(self.adjoint(torch.ones_like(self.weight)))
        return torch.where(s == 0, torch.ones_like(s), s)


def draw_landscapes(path: Path) -> None:
    """1-D landscapes of four candidate criteria through the true parameters of one drifted scene.

    Criteria: (a) plain residual ||y - A x||^2 after 50 accelerated GAP-TV iterations; (b) GAP-TV held-out
    residual (fit one random half of the pixels, predict the other); (c) the regularised objective
    min_z ||y - A U z||^2 + lam ||grad z||^2 with the score's prior (spectra U z in its DCT subspace);
    (d) the held-out score (calib.score). All through the same calibration forward model on 2 stripes
    of 24 rows; (c) and (d) converged (100 CG iterations from 0, 60 from the reference at the truth).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from calib.forward_model import params_tensor
    from calib.score import HeldOutScore, ScoreSettings, SpectralSubspace, _smoothness
    from cassi.gap_tv import gap_tv
    from cassi.noise import add_noise
    from cassi.simulator import simulate_measurement

    mask = kaist_mask()
    name, cube = pseudo_kaist_cubes()[2]
    truth = Mismatch(dx=0.7, dy=-1.3, theta=0.4, a1=2.03, alpha=0.5)
    y = add_noise(simulate_measurement(cube[None], mask, truth, 2, 4, 2), 1e4, 0.005, 0)[0]
    score = HeldOutScore(y, mask, settings=ScoreSettings(stripes=2, rows=24, iterations=60))
    score.set_reference(params_tensor(truth))
    spans = {"dx": 1.0, "a1": 0.04, "alpha": 1.0, "dy": 0.5}
    fig, axes = plt.subplots(1, len(spans), figsize=(4.5 * len(spans), 4))
    for ax, (param, span) in zip(axes, spans.items()):
        index = ["dx", "dy", "theta", "a1", "alpha"].index(param)
        offsets = torch.linspace(-span, span, 9, dtype=torch.float64)
        points = params_tensor(truth).repeat(len(offsets), 1)
        points[:, index] += offsets
        prior = score.operator(points)                      # the score's operator: A U (its DCT subspace)
        op = prior.op if isinstance(prior, SpectralSubspace) else prior   # A itself, for GAP-TV
        ys = score.y.repeat(len(offsets), 1, 1)
        keep = score.folds[0].repeat(len(offsets), 1, 1)
        inner = score.interior.repeat(len(offsets), 1, 1)
        with torch.no_grad():
            x = gap_tv(ys, _Adapter(op, torch.ones_like(ys)), iterations=50)
            plain = (((ys - op(x)) * inner) ** 2).sum((1, 2)).view(len(offsets), -1).sum(1)
            x = gap_tv(ys * keep, _Adapter(op, keep), iterations=30)
            gap_held = (((ys - op(x)) * (1 - keep) * inner) ** 2).sum((1, 2)).view(len(offsets), -1).sum(1)
            z = score.solve(prior, ys, torch.ones_like(ys), 100, None)
            penalty = _smoothness(z, score.lam, score.mu, score.band_curvature)
            objective = ((((ys - prior(z)) * inner) ** 2).sum((1, 2))
                         + (z * penalty).sum((1, 2, 3))).view(len(offsets), -1).sum(1)
            held = score(points)
        for label, v in (("GAP-TV residual", plain), ("GAP-TV held-out", gap_held),
                         ("regularised objective", objective), ("held-out (used)", held)):
            ax.plot(offsets.numpy(), 100 * (v / v.min() - 1).numpy(), marker="o", ms=3, label=label)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel(f"{param} - true")
        ax.set_ylabel("rise over the minimum (%)")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(f"{name}: {param}")
        print(param, {label: int(torch.argmin(v)) - 4 for label, v in (("plain", plain), ("gap_held", gap_held),
                                                                       ("objective", objective), ("held", held))},
              "(argmin offset index from the truth)", flush=True)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    print(f"wrote {path}")


SLICES = {"dx": (-0.5, -0.25, -0.1, 0.1, 0.25, 0.5), "dy": (-0.25, -0.1, 0.1, 0.25),
          "a1": (-0.02, -0.01, -0.005, 0.005, 0.01, 0.02), "alpha": (-0.6, -0.3, -0.15, 0.15, 0.3, 0.6)}


def solver_landscapes(args: argparse.Namespace) -> None:
    """Rise (%) of each criterion over its value at the truth on 1-D slices, two scenes (the README table).

    Criteria: the held-out CG score with the official BiSRNet's cube as prior mean
    (``calib.network_score.NetworkHeldOutScore``, what ``--solver bisrnet`` uses), the same with each fold's
    held-out pixels replaced in the network's input by the plain criterion's prediction (``fill``: no
    leakage), GAP-TV alone (20 steps, ``calib.solver_score.SolverScore``) and the plain held-out CG score;
    refinement setting, warm starts at the truth. Scenes: pseudo-KAIST scene04 with its benchmark draw;
    pseudo-real scene3 rows 100:356, cols 128:384 (max 1) with (1.3, -0.7, 0.3, 2.02, 0.4). N=4 K=2
    instrument, Poisson 1e4 + 0.5 % read noise. CPU seconds per slice are printed with the values at the truth.
    """
    from calib.forward_model import PARAMETER_NAMES, params_tensor
    from calib.network_score import NetworkHeldOutScore
    from calib.pipeline import REFINE_SCORE
    from calib.score import HeldOutScore
    from calib.solver_score import SolverScore
    from calib.solvers import load_network
    from cassi.noise import add_noise
    from cassi.simulator import simulate_measurement
    from data.io import load_cube

    mask = kaist_mask()
    rng = np.random.default_rng(args.seed)
    draws = [draw_mismatch(rng) for _ in range(4)]
    real = torch.from_numpy(load_cube(shared_file("pseudo_real", "scene3.npz")))[:, 100:356, 128:384]
    scenes = [("pseudo-KAIST scene04", pseudo_kaist_cubes()[3][1], draws[3]),
              ("pseudo-real scene3 crop", real / real.max(), Mismatch(dx=1.3, dy=-0.7, theta=0.3, a1=2.02, alpha=0.4))]
    network = load_network("bisrnet", solver_ckpt("bisrnet", args.ckpt))
    for name, cube, truth in scenes:
        y = add_noise(simulate_measurement(cube[None], mask, truth, 2, 4, 2), 1e4, 0.005, 0)[0]
        t0 = params_tensor(truth)
        criteria = {"BiSRNet held-out": NetworkHeldOutScore(y, mask, network, settings=REFINE_SCORE, reference=t0),
                    "BiSRNet filled": NetworkHeldOutScore(y, mask, network, settings=REFINE_SCORE, reference=t0,
                                                          fill=True),
                    "GAP-TV 20": SolverScore(y, mask),
                    "held-out CG": HeldOutScore(y, mask, settings=REFINE_SCORE, reference=t0)}
        print(f"\n{name}, truth {truth.to_dict()}: rise over the value at the truth (%)")
        print(f"{'slice':14}" + "".join(f"{c:>18}" for c in criteria))
        for param, offsets in SLICES.items():
            points = t0.repeat(len(offsets) + 1, 1)
            points[1:, PARAMETER_NAMES.index(param)] += torch.tensor(offsets, dtype=torch.float64)
            values, seconds = {}, {}
            for c, score in criteria.items():
                start = time.process_time()
                values[c] = score(points)
                seconds[c] = time.process_time() - start
            print(f"{param:6} at the truth: " + ", ".join(f"{c} {float(v[0]):.5f} ({seconds[c]:.0f} s CPU)"
                                                         for c, v in values.items()))
            for k, offset in enumerate(offsets, start=1):
                print(f"{param:6} {offset:+6.3f} " + "".join(f"{100 * float(v[k] / v[0] - 1):+18.2f}"
                                                            for v in values.values()), flush=True)


def gradient_probe(args: argparse.Namespace) -> None:
    """Algorithm 2's gradient through each solver criterion, by forward differences (what the
    Levenberg-Marquardt step uses, 0.05 pixel units) and by autograd, at the truth and 0.3 px off in dx:
    pseudo-KAIST scene04, drift (0.5, 0.3, 0.1, 2.01, 0.2), N=4 K=2 instrument with noise."""
    from calib.forward_model import params_tensor
    from calib.network_score import NetworkHeldOutScore
    from calib.pipeline import REFINE_SCORE
    from calib.ranges import pixel_scales
    from calib.solver_score import SolverScore
    from calib.solvers import load_network
    from cassi.noise import add_noise
    from cassi.simulator import simulate_measurement

    mask, cube = kaist_mask(), pseudo_kaist_cubes()[3][1]
    truth = Mismatch(dx=0.5, dy=0.3, theta=0.1, a1=2.01, alpha=0.2)
    y = add_noise(simulate_measurement(cube[None], mask, truth, 2, 4, 2), 1e4, 0.005, 0)[0]
    scales = pixel_scales(*mask.shape, 28, 2)
    network = load_network("bisrnet", solver_ckpt("bisrnet", args.ckpt))
    criteria = (("gap_tv", SolverScore(y, mask)),
                ("bisrnet", NetworkHeldOutScore(y, mask, network, settings=REFINE_SCORE, reference=params_tensor(truth))))
    for name, score in criteria:
        for offset in (0.0, 0.3):
            point = params_tensor(truth).reshape(5).clone()
            point[0] += offset
            score.set_reference(point[None])            # as each refinement step does
            probes = point.repeat(6, 1)
            for i in range(5):
                probes[i + 1, i] += 0.05 * scales[i]
            start = time.process_time()
            errors = score.residuals(probes)
            differences = (2 * (errors[1:] - errors[:1]) / 0.05 @ errors[0]).double()
            middle = time.process_time()
            p = point.clone().requires_grad_(True)
            autograd = (torch.autograd.grad(score.loss(p[None]), p)[0] * scales).double()
            end = time.process_time()
            cosine = float(differences @ autograd / (differences.norm() * autograd.norm()))
            print(f"{name} dx {offset:+.1f} px from the truth: differences {differences.numpy().round(5)} "
                  f"({middle - start:.1f} s CPU, J included), autograd {autograd.numpy().round(5)} "
                  f"({end - middle:.1f} s CPU), cosine {cosine:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solvers", default=HELD_OUT, help="comma list of inner solvers (heldout, gap_tv, bisrnet, ...)")
    parser.add_argument("--ckpt", default=None, help="checkpoint of the network solvers (default for bisrnet: "
                        "../shared/weights/bisrnet_simulation.pth)")
    parser.add_argument("--scenes", type=int, default=10, help="pseudo-KAIST scenes (0: none)")
    parser.add_argument("--pseudo-real", type=int, default=10, help="pseudo-real 256 x 256 crops (0: none)")
    parser.add_argument("--fresh-crops", type=int, default=0,
                        help="the held-out set: off-diagonal 256 x 256 crops of the pseudo-real cubes with their own "
                             "draws (seed + 11), never used to choose a setting (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the calibrations run")
    parser.add_argument("--no-cli", action="store_true", help="skip the calibrate.py subprocess runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N scenes of each set (the others "
                        "keep their draws and noise: a run cut short can be completed)")
    parser.add_argument("--kaist-meas", type=int, default=0, help="number of KAIST snapshots to check (0: none)")
    parser.add_argument("--real", type=int, default=0, help="number of real captures to calibrate (0: none, 5: all)")
    parser.add_argument("--real-parts", default="alone,loo",
                        help="with --real: 'alone' (each capture calibrated alone), 'loo' (leave one out: calibrate "
                             "on the others jointly, blind score of the one left out), or both (default)")
    parser.add_argument("--real-left-out", default="",
                        help="with 'loo': only these captures left out, e.g. scene4,scene5 (default: each in turn)")
    parser.add_argument("--landscapes", action="store_true", help="only draw the criterion comparison figure")
    parser.add_argument("--solver-landscapes", action="store_true", help="only print the solver criteria's slices")
    parser.add_argument("--gradient-probe", action="store_true", help="only compare Algorithm 2's gradients "
                        "(differences vs autograd) through the solver criteria")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_calibration.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.landscapes:
        draw_landscapes(Path(args.out).with_suffix(".png"))
        return
    if args.solver_landscapes:
        solver_landscapes(args)
        return
    if args.gradient_probe:
        gradient_probe(args)
        return
    results = {"settings": vars(args)}
    tables: dict[str, dict[str, list[dict]]] = {}
    for solver in filter(None, (s.strip() for s in args.solvers.split(","))):
        ckpt = solver_ckpt(solver, args.ckpt)
        sets = tables.setdefault(solver, {})
        if args.scenes:
            sets["pseudo-KAIST"] = drifted_scenes(pseudo_kaist_cubes()[:args.scenes], np.random.default_rng(args.seed),
                                                  1000 * args.seed, solver, ckpt, args)
        if args.pseudo_real:
            sets["pseudo-real"] = drifted_scenes(pseudo_real_crops(args.pseudo_real),
                                                 np.random.default_rng(args.seed + 2), 1000 * args.seed + 500,
                                                 solver, ckpt, args)
        if args.fresh_crops:
            sets["fresh crops"] = drifted_scenes(pseudo_real_crops(args.fresh_crops, FRESH_CORNERS),
                                                 np.random.default_rng(args.seed + 11), 1000 * args.seed + 900,
                                                 solver, ckpt, args)
    if tables:
        results["solvers"] = tables
        print("\n" + summary_table(tables))
    if args.kaist_meas:
        results["kaist_meas"] = kaist_snapshots(args)
    parts = args.real_parts.split(",")
    if args.real and "alone" in parts:
        results["real"] = real_captures(args)
    if args.real > 1 and "loo" in parts:
        results["real_leave_one_out"] = leave_one_out(args)
    out = write_text(args.out, json.dumps(results, indent=1, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
