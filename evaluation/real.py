"""``eval.py real``: reconstruct real CASSI captures (no ground truth) and save previews.

Folder layout (TSA-Net / MST ``TSA_real_data``)::

    ROOT/mask.mat       key 'mask', (H, W)                       (660 x 660 for the TSA captures)
    ROOT/scene*.mat     key 'meas_real', (H, W + step * (L - 1))   (660 x 714)

There is no ground truth, so the only number reported is the measurement residual of the
reconstruction, ||A x - y|| / ||y|| (relative, through the same operator the method assumed).
``scale`` optionally rescales each measurement to the given maximum first (the MST real-data test code
uses 0.8 before its networks); the residual is computed on the measurement as reconstructed.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

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


def evaluate_real(method: Reconstructor, root: str | Path, out_dir: str | Path, bands: int = 28, step: int = 2,
                  scale: float | None = None, previews: bool = True, limit: int | None = None,
                  verbose: bool = True) -> dict[str, Any]:
    """Reconstruct every capture of ``root`` (the first ``limit`` ones if given); write results.{json,md},
    previews and spectra to ``out_dir`` (the mean is printed first)."""
    if scale is not None and not 0 < scale < float("inf"):
        raise UserError(f"scale must be a finite number > 0, got {scale}")
    out_dir = Path(out_dir)
    mask_path, mask, captures, warnings = load_captures(root, bands, step, limit)
    for warning in warnings:
        print(f"warning: {warning}")
    op = CassiOperator(mask, bands, step)
    rows, preview_files = [], []
    compile_tv_kernel()
    for path, y in tqdm(captures, desc="real", unit="capture", disable=not verbose):
        if scale is not None:
            y = y * (scale / y.max())
        y = y[None]
        pred, seconds = timed(method, y, op)
        residual = op(pred) - y
        rows.append({"name": path.stem, "residual": float(residual.norm() / y.norm()), "seconds": seconds})
        if verbose:
            tqdm.write(f"{path.stem}: relative residual ||Ax - y||/||y|| = {rows[-1]['residual']:.4f}, "
                       f"{seconds:.2f} s")
        if previews:
            title = f"{path.stem} - {method.name}: relative residual {rows[-1]['residual']:.4f}"
            for file in (save_real(out_dir / "previews" / f"{path.stem}.png", pred[0], y[0], residual[0], title),
                         save_spectra(out_dir / "previews" / f"{path.stem}_spectra.png", pred[0], None,
                                      f"{path.stem}: reconstructed spectra at the probes")):
                preview_files.append(str(file.relative_to(out_dir)))
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("residual", "seconds")}
    results = {"command": "real", "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "method": method.describe(), "root": str(root), "scale": scale,
               "mask": {"source": str(mask_path), "shape": list(mask.shape), "sha256": mask_sha256(mask)},
               "metric": "relative measurement residual ||A x - y|| / ||y|| (no ground truth: no PSNR/SSIM)",
               "captures": rows, "mean": mean, "warnings": warnings, "previews": preview_files}
    if verbose:
        print(f"mean relative residual {mean['residual']:.4f}")
    write_json(out_dir / "results.json", results)
    lines = [[r["name"], f"{r['residual']:.4f}", f"{r['seconds']:.2f}"] for r in rows]
    lines.append(["mean", f"{mean['residual']:.4f}", f"{mean['seconds']:.2f}"])
    write_text(out_dir / "results.md", f"# Real captures: {method.name}\n\n{results['metric']}; data {root}\n\n"
               + "".join(f"- **warning**: {w}\n" for w in warnings) + ("\n" if warnings else "")
               + markdown_table(["capture", "relative residual", "seconds"], lines) + "\n")
    return results
