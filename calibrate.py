"""Instrument calibration: recover (dx, dy, theta, a1, alpha) from one snapshot and the nominal mask.

    python calibrate.py --meas y.npz --mask mask.mat [--solver heldout|gap_tv|bisrnet|mst_l|... --ckpt PATH] \\
        [--check-solver] [--device cuda] [--out DIR]
    python calibrate.py --meas a.mat b.mat c.mat --mask mask.mat --out DIR [--separately]
    python calibrate.py simulate --cube scene.npz --mask mask.mat --dx 1.2 --theta 0.4 --a1 2.02 \\
        --oversample 4 2 --noise-peak 1e4 --read-noise 0.005 --seed 0 --out y.npz
    python calibrate.py            (demo: synthetic scene, random drift, calibrate, scenario PSNRs)

Calibration writes DIR/calibration.json (``estimate`` with dx, dy, theta, a1, alpha, their one-sigma
``uncertainty`` (its terms in ``status_tests.uncertainty``), the status "ok" / "ambiguous" / "failed" with
reasons -- "ok" vouches for ``--tolerance`` -- per-stage history and timings), DIR/operator.npz (the
corrected instrument, accepted by eval.py and train.py) and DIR/landscape.png, DIR/stages.png.
The calibration forward model is chosen by the data (``--forward-model auto``, the default: the native
grid N=K=1 or the enlarged grid N=4, K=2, whichever predicts held-out pixels better; each candidate's
score and the margin are in calibration.json, settings.model_selection) unless ``--model-oversample N K``
names one. A --mask that is a binary code shifted by a fraction of a pixel with bilinear interpolation is
detected and calibrated through the code itself, the estimate given for the mask as handed (settings.handed_mask;
operator.npz then holds the code and the estimate in its frame). A grey --mask that the native grid's two
readings disagree on is also tried un-shifted by a bilinear phase chosen by the held-out score, and kept only
when it predicts the held-out pixels far better (settings.handed_mask.unshift; calib/unshift.py).
``--solver`` is the inner solver that decides the estimate: ``heldout`` (the held-out CG criterion, the
default), ``gap_tv``, or a registered mask-aware network with ``--ckpt`` (README, "Inner solver (issue
11)"). ``--check-solver`` also reconstructs with that solver (GAP-TV for heldout) and the nominal and the
calibrated operator and reports its residual before / after (off by default). ``--device cuda`` runs
the forward model, the score, the solver and the check on the GPU.
Measurements: ``.npz`` (key y), ``.mat`` (key meas, y or meas_real; or --meas-key), ``.npy``; one that holds
the mask (key mask, or --mask-key; the KAIST snapshots kaist_meas/*.npz do) needs no --mask.
Several ``--meas`` files are captures of one instrument (a scene each): one estimate is fitted to all
of them jointly (the score is the mean of their held-out errors; ``calibration.json`` lists them under
``measurements``, the status tests each capture too); ``--separately`` calibrates each on its own in one
process instead (DIR/<file stem>/ with the usual files, DIR/calibrations.json listing them).
``simulate`` writes a measurement of a cube through the high-fidelity instrument model (enlarged
grid, mismatch, noise).

Outputs: DIR is written as one unit (a staging folder renamed into place at the end, after the summary
is printed); an existing non-empty DIR (or ``simulate``'s existing --out file) needs --force. Bad input
ends with one line ``calibrate.py COMMAND: error: ...`` and exit code 2 before any work; impossible
physics (a1 = 0, |theta| or |alpha| > 45 deg, a mask moved off the detector, a measurement without light)
is an error, doubtful physics a warning recorded in the output (README, "Errors and exit codes"). A
calibration whose status is "failed" writes its outputs for inspection and exits with code 3; its
operator.npz records the status, and eval.py / train.py refuse it.

Units: dx, dy in pixels (right, down), theta and alpha in degrees (counter-clockwise), a1 in pixels
per band (nominal 2). The measurement (H, W + 2*(L-1)) is stored under key ``y``; light that falls
outside that width is lost. Cubes: ``.npz`` (key ``cube``, (L, H, W)) or ``.mat`` (key ``img``,
(H, W, L)); masks: ``.mat`` / ``.npz`` (key ``mask``, or --mask-key) or ``.npy``.
"""
from __future__ import annotations

import time

STARTED = time.perf_counter()  # start-up (imports, reading the inputs) is reported from here

import os  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see README, "CPU threads"

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from cassi.devices import check_device  # noqa: E402
from cassi.errors import (EXIT_CALIBRATION_FAILED, EXIT_FAILED, EXIT_OK, CliParser, UserError,  # noqa: E402
                          cli_errors, non_negative_float, positive_float, positive_int, one_line)
from cassi.tolerance import CALIBRATION_TOLERANCE  # noqa: E402

if TYPE_CHECKING:
    from torch import Tensor

    from data.io import MeasurementFile

# torch, numpy and the rest of the project are imported by the commands that use them, so --help and
# argument errors answer at once (README, "Start-up")

COMMANDS = ("simulate", "calibrate", "demo")
SUMMARY = "calibrations.json"                # ... and the top of a --separately folder (one entry per capture)
INSTRUMENT_DEFAULTS = {"bands": 28, "step": 2}  # calibrate's --bands, --step unless the --meas .npz records them
NO_PROGRESS = "no progress bars (they are shown only when stderr is a terminal)"


def check_npz_name(out: str) -> None:
    """``simulate`` writes an .npz archive: under another suffix the readers (``--meas``) take it for what the
    suffix says and cannot read it."""
    if Path(out).suffix.lower() != ".npz":
        raise UserError(f"--out {out}: simulate writes an .npz archive (the measurement under key y); "
                        "name the file *.npz")


def simulate(args: argparse.Namespace) -> Path:
    """Run the ``simulate`` command; returns the written file."""
    import numpy as np
    import torch

    from cassi import CassiOperator, Mismatch
    from cassi.checks import check_instrument, check_mask
    from cassi.files import check_output_file, save_npz
    from cassi.noise import add_noise
    from cassi.simulator import simulate_measurement
    from data.io import load_cube, load_mask

    check_npz_name(args.out)
    out = check_output_file(args.out, args.force, inputs=(args.cube, args.mask))
    cube = torch.from_numpy(load_cube(args.cube, bands=None))
    mask = torch.from_numpy(load_mask(args.mask, args.mask_key, "--mask-key"))
    if tuple(mask.shape) != tuple(cube.shape[1:]):
        raise UserError(f"mask {args.mask} is {tuple(mask.shape)} but cube {args.cube} is "
                        f"{tuple(cube.shape[1:])} (H, W)")
    check_mask(mask, args.mask)
    mismatch = Mismatch(dx=args.dx, dy=args.dy, theta=args.theta, a1=float(args.step) if args.a1 is None else args.a1,
                        alpha=args.alpha)
    warnings = check_instrument(CassiOperator(mask, cube.shape[0], args.step, mismatch))
    spatial, spectral = args.oversample
    y = simulate_measurement(cube[None], mask, mismatch, step=args.step, spatial=spatial, spectral=spectral)
    if args.noise_peak is not None or args.read_noise > 0:
        y = add_noise(y, peak=args.noise_peak, read_noise=args.read_noise, seed=args.seed)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"simulated y {tuple(y.shape[1:])}, mismatch {mismatch.to_dict()}, N={spatial} K={spectral}")
    save_npz(out, y=y[0].numpy().astype(np.float32), mismatch=np.array(
        [mismatch.dx, mismatch.dy, mismatch.theta, mismatch.a1, mismatch.alpha]), step=np.int64(args.step),
        bands=np.int64(cube.shape[0]), oversample=np.array(args.oversample, dtype=np.int64),
        warnings=np.array(warnings, dtype=np.str_),
        noise_peak=np.float64(np.nan if args.noise_peak is None else args.noise_peak),
        read_noise=np.float64(args.read_noise), noise_seed=np.int64(args.seed))
    print(f"wrote {out}")
    return out


def finish(folder: Path, failed: list[str], unwritten: list[str]) -> None:
    """The last lines of a calibration whose outputs are in place: where, and on stderr a "failed" status (exit
    code 3) or figures that could not be written (exit code 1, which takes precedence)."""
    print(wrote(folder))
    code = EXIT_FAILED if unwritten else EXIT_CALIBRATION_FAILED if failed else EXIT_OK
    if failed:
        print(f"calibrate.py: status \"failed\" ({', '.join(failed)}): the outputs are written for inspection, "
              f"operator.npz is marked failed and eval.py / train.py refuse it; exit code {code}", file=sys.stderr)
    if unwritten:
        print(f"calibrate.py: {'; '.join(unwritten)}; calibration.json (its warnings say so) and operator.npz are "
              f"written; exit code {code}", file=sys.stderr)
    if code != EXIT_OK:
        raise SystemExit(code)


def score_meaning(solver: str) -> str:
    """What the blind score of ``solver`` measures, in words (README, "Reading calibration.json")."""
    from calib.solvers import GAP_TV

    if solver == GAP_TV:
        return "squared relative residual of unrolled GAP-TV"
    return "squared relative held-out prediction error"


def summary(result) -> str:
    """A few lines for the terminal: estimate, status, blind residual before / after, time."""
    est = result.estimate.text()
    captures = result.settings.get("captures", 1)
    joint = f"   (one instrument, {captures} captures jointly)" if captures > 1 else ""
    lines = [f"estimate: {est}   (dx, dy px; theta, alpha deg; a1 px/band){joint}",
             *([f"uncertainty (one sigma; its terms in calibration.json status_tests.uncertainty): "
                + ", ".join(f"{k} {v:.2g}" for k, v in result.uncertainty.items())] if result.uncertainty else []),
             f"status: {result.status}" + "".join(f"\n  - {r}" for r in result.reasons),
             f"blind score ({result.settings['solver']}: {score_meaning(result.settings['solver'])}, lower is "
             f"better; calibration.json score): nominal {result.nominal_score:.5f} -> calibrated {result.score:.5f}"]
    checks = result.checks
    if "residual_nominal" in checks:
        n, k = checks["oversample"]
        cubic = " (cubic mask reading)" if checks.get("mask_interpolation") == "cubic" else ""
        lines.append(f"{checks['solver']} fit residual ||y - A x||/||y|| through the N={n}, K={k} model{cubic}: "
                     f"nominal {checks['residual_nominal']:.5f} -> calibrated {checks['residual_calibrated']:.5f} "
                     "(how closely the solver fits y through each operator: no test of the operator, a solver fits a "
                     "wrong one too; the status and the blind score above are)")
    elif "error" in checks:
        lines.append(f"{checks['solver']} check skipped: {checks['error']}")
    timings = result.timings
    startup = f"start-up {timings['startup_s']:.1f} s + " if "startup_s" in timings else ""
    selection = result.settings.get("model_selection", {})
    if selection.get("mode") == "auto":
        scores = ", ".join(f"N={c['oversample'][0]}, K={c['oversample'][1]} {c['score']:.5f}"
                           for c in selection["candidates"])
        n, k = selection["chosen"]
        decided = "" if selection["resolved"] else " (within the noise)"
        lines.append(f"forward model: N={n}, K={k} chosen by the held-out score at the {selection['compared_at']} "
                     f"({scores}; margin "
                     f"{selection['margin_in_standard_errors']:.1f} standard errors{decided})")
    elif selection.get("mode") == "explicit":
        n, k = selection["chosen"]
        lines.append(f"forward model: N={n}, K={k} as named (--model-oversample): not compared with the other "
                     "models, and the uncertainty does not include the error of a wrong model (--forward-model auto "
                     "lets the data choose)")
    noise = result.settings.get("noise_correction")
    if noise:
        var = noise["variance"]
        lines.append(f"noise: the criterion's noise term, variance {var['gain']:.3g} x y + {var['read_variance']:.3g} "
                     "fitted blind (a nuisance term of the held-out score, not a sensor calibration); the held-out "
                     "score less the noise it carries moved the "
                     f"estimate {noise['moved_pixel_units']:.3f} pixel units in {len(noise['steps'])} step(s); "
                     f"{noise['outcome']}")
    mirror = result.settings.get("mirror_test")
    if mirror and mirror["applied"]:
        lines.append(f"a1: mirror test: {mirror['reason']}")
    basis = result.settings.get("spectral_basis")
    if basis:
        lines.append(f"spectral basis: {basis['used']} (the first {basis['directions']} directions of "
                     f"{basis['learned_from']} {'kept' if basis['kept'] else 'refused'}: held-out error at the nominal "
                     f"point {100 * basis['relative_margin']:+.1f} % +- {100 * basis['standard_error']:.1f} % against "
                     "the DCT cosines, + = better)")
    reading = selection.get("interpolation")
    handed = result.settings.get("handed_mask")
    unshift = (handed or {}).get("unshift")
    if reading:
        scores = ", ".join(f"{c['interpolation']} {c['score']:.5f}" for c in reading["candidates"])
        kept = "the better, superseded by the un-shifted mask" if unshift and unshift["kept"] else "kept"
        lines.append(f"mask reading (native grid): {reading['chosen']} {kept} ({scores}; the two estimates "
                     f"{reading['estimate_spread_pixel_units']:.3f} pixel units apart)")
    if unshift and unshift["kept"]:
        phase, margins = unshift["phase"], unshift["margins"]
        scores = " / ".join(f"{name} {m['score']:.5f}" for name, m in margins.items())
        lines.append(f"handed mask: un-shifted by the bilinear phase (fy, fx) = ({phase['fy']:.3f}, "
                     f"{phase['fx']:.3f}) px "
                     f"chosen by the held-out score ({unshift['refined_score']:.5f} vs {scores}, "
                     f"{min(m['margin_in_standard_errors'] for m in margins.values()):.1f} standard errors or more): "
                     f"calibrated with the un-shifted mask, the estimate given for the handed mask")
    elif handed and handed["detected"]:
        phase = handed["phase"]
        lines.append(f"handed mask: a binary code resampled {handed['kernel']}ly at phase (fy, fx) = "
                     f"({phase['fy']:.4f}, {phase['fx']:.4f}) px (residual {handed['residual']:.1e} of its maximum): "
                     f"calibrated with the code, the estimate given for the handed mask")
    elif handed:
        tried = f"; un-shifting it by a bilinear phase was tried and refused: {unshift['reason']}" if unshift else ""
        lines.append(f"handed mask: read as it is ({handed['reason']}{tried})")
    lines.append(f"time: {startup}{timings['total_s']:.1f} s wall, {timings['total_cpu_s']:.1f} s CPU")
    return "\n".join(lines)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars on stderr unless --no-progress or stderr is not a terminal (a log file would fill with their
    carriage-return updates)."""
    return not args.no_progress and sys.stderr.isatty()


def wrote(folder: Path) -> str:
    return f"wrote {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir()))


def read_captures(paths: list[str], files: list[MeasurementFile], key: str | None, mask, mask_path: str, bands: int,
                  step: int, joint: bool = True):
    """The captures of ``--meas`` ``paths`` (``files``: theirs, in the same order) as
    (M, H, W + step*(L-1)) and their warnings, every file checked before any work: one size for all, the width the
    mask and band count imply, light in each, and for a ``joint`` fit no capture twice (same values under another
    name); a :class:`UserError` naming the file otherwise."""
    import torch

    from cassi.checks import check_measurement

    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise UserError(f"--meas names the same file twice: {' '.join(paths)}")
    captures = [torch.from_numpy(f.measurement(key, "--meas-key")) for f in files]
    sizes = {tuple(y.shape) for y in captures}
    if len(sizes) > 1:
        listed = ", ".join(f"{p} {tuple(y.shape)}" for p, y in zip(paths, captures))
        raise UserError(f"--meas: captures of different sizes in one list ({listed}); the captures of one "
                        "instrument share the detector size")
    expected = (mask.shape[0], mask.shape[1] + step * (bands - 1))
    warnings = []
    for path, y in zip(paths, captures):
        if tuple(y.shape) != expected:
            raise UserError(f"measurement {path} is {tuple(y.shape)} but mask {mask_path} is {tuple(mask.shape)}: "
                            f"expected a measurement of {expected} (H, W + {step}*({bands}-1))")
        warnings += check_measurement(y, path)
    for i, y in enumerate(captures if joint else ()):
        twins = [paths[j] for j in range(i) if torch.equal(captures[j], y)]
        if twins:
            raise UserError(f"--meas: {paths[i]} holds the same capture as {twins[0]}: a joint fit needs distinct "
                            "captures (a copy would count one capture twice and understate the uncertainty)")
    return torch.stack(captures), warnings


def instrument_settings(args: argparse.Namespace, files: list[MeasurementFile]) -> tuple[int, int]:
    """``--bands`` and ``--step``: as given, else as the ``--meas`` .npz files (``files``: theirs, in the order of
    ``args.meas``) record them (keys ``bands``, ``step``), else the defaults; prints where a recorded value came
    from. A :class:`UserError` names the file, the key and both values when an option contradicts a file or one
    file another."""
    recorded: dict[str, tuple[int, str]] = {}
    for path, file in zip(args.meas, files):
        for key, value in file.recorded_integers(INSTRUMENT_DEFAULTS).items():
            given = getattr(args, key)
            if given is not None and given != value:
                raise UserError(f"--{key} {given} contradicts {path}, which records {key} = {value} (key '{key}'); "
                                f"leave --{key} out to use the recorded value")
            if key in recorded and recorded[key][0] != value:
                raise UserError(f"--meas: {path} records {key} = {value} (key '{key}') but {recorded[key][1]} "
                                f"records {recorded[key][0]}: captures of one instrument share it")
            recorded.setdefault(key, (value, path))
    chosen = []
    for key, default in INSTRUMENT_DEFAULTS.items():
        given = getattr(args, key)
        if given is None and key in recorded:
            value, path = recorded[key]
            print(f"{key} {value} as {path} records it (key '{key}')")
            given = value
        chosen.append(default if given is None else given)
    return tuple(chosen)


def mask_difference(a: Tensor, b: Tensor) -> str:
    """How mask ``a`` (H, W) differs from ``b``, in a few words ("" when they are equal)."""
    if tuple(a.shape) != tuple(b.shape):
        return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    if (a == b).all():
        return ""
    return f"{int((a != b).sum())} of {a.numel()} pixels differ, by up to {float((a - b).abs().max()):.3g}"


def read_mask(args: argparse.Namespace, files: list[MeasurementFile]) -> tuple[Tensor, str, dict]:
    """The mask to calibrate with (H, W), where it was read ('file' or "file['key']") and calibration.json's
    ``settings.mask_source``: ``--mask`` when given (a --meas file that holds another mask under ``--mask-key``, or
    an array there that is no mask, gets a one-line note: a displaced mask is what calibration is for), else the
    mask the ``--meas`` files hold (the KAIST snapshots: key 'mask'), the same in all that hold one, which is
    printed. A :class:`UserError` when there is none or the files hold different ones."""
    import torch

    from data.io import load_mask

    if args.mask is not None:
        mask = torch.from_numpy(load_mask(args.mask, args.mask_key, "--mask-key"))
        for file in files:
            try:
                found = file.mask(args.mask_key)
            except (ValueError, UserError) as err:       # --mask is used anyway: the file's array only gets a note
                print(f"note: {one_line(err)}: not read as a mask; calibrating with --mask, as handed")
                continue
            differs = found and mask_difference(torch.from_numpy(found[0]), mask)
            if differs:
                print(f"note: {found[1]} holds another mask than --mask {args.mask} ({differs}); calibrating with "
                      "--mask, as handed")
        key = None if Path(args.mask).suffix.lower() == ".npy" else args.mask_key
        return mask, args.mask, {"option": "--mask", "path": str(Path(args.mask).resolve()), "key": key}
    held = [(path, *found) for path, file in zip(args.meas, files) if (found := file.mask(args.mask_key))]
    if not held:
        raise UserError(f"--mask is needed: no --meas file holds a mask under key '{args.mask_key}' (the KAIST "
                        "snapshots do; --mask-key names another key)")
    path, first, where = held[0]
    for _, other, elsewhere in held[1:]:
        differs = mask_difference(torch.from_numpy(first), torch.from_numpy(other))
        if differs:
            raise UserError(f"--meas: {elsewhere} and {where} hold different masks ({differs}); captures of one "
                            "instrument share one: name it with --mask")
    count = f"{len(held)} of {len(args.meas)}"
    shared = "" if len(args.meas) == 1 else f"; the same in the {count} --meas files holding one"
    print(f"mask {where}, as the --meas file holds it (no --mask given{shared})")
    return (torch.from_numpy(first), where,
            {"option": "--meas", "path": str(Path(path).resolve()), "key": args.mask_key})


def parse_ranges(items: list[list[str]]):
    """The ``--range NAME LO HI`` options as :class:`calib.ranges.Ranges` (defaults for the others); a
    :class:`UserError` names a bad item."""
    from calib.ranges import Ranges

    values = {}
    for name, lo, hi in items:
        if name in values:
            raise UserError(f"--range names {name} twice")
        try:
            values[name] = (float(lo), float(hi))
        except ValueError:
            raise UserError(f"--range {name} {lo} {hi}: LO and HI must be numbers") from None
    try:
        return Ranges.from_dict(values)
    except ValueError as err:
        raise UserError(f"--range: {err}") from None


def run_calibration(args: argparse.Namespace) -> dict[str, Path]:
    """Run the ``calibrate`` command; returns the written files (``--separately``: per capture stem,
    its files, and ``summary``)."""
    import torch

    from calib import calibrate
    from calib.outputs import CALIBRATION_FILE, FiguresNotWritten, write_outputs
    from calib.solvers import GAP_TV, HELD_OUT, load_solver
    from calib.status import StatusSettings
    from cassi.checks import check_mask
    from cassi.files import OutputFolder, json_text, write_text
    from data.io import MeasurementFile

    if args.separately and len(args.meas) < 2:
        raise UserError(f"--separately needs two or more --meas (got one, {args.meas[0]}); a single capture is "
                        "calibrated on its own without it")
    device = check_device(args.device)
    if args.forward_model is not None and args.model_oversample:
        raise UserError("--forward-model auto lets the data choose the forward model and --model-oversample "
                        f"{' '.join(map(str, args.model_oversample))} names one: give one of them")
    ranges = parse_ranges(args.ranges)
    meas_files = [MeasurementFile(p) for p in args.meas]       # each file read once, for all it holds
    args.bands, args.step = instrument_settings(args, meas_files)
    stems = [Path(p).stem for p in args.meas]
    if args.separately and len(set(stems)) < len(stems):
        raise UserError(f"--separately writes DIR/<file stem>/ per capture; these share a stem: {' '.join(args.meas)}")
    folder = OutputFolder(args.out, (CALIBRATION_FILE, SUMMARY), args.force,     # a joint or a --separately output
                          inputs=(*args.meas, args.mask, args.ckpt))
    mask, mask_path, mask_source = read_mask(args, meas_files)
    check_mask(mask, mask_path)
    y, warnings = read_captures(args.meas, meas_files, args.meas_key, mask, mask_path, args.bands, args.step,
                                joint=not args.separately)
    network, shared = None, []          # a network solver's weights: loaded once for every --separately capture
    if args.solver not in (HELD_OUT, GAP_TV) and (args.separately or len(y) == 1):   # joint: calibrate refuses it
        loaded = load_solver(args.solver, args.ckpt, device)
        network = loaded.model
        shared = list(filter(None, [loaded.mask_warning(mask, f"the calibration mask {mask_path}")]))
    for warning in warnings + shared:
        print(f"warning: {warning}", file=sys.stderr)
    startup = time.perf_counter() - STARTED
    groups = ([(stem, [path], y[i:i + 1]) for i, (stem, path) in enumerate(zip(stems, args.meas))]
              if args.separately else [("", list(args.meas), y)])
    files, rows, failed, unwritten = {}, [], [], []
    with folder as staging:
        for stem, paths, captures in groups:
            if args.separately:
                print(f"{stem}:", flush=True)
            result = calibrate(captures, mask, solver=args.solver, ckpt=args.ckpt, bands=args.bands,
                               step=args.step, progress=show_progress(args), ranges=ranges,
                               oversample=tuple(args.model_oversample) if args.model_oversample else None,
                               solver_check=args.check_solver, device=device,
                               status_settings=StatusSettings(tolerance=tuple(args.tolerance)),
                               **({"mask_interpolations": ("linear",)} if args.mask_reading == "linear" else {}),
                               **({"noise_correction": None} if args.no_noise_correction else {}), network=network,
                               network_stage=args.network_stage)
            result.timings["startup_s"] = round(startup, 3)
            result.settings["mask_source"] = mask_source
            print(summary(result), flush=True)
            if result.status == "failed":
                failed.append(stem or "the calibration")
            mine = [w for w in warnings if any(w.startswith(str(p)) for p in paths)] + shared
            try:
                written = write_outputs(result, mask, args.bands, args.step, staging / stem, mine, paths,
                                        mask_source["path"])
            except FiguresNotWritten as err:
                written = err.files
                unwritten += [f"{stem}: {line}" if stem else line for line in err.failures]
            if args.separately:
                files[stem] = {key: folder.path / stem / path.name for key, path in written.items()}
                rows.append({"measurement": str(Path(paths[0]).resolve()), "folder": stem,
                             "estimate": result.estimate.to_dict(), "status": result.status, "reasons": result.reasons})
            else:
                files = {key: folder.path / path.name for key, path in written.items()}
        if args.separately:
            write_text(staging / SUMMARY, json_text({"calibrations": rows}))
            files["summary"] = folder.path / SUMMARY
    finish(folder.path, failed, unwritten)
    return files


def run_demo(args: argparse.Namespace) -> dict:
    """Synthetic scene, random mismatch, N=4 K=2 simulator + noise, blind calibration, scenarios I-IV
    through the native operator and the calibration forward model."""
    import numpy as np

    from calib import calibrate
    from calib.outputs import CALIBRATION_FILE, FiguresNotWritten, write_outputs
    from calib.solvers import gap_tv_solver
    from cassi import Mismatch
    from cassi.files import OutputFolder
    from cassi.simulator import simulate_measurement
    from data.kaist import synthetic_mask, synthetic_scenes
    from evaluation.protocol import Noise
    from evaluation.scenarios import MODEL, UNDEFINED, FixedEstimate, ScenarioSetup, run_scenarios

    device = check_device(args.device)
    folder = OutputFolder(args.out, CALIBRATION_FILE, args.force)
    rng = np.random.default_rng(args.seed)
    truth = Mismatch(dx=float(rng.uniform(-3, 3)), dy=float(rng.uniform(-3, 3)), theta=float(rng.uniform(-1, 1)),
                     a1=float(rng.uniform(1.95, 2.05)), alpha=float(rng.uniform(-1, 1)))
    unwritten = []
    with folder as staging:
        scene = synthetic_scenes(1, args.size, args.size, seed=args.seed)[0]
        mask = synthetic_mask(args.size, args.size, seed=args.seed)
        noise = Noise(peak=1e4, read=0.005, seed=args.seed)
        y = noise.apply(simulate_measurement(scene.cube[None], mask, truth, 2, 4, 2), 0)
        print(f"demo: {args.size}x{args.size} synthetic scene, random binary mask, injected {truth.text()}")
        result = calibrate(y[0], mask, progress=show_progress(args), device=device)
        print(summary(result))
        est, tru = result.estimate.to_dict(), truth.to_dict()
        print(f"{'':8}{'true':>10}{'estimate':>10}{'error':>10}")
        for k in tru:
            print(f"{k:8}{tru[k]:10.4f}{est[k]:10.4f}{est[k] - tru[k]:10.4f}")
        setup = ScenarioSetup(scenarios=("I", "Ih", "II", "III", "IV"), mismatch=truth, oversample=(4, 2),
                              noise=noise)
        calibrated = FixedEstimate(result.estimate, oversample=tuple(result.settings["oversample"]),
                                   mask_interpolation=result.settings["mask_interpolation"])
        report = run_scenarios([scene], mask, gap_tv_solver(), setup, calibrated)
        psnr = {key: block["mean"]["psnr"] for key, block in report["scenarios"].items()}
        n, k = result.settings["oversample"]
        print("GAP-TV PSNR (dB, KAIST protocol); I: native-grid measurement, Ih: the N=4, K=2 instrument at the "
              "nominal parameters, II-IV: the drifted instrument")
        for label, suffix in (("native operator", ""), (f"N={n}, K={k} model", MODEL)):
            cells = [f"{s} {psnr[s + suffix]:.2f}" for s in setup.scenarios if s + suffix in psnr]
            if cells:
                print(f"  {label:18}" + "  ".join(cells))
        comparison = report["comparison"]
        ratio = comparison["recovery_ratio"]["psnr"]
        for label, key in (("native operator", "recovery_ratio"), (f"N={n}, K={k} model", "recovery_ratio_model")):
            if key not in comparison:
                continue
            value, why = comparison[key]["psnr"], report.get(UNDEFINED, {}).get(key, {}).get("psnr")
            print(f"recovery ratio (III-II)/(IV-II), {label}: " + (
                f"{value:.3f}" if value is not None else f"undefined ({why})"))
        if "model_error" in comparison:
            print(f"I - IV = {comparison['gap_i_iv']['psnr']:.2f} dB = instrument (I - Ih-model) "
                  f"{comparison['instrument']['psnr']:.2f} + drift (Ih-model - IV-model) "
                  f"{comparison['drift']['psnr']:.2f} + model error (IV-model - IV) "
                  f"{comparison['model_error']['psnr']:.2f}", flush=True)
        try:
            write_outputs(result, mask, 28, 2, staging)
        except FiguresNotWritten as err:
            unwritten = err.failures
    finish(folder.path, [], unwritten)
    return {"result": result, "truth": truth, "psnr": psnr, "recovery_ratio": ratio}


def _add_output(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    where = "" if default is None else f"; default {default}, relative to the current folder"
    parser.add_argument("--out", default=default, required=default is None, help=what + where)
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out (as a whole; never one that holds an input)")


def _add_mask_key(parser: argparse.ArgumentParser, where: str = "") -> None:
    parser.add_argument("--mask-key", default="mask", help=f"key of the mask in a .mat / .npz --mask{where} (default "
                                                           "%(default)s; not used for .npy)")


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads, which the numba kernels follow (default: torch's own choice, "
                             "usually every core; README, 'CPU threads')")


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="calibrate.py", description=__doc__.splitlines()[0] + "\n\nEach command's options and "
                       "their defaults: python calibrate.py COMMAND --help\n(calibrate, the default command: python "
                       "calibrate.py calibrate --help).",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cal = commands.add_parser("calibrate", help="estimate the mismatch from a measurement (the default command)")
    cal.add_argument("--meas", required=True, nargs="+", action="extend", metavar="FILE",
                     help=".npz (key y), .mat (key meas, y or meas_real) or .npy; several captures of one instrument "
                          "(a scene each) are fitted jointly: one estimate for all (--meas a.mat b.mat, or --meas "
                          "repeated)")
    cal.add_argument("--separately", action="store_true",
                     help="with two or more --meas: calibrate each capture on its own, DIR/<file stem>/ each, in one "
                          "process (DIR/calibrations.json lists them)")
    cal.add_argument("--meas-key", default=None, help="key of the measurement in a .npz / .mat file (default: y in "
                                                       "an .npz; meas, y or meas_real in a .mat)")
    cal.add_argument("--mask", default=None,
                     help="nominal mask: .mat / .npz (key mask; or --mask-key) or .npy (default: the mask the --meas "
                          "file holds under that key, as the KAIST snapshots kaist_meas/*.npz do; needed otherwise; "
                          "calibration.json: settings.mask_source)")
    _add_mask_key(cal, " and in the --meas files")
    cal.add_argument("--solver", default="heldout",
                     help="inner solver that decides the estimate: heldout (held-out CG criterion, default), "
                          "gap_tv, or a registered mask-aware network (bisrnet, mst_s, mst_m, mst_l, "
                          "s2_transformer, ...) with --ckpt")
    cal.add_argument("--ckpt", default=None,
                     help="network checkpoint: .pth state dict, train.py .ckpt or release folder")
    cal.add_argument("--network-stage", action="store_true",
                     help="a network solver: after the held-out stages (whose solves use the spectral directions of "
                          "the network's cube), polish and refine once more on the held-out criterion with the "
                          "network's cube at each candidate as prior mean, gradients through the network "
                          "(calibration.json: settings.network_stage; measured less accurate, README 'Inner solver')")
    cal.add_argument("--check-solver", action="store_true",
                     help="reconstruct with the solver (GAP-TV for heldout) and the nominal / calibrated operator "
                          "and report its residual before / after")
    cal.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the forward model, the "
                                                     "score, the solver and the check run")
    _add_output(cal, "outputs/calibration", "output folder (written as one unit at the end)")
    cal.add_argument("--bands", type=positive_int, default=None,
                     help="spectral bands of the cube (default: as a --meas .npz records it, key bands, else "
                          f"{INSTRUMENT_DEFAULTS['bands']}, KAIST; a value that contradicts the file is refused)")
    cal.add_argument("--step", type=positive_int, default=None,
                     help="nominal dispersion step, px per band (default: as a --meas .npz records it, key step, "
                          f"else {INSTRUMENT_DEFAULTS['step']}; a value that contradicts the file is refused)")
    cal.add_argument("--forward-model", choices=("auto",), default=None,
                     help="auto (the default): the data choose the calibration forward model among the native "
                          "grid (N=K=1) and the enlarged grid (N=4, K=2) by the held-out score "
                          "(calibration.json: settings.model_selection); --model-oversample names one instead")
    cal.add_argument("--model-oversample", type=positive_int, nargs=2, default=None, metavar=("N", "K"),
                     help="oversampling of the calibration forward model (1 1: the native-grid operator); "
                          "no selection (default: none given, the data choose: --forward-model auto)")
    cal.add_argument("--mask-reading", choices=("auto", "linear"), default="auto",
                     help="how the native-grid model reads the mask between pixels: auto (the default: bilinear, "
                          "and cubic kept where it predicts the held-out pixels better; "
                          "settings.model_selection.interpolation) or "
                          "linear (bilinear only, no check: the same reading on every scene, e.g. to compare scenes' "
                          "estimates under one model)")
    cal.add_argument("--no-noise-correction", action="store_true",
                     help="skip the refinement on the held-out score less the noise it carries (the last stage "
                          "of heldout and of a network solver; the start of gap_tv's and --network-stage's; "
                          "calibration.json: settings.noise_correction)")
    cal.add_argument("--tolerance", type=non_negative_float, nargs=5, default=list(CALIBRATION_TOLERANCE.values()),
                     metavar=("DX", "DY", "THETA", "A1", "ALPHA"),
                     help="the accuracy an 'ok' status vouches for (px, px, deg, px/band, deg; default "
                          f"{' '.join(f'{v:g}' for v in CALIBRATION_TOLERANCE.values())}): a parameter whose "
                          "uncertainty (2 sigma) is wider, whose score does not rise "
                          "beyond its noise at the estimate +- the tolerance, or whose estimate +- the tolerance "
                          "leaves the search range (--range) makes the status 'ambiguous'")
    cal.add_argument("--range", nargs=3, action="append", default=[], metavar=("NAME", "LO", "HI"),
                     dest="ranges", help="search range of one parameter (dx, dy px; theta, alpha deg; a1 px/band), "
                                         "repeatable, e.g. --range a1 1.9 2.1; the others keep their defaults "
                                         "(dx, dy [-3.5, 3.5], theta [-1.25, 1.25], a1 [1.93, 2.07], alpha "
                                         "[-1.5, 1.5]; calibration.json: settings.ranges)")
    cal.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    _add_threads(cal)
    demo = commands.add_parser("demo", help="calibrate a simulated drifted instrument (the default without "
                                            "arguments; 256 px: about 1.5 min on one CPU thread)")
    demo.add_argument("--size", type=positive_int, default=256, help="scene height and width, px (default "
                                                                 "%(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="scene, mask, mismatch and noise seed (default %(default)s)")
    _add_output(demo, "outputs/calibration_demo", "output folder (written as one unit at the end)")
    demo.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N], for the calibration")
    demo.add_argument("--no-progress", action="store_true", help=NO_PROGRESS)
    _add_threads(demo)
    sim = commands.add_parser("simulate", help="measure a cube through the high-fidelity instrument")
    sim.add_argument("--cube", required=True, help=".npz (key cube, (L,H,W)) or .mat (key img, (H,W,L))")
    sim.add_argument("--mask", required=True, help=".mat / .npz (key mask; or --mask-key) or .npy")
    _add_mask_key(sim)
    sim.add_argument("--dx", type=float, default=0.0, help="mask shift right, px (default %(default)s)")
    sim.add_argument("--dy", type=float, default=0.0, help="mask shift down, px (default %(default)s)")
    sim.add_argument("--theta", type=float, default=0.0,
                     help="mask rotation, degrees counter-clockwise (default %(default)s)")
    sim.add_argument("--a1", type=float, default=None,
                     help="dispersion, px per band (default: the --step, nominal)")
    sim.add_argument("--alpha", type=float, default=0.0, help="dispersion axis angle, degrees (default %(default)s)")
    sim.add_argument("--step", type=positive_int, default=2, help="nominal dispersion step, px per band (default "
                                                                  "%(default)s)")
    sim.add_argument("--oversample", type=positive_int, nargs=2, default=(1, 1), metavar=("N", "K"),
                     help="spatial and spectral oversampling of the enlarged grid (default 1 1: the native grid)")
    sim.add_argument("--noise-peak", type=positive_float, default=None,
                     help="photons at the brightest pixel (Poisson noise; default: none)")
    sim.add_argument("--read-noise", type=non_negative_float, default=0.0,
                     help="Gaussian read-noise sigma / clean maximum (default %(default)s: none)")
    sim.add_argument("--seed", type=int, default=0, help="noise seed (default %(default)s)")
    _add_output(sim, None, "output .npz (measurement under key y; it also records the mismatch, oversample, bands, "
                           "step and the noise settings, and calibrate --meas takes bands and step from it)")
    _add_threads(sim)
    return parser


def main(argv: list[str] | None = None):
    """``calibrate`` is the default command when the first argument is an option, ``demo`` without any.

    Bad input ends with one line ``calibrate.py COMMAND: error: ...`` and exit code 2 before any work
    (``cassi.errors``); returns the written files (the demo: its results) otherwise.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["demo"]
    elif argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["calibrate", *argv]
    args = build_parser().parse_args(argv)
    run = {"simulate": simulate, "calibrate": run_calibration, "demo": run_demo}[args.command]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with cli_errors(f"calibrate.py {args.command}"):
        return run(args)


if __name__ == "__main__":
    main()
