"""``eval.py kaist``: scenes + mask + method -> scenarios -> tables, results.json and previews in one folder."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from cassi import CassiOperator
from cassi.checks import check_instrument
from cassi.errors import UserError
from cassi.kaist_table import text_table
from data.io import load_mask
from data.kaist import (Scene, check_scene_sizes, mst_mask, mst_scenes, mst_test_folder, synthetic_mask,
                        synthetic_scenes)
from data.previews import save_comparison, save_spectra
from evaluation.calibration import PerSceneEstimates
from evaluation.protocol import PROTOCOL
from evaluation.reconstructors import Network, Reconstructor
from evaluation.reports import calibration_status_lines, calibration_summary, write_reports
from evaluation.scenarios import UNDEFINED, Calibrator, FixedEstimate, ScenarioSetup, run_scenarios
from models.release import mask_sha256

DEFAULT_SYNTHETIC_SIZE = 128   # px of the synthetic scenes when nothing else sets it
RANDOM_MASK = "random binary"  # the built-in mask's source description


@dataclass
class DataSpec:
    """Where the scenes come from: ``root`` (MST layout: ``TSA_simu_data``, or the toolbox's ``datasets/`` holding it)
    or ``count`` synthetic scenes of ``size`` px.

    ``mask``: a mask file overriding ``ROOT/mask.mat``, the release's mask and the synthetic mask;
    ``size``: of the synthetic scenes and their random mask (None: 128, or the size of the mask that a file
    or the weights provide; a size that differs from that mask is an error);
    ``limit``: evaluate only the first ``limit`` scenes.
    """

    root: str | None = None
    mask: str | None = None
    count: int = 10
    size: int | None = None
    seed: int = 0
    limit: int | None = None


def load_data(spec: DataSpec, method: Reconstructor) -> tuple[list[Scene], Tensor, dict[str, Any]]:
    """Scenes, mask and a JSON description of both.

    Mask precedence: ``spec.mask`` file, ``ROOT/mask.mat``, the mask stored with a released network, then
    (synthetic scenes only) a seeded random binary mask. Synthetic scenes take the mask's size when a
    file or release provides one.
    """
    root = None if spec.root is None else str(mst_test_folder(spec.root))   # TSA_simu_data, or datasets/ holding it
    release_mask = method.loaded.mask if isinstance(method, Network) else None
    if isinstance(method, Network) and spec.mask is None and root is None and method.loaded.mask_error:
        method.loaded.require_mask()                 # its training mask is recorded but cannot be rebuilt
    if spec.mask is not None:
        mask, mask_source = torch.from_numpy(load_mask(spec.mask)), spec.mask
    elif root is not None:
        mask, mask_source = mst_mask(root), str(Path(root) / "mask.mat")
    elif release_mask is not None:
        mask, mask_source = release_mask, f"stored with the weights {method.loaded.source['path']}"
    else:
        size = spec.size or DEFAULT_SYNTHETIC_SIZE
        mask, mask_source = synthetic_mask(size, size, spec.seed), f"{RANDOM_MASK} (seed {spec.seed})"
    height, width = mask.shape
    if spec.size is not None and (root is not None or (height, width) != (spec.size, spec.size)):
        raise UserError(f"--synthetic.size {spec.size}: " + (
            "the scenes come from --data.root, not the synthetic generator" if root is not None else
            f"the synthetic scenes take the size of the mask ({mask_source}: {height}x{width}); drop the option "
            "or pass --mask with a mask of that size"))
    scenes = mst_scenes(root) if root is not None else synthetic_scenes(spec.count, height, width, spec.seed)
    available = len(scenes)
    if spec.limit is not None:
        scenes = scenes[:spec.limit]
    check_scene_sizes(scenes, mask)
    # the description counts the scenes evaluated, after --limit (model cards quote it)
    subset = f"the first {len(scenes)} of " if len(scenes) != available else ""
    if root is not None:
        description = f"{subset}{available} scenes of the MST layout {root}"
    else:
        description = f"{subset}{available} built-in synthetic scenes, {height}x{width}, seed {spec.seed}"
    info = {"description": description, "root": root, "seed": None if root is not None else spec.seed,
            "available": available, "scenes": [s.name for s in scenes],
            "mask": {"source": mask_source, "shape": list(mask.shape), "sha256": mask_sha256(mask)}}
    return scenes, mask, info


def mask_warnings(method: Reconstructor, mask: Tensor, mask_source: str) -> list[str]:
    """A network evaluated with another mask than the one it was released with gets a warning, and one
    whose weights record no mask, evaluated on the built-in random mask (``mask_source``), too."""
    if isinstance(method, Network) and method.loaded.mask is None and mask_source.startswith(RANDOM_MASK):
        return [f"the weights {method.loaded.source['path']} record no training mask and the evaluation uses the "
                f"built-in {mask_source} mask: weights trained with another mask (e.g. the KAIST mask) score low "
                "here; pass the mask they were trained with (--mask, or --data.root with its mask.mat)"]
    note = method.loaded.mask_warning(mask, "the evaluation mask") if isinstance(method, Network) else None
    return [note] if note else []


def instrument_warnings(setup: ScenarioSetup, calibrator: Calibrator | None, mask: Tensor, bands: int,
                        scenes: list[str] = ()) -> list[str]:
    """Physical checks (:func:`cassi.checks.check_instrument`) of the injected mismatch and of a fixed
    scenario III estimate: an impossible instrument is an error, a doubtful one a warning (returned). A saved
    calibration per scene: each of ``scenes``' estimates is checked, an impossible one refused here (before any
    work); their warnings are reported per scene (:func:`evaluation.scenarios.run_scenarios`)."""
    warnings = []
    if setup.needs_mismatch:
        warnings += check_instrument(CassiOperator(mask, bands, setup.step, setup.mismatch), "injected mismatch")
    if isinstance(calibrator, FixedEstimate):
        source = calibrator.description.get("path", "scenario III")
        warnings += check_instrument(CassiOperator(mask, bands, setup.step, calibrator.estimate),
                                     f"scenario III estimate from {source}")
    if isinstance(calibrator, PerSceneEstimates):
        for name in scenes:
            check_instrument(CassiOperator(mask, bands, setup.step, calibrator.estimates[name]),
                             f"scenario III estimate of {name} from {calibrator.description['files'][name]}")
    return warnings


def evaluate_kaist(method: Reconstructor, scenes: list[Scene], mask: Tensor, data_info: dict[str, Any],
                   setup: ScenarioSetup, out_dir: str | Path, calibrator: Calibrator | None = None,
                   previews: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Run the protocol (and scenarios) on ``load_data``'s output; write results.{json,md,csv} and previews/
    to ``out_dir`` (the tables are printed first). Returns the results.

    ``previews``: number of scenes per scenario that get PNG previews (None: all, 0: none).
    """
    out_dir = Path(out_dir)
    warnings = (mask_warnings(method, mask, data_info["mask"]["source"])
                + instrument_warnings(setup, calibrator, mask, scenes[0].cube.shape[0], [s.name for s in scenes]))
    for warning in warnings:
        print(f"warning: {warning}")
    preview_files: list[str] = []
    single = len(setup.scenarios) == 1
    progress = tqdm(total=len(scenes) * setup.reconstructions(calibrator), desc="kaist", unit="reconstruction",
                    disable=None if verbose else True)

    def on_result(scenario: str, scene: Scene, pred: Tensor, row: dict[str, Any]) -> None:
        progress.update()
        if verbose:
            progress.write(f"[{scenario}] {scene.name}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}, "
                           f"SAM {row['sam']:.2f} deg, {row['seconds']:.2f} s")
        index = data_info["scenes"].index(scene.name)
        if previews is not None and index >= previews:
            return
        stem = scene.name if single else f"{scenario}_{scene.name}"
        title = f"{scene.name} - {method.name} - scenario {scenario}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}"
        for path in (save_comparison(out_dir / "previews" / f"{stem}.png", pred, scene.cube, title),
                     save_spectra(out_dir / "previews" / f"{stem}_spectra.png", pred, scene.cube,
                                  f"{scene.name} - scenario {scenario}: spectra at the probes")):
            preview_files.append(str(path.relative_to(out_dir)))

    with progress:
        outcome = run_scenarios(scenes, mask, method, setup, calibrator, on_result)
        progress.total = progress.n     # fewer where scenario III left out a scene whose calibration failed
    for row in outcome.get("calibration", {}).get("scenes", []):    # each scene's own estimate's physical checks
        for warning in row.get("instrument_warnings", []):
            print(f"warning: {warning}")
            warnings.append(warning)
    primary = "I" if "I" in outcome["scenarios"] else setup.scenarios[0]
    results = {
        "command": "kaist",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(getattr(method, "device", "cpu")), "threads": torch.get_num_threads()},
        "protocol": PROTOCOL,
        "method": method.describe(),
        "data": data_info,
        "setup": setup.describe(),
        "primary_scenario": primary,
        "scenes": outcome["scenarios"][primary]["scenes"],
        "mean": outcome["scenarios"][primary]["mean"],
        **outcome,
        "warnings": warnings,
        "previews": preview_files,
    }
    if verbose:
        for scenario, block in outcome["scenarios"].items():
            print(f"\nScenario {scenario} ({block['description']})")
            print(text_table(block["scenes"], block["mean"], block.get("not_reconstructed", [])))
        for key, values in outcome.get("comparison", {}).items():
            print(f"{key}: " + ", ".join(f"{m} {'-' if v is None else f'{v:+.3f}'}" for m, v in values.items()))
            for metric, why in outcome.get(UNDEFINED, {}).get(key, {}).items():
                print(f"  {key} {metric} undefined: {why}")
        if "calibration" in outcome:
            print("calibration mean |error|: " + ", ".join(
                f"{k} {'-' if v is None else f'{v:.4f}'}" for k, v in outcome["calibration"]["mean_abs_error"].items()))
            print(calibration_summary(results))
        for line in calibration_status_lines(results):
            print(line)
    write_reports(results, out_dir)
    return results
