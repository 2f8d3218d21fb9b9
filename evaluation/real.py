"""``eval.py real``: reconstruct real CASSI captures (no ground truth) and save previews.

Folder layouts: the flat one, the MST toolbox's ``datasets/TSA_real_data`` or TSA-Net's ``Data``::

    ROOT/mask.mat                        key 'mask', (H, W)                       (660 x 660 for the TSA captures)
    ROOT/scene*.mat                      key 'meas_real', (H, W + step * (L - 1))   (660 x 714)
    ROOT/Measurements/scene*.mat         the same, in the MST toolbox (ROOT = TSA_real_data)
    ROOT/Testing_real_data/scene*.mat    the same, in TSA-Net (ROOT = TSA_Net_realdata/Data)

ROOT may also be the MST toolbox's ``datasets/`` (then ROOT/TSA_real_data is read: :func:`real_data_folder`).
The captures must all be in one of these folders (captures in two of them are refused, naming both and
``--data.captures``) or in the folder ``captures`` names (any folder: ``eval.py real --data.captures``). Only
``scene*.mat`` files are captures (a notes.mat beside them is not read).

There is no ground truth, so the only number reported is the measurement residual of the reconstruction,
relative and through the same operator the method assumed. A method that fits x through the operator
(GAP-TV) reports ||A x - y|| / ||y||. A network's cube is not fitted through the operator and has the scale
it was trained on (BiSCI's real network: about 7x the operator's), which the plain residual would count as
misfit; a network therefore reports ``scaled_residual`` ||c A x - y|| / ||y|| with the least-squares scale
c = <A x, y> / <A x, A x>, and c itself (``scale``). ``scale`` (the option) optionally rescales each
measurement to the given maximum first (the MST real-data test code uses 0.8 before its networks); the
residual is computed on the measurement as reconstructed.

``operator``: an operator file from ``calibrate.py``, read (:func:`evaluation.calibration.read_saved`, which refuses
a "failed" calibration; its mask must be ROOT/mask.mat): every capture is
also reconstructed through the calibrated instrument -- the forward model the file records
(``calib.instrument.load_instrument``, e.g. the N=4, K=2 enlarged grid) -- and the previews show the
nominal and the calibrated reconstruction side by side; the status and reasons of the calibration the file
records ("status not recorded" for files written before calibrate.py recorded them) are printed and in
results.json / results.md. A method that does not use the mask (a measurement-only network such as
``bisrnet_real``) is refused: its calibrated column would repeat the nominal one. The two residuals are each
through their own operator: GAP-TV fits a sharp integer-shift operator faster than a sub-pixel one, so they
rank the fits, not the operators (README "Calibration").
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from calib.instrument import record_instrument
from cassi import CassiOperator, Mismatch
from cassi.checks import check_mask, check_measurement
from cassi.errors import UserError
from cassi.files import write_json, write_text
from cassi.gap_tv import compile_tv_kernel
from cassi.operator_file import OperatorRecord, status_text
from data.io import load_mask, load_measurement
from data.previews import save_real, save_real_spectra
from evaluation.calibration import SavedCalibration, handed_estimate
from evaluation.protocol import timed
from evaluation.reconstructors import Network, Reconstructor, check_reconstructs, check_uses_mask
from evaluation.reports import markdown_table
from models.release import mask_sha256, same_mask


TOOLBOX_REAL = "TSA_real_data"              # the real-capture folder of the MST toolbox's datasets/
CAPTURE_FOLDERS = ("Measurements",           # where the MST toolbox's TSA_real_data keeps its captures
                   "Testing_real_data")      # and where TSA-Net's Data/ does
METRICS = {"residual": "relative measurement residual ||A x - y|| / ||y||",
           "scaled_residual": "relative measurement residual after the best single scale, ||c A x - y|| / ||y|| "
                              "with c = <A x, y> / <A x, A x> (the network's cube is not fitted through the "
                              "operator and has its own scale; c is the 'scale' column)"}
LABELS = {"residual": "relative residual ||Ax - y||/||y||",            # the same, short (stdout)
          "scaled_residual": "relative residual after the best scale c, ||cAx - y||/||y||"}
OPERATOR_CAVEAT = ("the residuals rank how closely the method fits y through each operator, not which operator is "
                   "right (GAP-TV fits a sharp integer-shift operator faster than a sub-pixel one)")


def real_data_folder(root: str | Path) -> Path:
    """The folder of ``mask.mat`` that ``root`` names: ``root`` itself, or the MST toolbox's ``datasets/`` holding
    ``TSA_real_data/`` (and no ``mask.mat`` of its own), as ``eval.py kaist`` takes ``datasets/``
    (:func:`data.kaist.mst_test_folder`). Nothing else is looked for: :func:`find_captures` says what is missing."""
    root = Path(root)
    if not (root / "mask.mat").is_file() and (root / TOOLBOX_REAL).is_dir():
        return root / TOOLBOX_REAL
    return root


def find_captures(root: str | Path, captures: str | Path | None = None) -> tuple[Path, list[Path]]:
    """``mask.mat`` of :func:`real_data_folder` (``ROOT``) and the captures ``scene*.mat`` (sorted) of the folder
    ``captures`` (``--data.captures``), else of the one folder that holds them: ``ROOT`` or one of
    :data:`CAPTURE_FOLDERS` in it (the MST toolbox's and TSA-Net's layouts); clear errors otherwise, naming the
    folder to pass for a capture folder given itself, and ``--data.captures`` for captures in more than one of
    them."""
    root = real_data_folder(root)
    if not root.is_dir():
        raise FileNotFoundError(f"real-capture folder not found: {root}")
    mask = root / "mask.mat"
    if not mask.is_file():
        hint = (f"; pass --data.root {root.parent}, the folder holding mask.mat and {root.name}/"
                if root.name in CAPTURE_FOLDERS else
                f" (pass --data.root the folder holding mask.mat and the captures: the MST toolbox's {TOOLBOX_REAL} "
                "or the datasets/ folder holding it, or TSA-Net's Data)")
        raise FileNotFoundError(f"{root}: expected the coded aperture in {mask}{hint}")
    if captures is not None:
        files = sorted(Path(captures).glob("scene*.mat"))
        if not files:
            raise FileNotFoundError(f"--data.captures {captures}: no captures scene*.mat (key 'meas_real') in it"
                                    + ("" if Path(captures).is_dir() else " (no such folder)"))
        return mask, files
    folders = (root, *(root / name for name in CAPTURE_FOLDERS))
    listed = {folder: sorted(folder.glob("scene*.mat")) for folder in folders}
    found = {folder: files for folder, files in listed.items() if files}
    if len(found) > 1:
        held = ", ".join(f"{len(files)} in {folder}" for folder, files in found.items())
        raise UserError(f"{root}: captures scene*.mat in more than one folder ({held}); pass --data.captures with "
                        "the one to read")
    if not found:
        raise FileNotFoundError(f"{root}: no captures scene*.mat (key 'meas_real') next to mask.mat or in "
                                f"{' or '.join(f'{name}/' for name in CAPTURE_FOLDERS)}")
    return mask, next(iter(found.values()))


def load_captures(root: str | Path, bands: int = 28, step: int = 2, limit: int | None = None,
                  captures: str | Path | None = None
                  ) -> tuple[Path, torch.Tensor, list[tuple[Path, torch.Tensor]], list[str]]:
    """The mask, the captures (of the folder ``captures`` if given: :func:`find_captures`; the first ``limit``) and
    warnings, all read and checked before any reconstruction: shapes, finite values, light in every capture
    (:func:`cassi.checks.check_measurement`)."""
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of captures, got {limit}")
    mask_path, paths = find_captures(root, captures)
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


def fitted_scale(ax: Tensor, y: Tensor) -> float:
    """The least-squares scale c = <A x, y> / <A x, A x> that best maps a reconstruction's measurement ``ax``
    onto ``y`` (both (B, H, W + step*(L-1)), one c for all); 0 when A x is zero."""
    energy = float((ax * ax).sum())
    return float((ax * y).sum()) / energy if energy > 0 else 0.0


def negative_scale_warning(capture: str, label: str, scale: float) -> str:
    """What a best scale c <= 0 says: the reconstruction's measurement does not resemble the capture."""
    return (f"{capture}: the best scale c = {scale:.3g} is not positive ({label} operator): the reconstruction's "
            "measurement is not like the capture, so its scaled residual measures nothing; weights for another "
            "input (e.g. real-data weights given to the simulation model, or the reverse)?")


def measurement_fit(method: Reconstructor, ax: Tensor, y: Tensor) -> tuple[dict[str, float], Tensor]:
    """The residual columns of one reconstruction and its residual image (B, H, W'): ``{"residual"}`` and
    A x - y for a method that fits x through the operator, else ``{"scaled_residual", "scale"}`` and
    c A x - y (:func:`fitted_scale`)."""
    if method.fits_measurement:
        residual = ax - y
        return {"residual": float(residual.norm() / y.norm())}, residual
    c = fitted_scale(ax, y)
    residual = c * ax - y
    return {"scaled_residual": float(residual.norm() / y.norm()), "scale": c}, residual


def _listing(row: dict[str, Any], kind: str, labels: list[str]) -> str:
    """'0.1234 (nominal), 0.1100 (calibrated)' -- with ', c = 0.14' per label for a scaled residual."""
    return ", ".join(f"{row[_column(kind, label)]:.4f} ({label}"
                     + (f", c = {row[_column('scale', label)]:.4g})" if kind == "scaled_residual" else ")")
                     for label in labels)


def _cell(key: str) -> str:
    """The format of a results.md cell: residuals to 4 decimals, the scale to 4 digits, seconds to 2 decimals."""
    return "{:.4f}" if "residual" in key else "{:.4g}" if key.startswith("scale") else "{:.2f}"


def calibrated_operator(record: OperatorRecord, path: str | Path, mask: torch.Tensor, bands: int, step: int
                        ) -> tuple[CassiOperator, Mismatch | None]:
    """The instrument of the operator file ``path`` (read: ``record``), which must hold ``mask`` (or the binary code
    recovered from it, which must resample to it) and the given bands and step; and, for such a code, the estimate
    for ``mask`` (:func:`evaluation.calibration.handed_estimate`), else None."""
    op, handed = record_instrument(record, path), None
    if record.code_phase is not None and tuple(op.mask.shape[-2:]) == tuple(mask.shape):
        handed = handed_estimate(record, path, mask)
    elif not same_mask(op.mask[0], mask):
        raise UserError(f"{path}: the operator's mask (shape {tuple(op.mask.shape[-2:])}) is not the captures' "
                        f"mask.mat (shape {tuple(mask.shape)}); calibrate with the same mask")
    if (op.bands, op.step) != (bands, step):
        raise UserError(f"{path}: the operator has {op.bands} bands and step {op.step}; the captures are "
                        f"reconstructed with {bands} bands and step {step}")
    return op, handed


def evaluate_real(method: Reconstructor, root: str | Path, out_dir: str | Path, bands: int = 28, step: int = 2,
                  scale: float | None = None, previews: bool = True, limit: int | None = None,
                  verbose: bool = True, operator: SavedCalibration | None = None,
                  captures_folder: str | Path | None = None) -> dict[str, Any]:
    """Reconstruct every capture of ``root`` (of ``captures_folder`` if given: :func:`find_captures`; the first
    ``limit`` ones if given) with the nominal operator
    and, given an ``operator`` file (read: :func:`evaluation.calibration.read_saved`), the calibrated one; write
    results.{json,md}, previews and spectra to ``out_dir`` (the means are printed first). A network that cannot
    reconstruct the captures' size (its ``size_rule``) or inputs is refused before the first reconstruction
    (:func:`evaluation.reconstructors.check_reconstructs`)."""
    if scale is not None and not 0 < scale < float("inf"):
        raise UserError(f"scale must be a finite number > 0, got {scale}")
    if operator is not None:
        check_uses_mask(method, "--operator")
    out_dir = Path(out_dir)
    mask_path, mask, captures, warnings = load_captures(root, bands, step, limit, captures_folder)
    check_reconstructs(method, mask, bands, step)              # the network's size rule and inputs, before any work
    if isinstance(method, Network) and method.uses_mask:        # weights trained on another code: a warning
        warnings += filter(None, [method.loaded.mask_warning(mask, f"the captures' mask {mask_path}")])
    operators, handed = {"nominal": CassiOperator(mask, bands, step)}, None
    if operator is not None:
        operators["calibrated"], handed = calibrated_operator(operator.record, operator.path, mask, bands, step)
    for warning in warnings:
        print(f"warning: {warning}")
    kind = "residual" if method.fits_measurement else "scaled_residual"
    rows, preview_files = [], []
    compile_tv_kernel()
    for path, y in tqdm(captures, desc="real", unit="capture", disable=None if verbose else True):
        if scale is not None:
            y = y * (scale / y.max())
        y = y[None]
        row: dict[str, Any] = {"name": path.stem}
        reconstructions = []
        for label, instrument in operators.items():
            pred, seconds = timed(method, y, instrument)
            fit, residual = measurement_fit(method, instrument(pred), y)
            if fit.get("scale", 1.0) <= 0:
                warnings.append(negative_scale_warning(path.stem, label, fit["scale"]))
                tqdm.write(f"warning: {warnings[-1]}")
            row.update({_column(k, label): v for k, v in fit.items()})
            row[_column("seconds", label)] = seconds
            reconstructions.append((label, pred[0], residual[0]))
        rows.append(row)
        if verbose:
            tqdm.write(f"{path.stem}: {LABELS[kind]} = {_listing(row, kind, list(operators))}, {row['seconds']:.2f} s")
        if previews:
            title = f"{path.stem} - {method.name}: {kind.replace('_', ' ')} " + ", ".join(
                f"{row[_column(kind, label)]:.4f} ({label} operator)" for label in operators)
            for file in (save_real(out_dir / "previews" / f"{path.stem}.png", y[0], reconstructions, title),
                         save_real_spectra(out_dir / "previews" / f"{path.stem}_spectra.png", reconstructions,
                                           f"{path.stem}: reconstructed spectra at the probes "
                                           f"({', '.join(label for label, _, _ in reconstructions)})")):
                preview_files.append(str(file.relative_to(out_dir)))
    keys = [k for k in rows[0] if k != "name"]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    results = {"command": "real", "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "method": method.describe(), "root": str(mask_path.parent),     # TSA_real_data for datasets/
               "captures_folder": str(captures[0][0].parent), "scale": scale,
               "mask": {"source": str(mask_path), "shape": list(mask.shape), "sha256": mask_sha256(mask)},
               "metric": f"{METRICS[kind]} (no ground truth: no PSNR/SSIM)", "residual_key": kind,
               "captures": rows, "mean": mean, "warnings": warnings, "previews": preview_files}
    if operator is not None:
        calibrated = operators["calibrated"]
        record = operator.record
        results["operator"] = {"path": operator.path, "mismatch": (handed or calibrated.mismatch).to_dict(),
                               **({} if handed is None else {"code_frame": {
                                   "phase": dict(zip(("fy", "fx"), record.code_phase)),
                                   "estimate": calibrated.mismatch.to_dict()}}),
                               "oversample": list(calibrated.oversample),
                               "mask_interpolation": calibrated.mask_interpolation,
                               "calibration_status": record.calibration,
                               "caveat": OPERATOR_CAVEAT}
    if verbose:
        print(f"mean {LABELS[kind]} = {_listing(mean, kind, list(operators))}")
        if operator is not None:
            print(f"calibration status of {operator.path}: {status_text(results['operator']['calibration_status'])}")
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "results.md", results_markdown(results, method.name, keys))
    return results


def _operator_lines(info: dict[str, Any]) -> str:
    """results.md lines naming the calibrated operator (path, mismatch, forward model), its calibration's status
    and the caveat."""
    mismatch = ", ".join(f"{k}={v:.4g}" for k, v in info["mismatch"].items())
    n, k = info["oversample"]
    frame = info.get("code_frame")
    code = ("" if frame is None else f"; the mask is the binary code recovered from the handed mask, resampled at "
            f"phase fy={frame['phase']['fy']:g}, fx={frame['phase']['fx']:g} px, read at the estimate in its frame")
    return (f"- calibrated operator: {info['path']} (mismatch {mismatch}; forward model N={n}, K={k}, mask read "
            f"{info['mask_interpolation']}{code})\n"
            f"- **calibration status**: {status_text(info['calibration_status'])}\n- **caveat**: {info['caveat']}\n")


def results_markdown(results: dict[str, Any], name: str, keys: list[str]) -> str:
    """results.md of :func:`evaluate_real`: the metric, warnings, the calibrated operator and the table of ``keys``."""
    rows, mean = results["captures"], results["mean"]
    lines = [[r["name"], *[_cell(k).format(r[k]) for k in keys]] for r in rows]
    lines.append(["mean", *[_cell(k).format(mean[k]) for k in keys]])
    operator = results.get("operator")
    notes = "".join(f"- **warning**: {w}\n" for w in results["warnings"])
    notes += _operator_lines(operator) if operator else ""
    return (f"# Real captures: {name}\n\n{results['metric']}; data {results['root']}\n\n" + notes
            + ("\n" if notes else "") + markdown_table(["capture", *[k.replace("_", " ") for k in keys]], lines) + "\n")
