"""Evaluate CASSI reconstruction: the KAIST protocol and mismatch scenarios, real captures, releases, model table.

    python eval.py kaist                                   # GAP-TV on 10 built-in synthetic 128x128 scenes
    python eval.py kaist --model mst_l --ckpt PATH --data.root TSA_simu_data --out runs/mst_l
    python eval.py kaist --release DIR --scenarios I,II,III,IV --mismatch dx=1,dy=0.5,theta=0.3
    python eval.py real --data.root TSA_real_data [--release DIR]
    python eval.py export --ckpt PATH [--model NAME] --mask mask.mat [--results results.json] --out DIR
    python eval.py models [--size 256] [--models mst_s,mst_l]

Run ``python eval.py COMMAND --help`` for every option. Output folders are written as one unit (an existing
non-empty --out needs --force); bad input ends with one line ``eval.py COMMAND: error: ...`` and exit code 2
before any work (README, "Errors and exit codes").
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see README, "CPU threads"

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from cassi.errors import (CliParser, UserError, cli_errors, exit_code, non_negative_float,  # noqa: E402
                          non_negative_int, positive_float, positive_int)

# torch, numpy and the rest of the project are imported by the commands that use them, so --help answers
# at once (README, "Start-up")

GAP_DEFAULTS = {"iterations": (50, positive_int), "tv_weight": (0.1, positive_float),
                "tv_iterations": (5, positive_int)}
# eval.py kaist options whose default is filled in after checking that a given value would have an effect
KAIST_DEFAULTS = {"synthetic_count": 10, "synthetic_seed": 0, "noise_seed": 0, "oversample": (4, 2)}
MODELS_REPEATS = 3      # eval.py models: timed forward passes when --repeats is not given


def parse_mismatch(text: str):
    """'dx=1,dy=0.5,theta=0.3' -> Mismatch (unnamed parameters keep their nominal values)."""
    from cassi import Mismatch
    from cassi.checks import check_mismatch

    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"mismatch item {item!r} is not NAME=VALUE")
        if name.strip() in values:
            raise argparse.ArgumentTypeError(f"mismatch names {name.strip()!r} twice in {text!r}")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"mismatch value {value!r} of {name!r} is not a number") from None
    try:
        mismatch = Mismatch.from_dict(values)
        check_mismatch(mismatch, f"mismatch {text!r}")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return mismatch


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method")
    group.add_argument("--model", default="gap_tv", help="gap_tv (default) or a registered network name")
    group.add_argument("--ckpt", help="weights: Lightning .ckpt, toolbox .pth (needs --model) or a release folder")
    group.add_argument("--release", help="a release folder written by 'eval.py export'")
    group.add_argument("--device", default=None, help="torch device for networks (default cpu; GAP-TV runs on the "
                                                      "CPU)")
    for name, (default, kind) in GAP_DEFAULTS.items():
        group.add_argument(f"--gap.{name.replace('_', '-')}", dest=f"gap_{name}", type=kind,
                           default=None, help=f"GAP-TV {name.replace('_', ' ')} (default {default})")


def _add_kaist(sub) -> None:
    parser = sub.add_parser("kaist", help="KAIST protocol and mismatch scenarios on simulated measurements",
                            description="Per-scene PSNR/SSIM (KAIST protocol), SAM, ERGAS and seconds; "
                                        "writes results.json/.md/.csv and PNG previews to --out.")
    _add_method_options(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--data.root", dest="data_root",
                      help="the MST toolbox's TSA_simu_data (Truth/sceneNN.mat + mask.mat) or the datasets/ folder "
                           "holding it; default: synthetic scenes")
    data.add_argument("--mask", help="mask file (.mat key 'mask', .npy, .npz) overriding the default mask")
    data.add_argument("--synthetic.count", dest="synthetic_count", type=positive_int, default=None,
                      help="number of synthetic scenes (default 10)")
    data.add_argument("--synthetic.size", dest="synthetic_size", type=positive_int, default=None,
                      help="synthetic scene size in px (default 128, or the size of the mask that --mask, the "
                           "checkpoint or the release provides)")
    data.add_argument("--synthetic.seed", dest="synthetic_seed", type=int, default=None,
                      help="seed of the synthetic scenes and their random mask (default 0)")
    data.add_argument("--limit", type=positive_int, help="evaluate only the first N scenes")
    scen = parser.add_argument_group("scenarios")
    scen.add_argument("--scenarios", default="I", help="comma list of I (ideal), Ih (ideal instrument: the "
                      "simulator at nominal parameters), II (mismatched), III (calibrated), IV (oracle); default I")
    scen.add_argument("--mismatch", type=parse_mismatch, default=None,
                      help="injected mismatch for II-IV, e.g. dx=1,dy=0.5,theta=0.3,a1=2.02,alpha=0.2 "
                           "(px, px, deg, px/band, deg; default dx=1,dy=0.5,theta=0.3,a1=2.02,alpha=0.2)")
    scen.add_argument("--oversample", type=positive_int, nargs=2, default=None, metavar=("N", "K"),
                      help="high-fidelity simulator oversampling, spatial N and spectral K, for Ih-IV (default 4 2)")
    scen.add_argument("--operator", help="scenario III: operator .npz from calibrate.py")
    scen.add_argument("--calibration", help="scenario III: calibration.json from calibrate.py (one estimate for "
                      "every scene), a JSON with a 'scenes' object, or a folder of DIR/<scene>/calibration.json "
                      "(each scene its own calibration)")
    noise = parser.add_argument_group("noise")
    noise.add_argument("--noise.peak", dest="noise_peak", type=positive_float,
                       help="photons at the brightest pixel")
    noise.add_argument("--noise.read", dest="noise_read", type=non_negative_float, default=0.0,
                       help="Gaussian read noise sigma relative to the clean maximum")
    noise.add_argument("--noise.seed", dest="noise_seed", type=int, default=None,
                       help="seed of the noise (scene i uses seed + i; default 0)")
    out = parser.add_argument_group("output")
    _add_output(out, "outputs/kaist", "output folder (default outputs/kaist), written as one unit at the end")
    out.add_argument("--previews", type=non_negative_int, default=None,
                     help="scenes with PNG previews (default all, 0: none)")


def _add_real(sub) -> None:
    parser = sub.add_parser("real", help="reconstruct real captures (meas_real) and save previews")
    _add_method_options(parser)
    parser.add_argument("--data.root", dest="data_root", required=True,
                        help="folder with mask.mat and the captures scene*.mat (key meas_real), beside it or in "
                        "its Measurements/ (the MST toolbox's TSA_real_data) or Testing_real_data/ (TSA-Net's Data); "
                        "or the toolbox's datasets/ (its TSA_real_data is read); other .mat files are not read")
    parser.add_argument("--data.captures", dest="data_captures",
                        help="the folder of the captures scene*.mat to read, when more than one of those folders hold "
                        "captures (default: the one that does); mask.mat is still --data.root's")
    parser.add_argument("--scale", type=positive_float, help="rescale each measurement to this maximum first "
                        "(MST real-data networks use 0.8); default: as stored")
    parser.add_argument("--limit", type=positive_int, help="reconstruct only the first N captures")
    parser.add_argument("--operator", help="calibrate.py's operator.npz: also reconstruct through the calibrated "
                        "instrument, previews side by side (GAP-TV or a mask-aware network: *_real networks take "
                        "no mask)")
    _add_output(parser, "outputs/real", "output folder (default outputs/real), written as one unit at the end")
    parser.add_argument("--no-previews", action="store_true")


def _add_export(sub) -> None:
    parser = sub.add_parser("export", help="write a self-describing release folder")
    parser.add_argument("--ckpt", required=True, help="Lightning .ckpt, toolbox .pth or a release folder")
    parser.add_argument("--model", help="registry name (required for a toolbox .pth; checked otherwise)")
    parser.add_argument("--mask", help="the coded aperture the network was trained with (.mat/.npy/.npz), for "
                        "weights that record none (a toolbox .pth); default: the mask the --ckpt records (a release's "
                        "mask.npy, a train.py checkpoint's training mask); another one is refused")
    parser.add_argument("--results", help="results.json of 'eval.py kaist' with these weights, to embed")
    _add_output(parser, None, "release folder to create (written as one unit)")


def _add_models(sub) -> None:
    parser = sub.add_parser("models", help="parameters, FLOPs, paper figures and CPU time of every network")
    parser.add_argument("--size", type=positive_int, default=256, help="spatial size (default 256)")
    parser.add_argument("--models", help="comma list of names (default: all registered)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help=f"timed forward passes (median; default {MODELS_REPEATS})")
    parser.add_argument("--no-time", action="store_true", help="skip the timing")
    parser.add_argument("--out", help="also write the table as Markdown (FILE.md) and JSON (FILE.json)")
    parser.add_argument("--force", action="store_true", help="replace existing FILE.md / FILE.json")


def _add_output(group, default: str | None, what: str) -> None:
    group.add_argument("--out", default=default, required=default is None, help=what)
    group.add_argument("--force", action="store_true",
                       help="replace an existing non-empty --out (as a whole; never one that holds an input)")


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="eval.py", description=__doc__.splitlines()[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_kaist(sub)
    _add_real(sub)
    _add_export(sub)
    _add_models(sub)
    return parser


def _method(args):
    """The reconstructor the options name; options that would have no effect on it are refused."""
    from cassi.devices import check_device
    from evaluation.reconstructors import make_reconstructor

    given = {name: getattr(args, f"gap_{name}") for name in GAP_DEFAULTS if getattr(args, f"gap_{name}") is not None}
    network = args.ckpt is not None or args.release is not None
    if network and given:                       # refused before any weights are read
        raise UserError(f"--gap.{next(iter(given)).replace('_', '-')} sets GAP-TV, and the method is the network of "
                        f"--{'ckpt' if args.ckpt else 'release'}: drop it")
    if not network and args.model == "gap_tv" and args.device is not None:
        raise UserError(f"--device {args.device} places a network, and the method is GAP-TV, which runs on the CPU: "
                        "drop it")
    gap = {name: given.get(name, default) for name, (default, _) in GAP_DEFAULTS.items()}
    return make_reconstructor(args.model, args.ckpt, args.release, check_device(args.device or "cpu"), gap)


def _wrote(folder, results: dict) -> None:
    names = sorted(p.name for p in folder.path.iterdir() if p.is_file())
    previews = len(results.get("previews", []))
    print(f"\nwrote {folder.path}: {', '.join(names)}" + (f" and {previews} previews in previews/" if previews else ""))


def _scenario_names(args) -> tuple[str, ...]:
    """The names of ``--scenarios`` (a comma list), as given."""
    return tuple(s.strip() for s in args.scenarios.split(",") if s.strip())


def _given_without_effect(args) -> str | None:
    """The first ``eval.py kaist`` option given that the other options leave without effect, and why."""
    if args.data_root is not None:
        for name in ("count", "seed"):
            if getattr(args, f"synthetic_{name}") is not None:
                return (f"--synthetic.{name} sets the built-in synthetic scenes, and the scenes come from "
                        f"--data.root {args.data_root}")
    if args.noise_seed is not None and args.noise_peak is None and not args.noise_read:
        return "--noise.seed seeds the detector noise, and neither --noise.peak nor --noise.read adds any"
    from evaluation.scenarios import ScenarioSetup

    scenarios = ScenarioSetup(_scenario_names(args)).scenarios
    if args.oversample is not None and scenarios == ("I",):
        return (f"--oversample sets the simulator of scenarios Ih-IV, and --scenarios {args.scenarios} measures "
                "on the native grid only")
    return None


def _kaist_defaults(args) -> None:
    """Refuse options that would have no effect, then fill in the defaults of :data:`KAIST_DEFAULTS`."""
    unused = _given_without_effect(args)
    if unused:
        raise UserError(f"{unused}: drop it")
    for name, default in KAIST_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def run_kaist(args) -> None:
    from cassi.files import OutputFolder
    from evaluation.calibration import make_calibrator, read_saved
    from evaluation.kaist import DataSpec, evaluate_kaist, load_data
    from evaluation.protocol import Noise
    from evaluation.reconstructors import check_reconstructs, check_uses_mask
    from evaluation.scenarios import ScenarioSetup

    _kaist_defaults(args)
    setup_kwargs = {"scenarios": _scenario_names(args),
                    "oversample": tuple(args.oversample),
                    "noise": Noise(args.noise_peak, args.noise_read, args.noise_seed)}
    if args.mismatch is not None:
        setup_kwargs["mismatch"] = args.mismatch
    setup = ScenarioSetup(**setup_kwargs)
    if args.mismatch is not None and not setup.needs_mismatch:
        raise UserError(f"--mismatch applies to scenarios II, III and IV, and --scenarios "
                        f"{','.join(setup.scenarios)} has none of them: add them (e.g. --scenarios I,II,IV) or drop "
                        "--mismatch")
    if (args.operator or args.calibration) and "III" not in setup.scenarios:
        raise UserError(f"--{'operator' if args.operator else 'calibration'} is scenario III's estimate, and "
                        f"--scenarios {','.join(setup.scenarios)} does not include III")
    calibration = read_saved(args.operator, args.calibration)    # a "failed" one is refused before any work
    if setup.needs_mismatch:
        drift = ", ".join(f"{k}={v:g}" for k, v in setup.mismatch.to_dict().items())
        given = args.mismatch is not None
        saved = "" if given or not (args.operator or args.calibration) else (
            "; scenario III applies the saved calibration to this simulated drift, so pass the drift that "
            "calibration was made for with --mismatch")
        print(f"scenarios II-IV simulate the instrument drifted by {drift}"
              + ("" if given else f" (the default drift; set it with --mismatch{saved})"))
    folder = OutputFolder(args.out, "results.json", args.force, inputs=(
        args.data_root, args.mask, args.ckpt, args.release, args.operator, args.calibration))
    with folder as staging:
        method = _method(args)
        operator_scenarios = [s for s in setup.scenarios if s in ("III", "IV")]   # the estimated / true operator
        if operator_scenarios:
            check_uses_mask(method, f"--scenarios {','.join(operator_scenarios)}")
        spec = DataSpec(args.data_root, args.mask, args.synthetic_count, args.synthetic_size, args.synthetic_seed,
                        args.limit)
        scenes, mask, info = load_data(spec, method)
        check_reconstructs(method, mask, scenes[0].cube.shape[0], setup.step)   # its size rule, before any work
        calibrator = None
        if "III" in setup.scenarios:
            calibrator = make_calibrator(calibration, mask, bands=scenes[0].cube.shape[0], step=setup.step,
                                         progress=sys.stderr.isatty())     # bars on a terminal only, as eval.py's
            if hasattr(calibrator, "require"):              # one saved calibration per scene
                calibrator.require([scene.name for scene in scenes])
        results = evaluate_kaist(method, scenes, mask, info, setup, staging, calibrator, args.previews)
    _wrote(folder, results)


def run_real(args) -> None:
    from cassi.files import OutputFolder
    from evaluation.calibration import read_saved
    from evaluation.real import evaluate_real

    operator = read_saved(args.operator, None)      # a "failed" calibration is refused before any work
    folder = OutputFolder(args.out, "results.json", args.force,
                          inputs=(args.data_root, args.data_captures, args.ckpt, args.release, args.operator))
    with folder as staging:
        results = evaluate_real(_method(args), args.data_root, staging, scale=args.scale,
                                previews=not args.no_previews, limit=args.limit, operator=operator,
                                captures_folder=args.data_captures)
    _wrote(folder, results)


def run_export(args) -> None:
    import torch

    from data.io import load_mask
    from models.checkpoints import load_weights
    from evaluation.release import export_release

    loaded = load_weights(args.ckpt, args.model)
    mask = load_mask(args.mask) if args.mask is not None else loaded.require_mask()
    other = loaded.mask_warning(torch.as_tensor(mask), f"--mask {args.mask}")
    if other:       # a release's mask.npy is the mask the network was trained with
        raise UserError(f"{other}, which {args.ckpt} records as the mask the network was trained with; leave --mask "
                        "out (it is for weights that record no mask, such as a toolbox .pth)")
    out = export_release(loaded, mask, args.out, args.results, force=args.force, inputs=(args.ckpt, args.mask))
    print(f"wrote release of '{loaded.name}' to {out} (load with models.load_release('{out}'))")


def run_models(args) -> None:
    import torch

    from cassi.files import check_output_file, write_json, write_text
    from evaluation.model_table import markdown, model_table

    if args.no_time and args.repeats is not None:
        raise UserError(f"--repeats {args.repeats} sets the timed forward passes, and --no-time skips the timing: "
                        "drop one of them")
    out = Path(args.out) if args.out else None
    if out is not None:
        for path in (out.with_suffix(".md"), out.with_suffix(".json")):
            check_output_file(path, args.force)
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    rows = model_table(names, args.size, args.repeats or MODELS_REPEATS, not args.no_time)
    if out is not None:
        write_text(out.with_suffix(".md"), markdown(rows, args.size))
        write_json(out.with_suffix(".json"), {"size": args.size, "threads": torch.get_num_threads(), "rows": rows})
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


COMMANDS = {"kaist": run_kaist, "real": run_real, "export": run_export, "models": run_models}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (bad input: one line on stderr and 2, see ``cassi.errors``)."""
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        with cli_errors(f"eval.py {args.command}"):
            COMMANDS[args.command](args)
    except SystemExit as exit:
        return exit_code(exit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
