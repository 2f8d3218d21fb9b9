"""``eval.py real``: reconstruct real CASSI captures (no ground truth) and save previews.

Folder layout (TSA-Net / MST ``TSA_real_data``)::

    ROOT/mask.mat       key 'mask', (H, W)                       (660 x 660 for the TSA captures)
    ROOT/scene*.mat     key 'meas_real', (H, W + step * (L - 1))   (660 x 714)

There is no ground truth, so the only number reported is the measurement residual of the
reconstruction, ||A x - y|| / ||y|| (relative, through the same operator the method assumed).
``scale`` optionally rescales each measurement to the given maximum first (the MST real-data test code
uses 0.8 before its networks); the residual is computed on the measurement as reconstructed.

``operator``: an operator file from ``calibrate.py`` (its mask must be ROOT/mask.mat): every capture is
also reconstructed through the calibrated instrument -- the forward model the file records
(``calib.instrument.load_instrument``, e.g. the N=4, K=2 enlarged grid) -- and the previews show the
nominal and the calibrated reconstruction side by side. The two residuals are each through their own
operator: GAP-TV fits a sharp integer-shift operator faster than a sub-pixel one, so they rank the
fits, not the operators (README "Calibration").
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from calib.instrument import load_instrument
from cassi import CassiOperator
from cassi.checks import check_mask, check_measurement
from cassi.errors import UserError
from cassi.files import write_json, write_text
from cassi.gap_tv import compile_tv_kernel
from data.io import load_mask, load_measurement
from data.previews import save_real, save_spectra
from evaluation.protocol import timed
from evaluation.reconstructors import Reconstructor
from evaluation.reports import markdown_table
from models.release import mask_sha256


def find_captures(root: str | Path) -> tuple[Path, list[Path]]:
    """``ROOT/mask.mat`` and the other .mat files of ``ROOT`` (sorted), with clear errors."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"real-capture folder not found: {root}")
    mask = root / "mask.mat"
    if not mask.is_file():
        raise FileNotFoundError(f"{root}: expected the coded aperture in {mask}")
    captures = sorted(p for p in root.glob("*.mat") if p.name != "mask.mat")
    if not captures:
        raise FileNotFoundError(f"{root}: no capture .mat files (key 'meas_real') next to mask.mat")
    return mask, captures


def load_captures(root: str | Path, bands: int = 28, step: int = 2, limit: int | None = None
                  ) -> tuple[Path, torch.Tensor, list[tuple[Path, torch.Tensor]], list[str]]:
    """The mask, the captures (the first ``limit``) and warnings, all read and checked before any
    reconstruction: shapes, finite values, light in every capture (:func:`cassi.checks.check_measurement`)."""
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of captures, got {limit}")
    mask_path, paths = find_captures(root)
    mask = torch.from_numpy(load_mask(mask_path))
    check_mask(mask, str(mask_path))
    expected = (mask.shape[0], mask.shape[1] + step * (bands - 1))
    captures, warnings = [], []
    for path in paths[:limit]:
        y = torch.from_numpy(load_measurement(path, key="meas_real"))
        if tuple(y.shape) != expected:
            raise UserError(f"{path}['meas_real'] has shape {tuple(y.shape)}; with the {tuple(mask.shape)} mask "
                            f"and {bands} bands (step {step}) it must be {expected}")
        warnings += check_measurement(y, f"{path}['meas_real']")
        captures.append((path, y))
    return mask_path, mask, captures, warnings


def _column(kind: str, label: str) -> str:
    """Result column of a quantity for the nominal operator ("residual") or another one ("residual_calibrated")."""
    return kind if label == "nominal" else f"{kind}_{label}"


def calibrated_operator(path: str | Path, mask: torch.Tensor, bands: int, step: int) -> CassiOperator:
    """The instrument of an operator file, which must hold ``mask`` and the given bands and step."""
    op = load_instrument(path)
    if tuple(op.mask.shape[-2:]) != tuple(mask.shape) or mask_sha256(op.mask[0]) != mask_sha256(mask):
        raise UserError(f"{path}: the operator's mask (shape {tuple(op.mask.shape[-2:])}) is not the captures' "
                        f"mask.mat (shape {tuple(mask.shape)}); calibrate with the same mask")
    if (op.bands, op.step) != (bands, step):
        raise UserError(f"{path}: the operator has {op.bands} bands and step {op.step}; the captures are "
                        f"reconstructed with {bands} bands and step {step}")
    return op


def evaluate_real(method: Reconstructor, root: str | Path, out_dir: str | Path, bands: int = 28, step: int = 2,
                  scale: float | None = None, previews: bool = True, limit: int | None = None,
                  verbose: bool = True, operator: str | Path | None = None) -> dict[str, Any]:
    """Reconstruct every capture of ``root`` (the first ``limit`` ones if given) with the nominal operator
    and, given an ``operator`` file, the calibrated one; write results.{json,md}, previews and spectra to
    ``out_dir`` (the mean is printed first)."""
    if scale is not None and not 0 < scale < float("inf"):
        raise UserError(f"scale must be a finite number > 0, got {scale}")
    out_dir = Path(out_dir)
    mask_path, mask, captures, warnings = load_captures(root, bands, step, limit)
    operators = {"nominal": CassiOperator(mask, bands, step)}
    if operator is not None:
        operators["calibrated"] = calibrated_operator(operator, mask, bands, step)
    for warning in warnings:
        print(f"warning: {warning}")
    rows, preview_files = [], []
    compile_tv_kernel()
    for path, y in tqdm(captures, desc="real", unit="capture", disable=not verbose):
        if scale is not None:
            y = y * (scale / y.max())
        y = y[None]
        row: dict[str, Any] = {"name": path.stem}
        reconstructions = []
        for label, instrument in operators.items():
            pred, seconds = timed(method, y, instrument)
            residual = instrument(pred) - y
            row[_column("residual", label)] = float(residual.norm() / y.norm())
            row[_column("seconds", label)] = seconds
            reconstructions.append((label, pred[0], residual[0]))
        rows.append(row)
        if verbose:
            tqdm.write(f"{path.stem}: relative residual ||Ax - y||/||y|| = "
                       + ", ".join(f"{row[_column('residual', k)]:.4f} ({k})" for k in operators)
                       + f", {row['seconds']:.2f} s")
        if previews:
            title = f"{path.stem} - {method.name}: " + ", ".join(
                f"{label} operator residual {row[_column('residual', label)]:.4f}" for label in operators)
            for file in (save_real(out_dir / "previews" / f"{path.stem}.png", y[0], reconstructions, title),
                         save_spectra(out_dir / "previews" / f"{path.stem}_spectra.png", reconstructions[-1][1],
                                      None, f"{path.stem}: reconstructed spectra at the probes "
                                      f"({reconstructions[-1][0]})")):
                preview_files.append(str(file.relative_to(out_dir)))
    keys = [k for k in rows[0] if k != "name"]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    results = {"command": "real", "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "method": method.describe(), "root": str(root), "scale": scale,
               "mask": {"source": str(mask_path), "shape": list(mask.shape), "sha256": mask_sha256(mask)},
               "metric": "relative measurement residual ||A x - y|| / ||y|| (no ground truth: no PSNR/SSIM)",
               "captures": rows, "mean": mean, "warnings": warnings, "previews": preview_files}
    if operator is not None:
        calibrated = operators["calibrated"]
        results["operator"] = {"path": str(operator), "mismatch": calibrated.mismatch.to_dict(),
                               "oversample": list(calibrated.oversample),
                               "mask_interpolation": calibrated.mask_interpolation}
    if verbose:
        print(f"mean relative residual {mean['residual']:.4f}")
    write_json(out_dir / "results.json", results)
    cells = ["{:.4f}" if k.startswith("residual") else "{:.2f}" for k in keys]
    lines = [[r["name"], *[c.format(r[k]) for c, k in zip(cells, keys)]] for r in rows]
    lines.append(["mean", *[c.format(mean[k]) for c, k in zip(cells, keys)]])
    write_text(out_dir / "results.md", f"# Real captures: {method.name}\n\n{results['metric']}; data {root}\n\n"
               + "".join(f"- **warning**: {w}\n" for w in warnings) + ("\n" if warnings else "")
               + markdown_table(["capture", *[k.replace("_", " ") for k in keys]], lines) + "\n")
    return results
