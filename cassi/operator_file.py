"""Saving and loading an instrument model (mask + mismatch + forward model) as one ``.npz`` file.

Keys: ``mask`` (H, W) float32, ``bands``, ``step``, ``dispersion`` ("linear"/"integer"), the five
mismatch parameters ``dx, dy, theta, a1, alpha`` (px, px, deg, px/band, deg) and ``spatial``,
``spectral``: the oversampling N, K of the forward model the mismatch was calibrated with (1, 1: the
native grid; files without these keys are native), and ``mask_interpolation`` ("linear" or "cubic"):
how that model reads the mask between pixels ("cubic" on the native grid, N = 1, only; files without
the key read it bilinearly), ``calibration_status`` ("ok", "ambiguous" or "failed"; absent in files
not written by a calibration) and ``calibration_reasons`` (the status's reasons, a 1-D string array; absent
in files written before it was recorded): a file whose calibration "failed" is refused by every reader, since
its mismatch is no estimate of the instrument. ``code_phase`` (fy, fx) px: the mask is the binary code recovered
from a handed mask resampled at that phase (handed = warp_mask(mask, -fx, -fy), ``calib.handed_mask``) and the
mismatch is in the code's frame (the handed mask's: dx + fx, dy + fy); absent: the mask is the one handed.
``calibrate.py`` writes one; ``train.py`` and ``eval.py`` accept it
wherever they take a mask, through ``calib.instrument.load_instrument`` (which builds the N x K model
and its reading; :func:`load_operator` here gives the native operator's files only: N = K = 1, linear).
A calibration's status as the reports record it (:func:`calibration_status`) and show it (:func:`status_text`)
is defined here, for every reader of a calibration (evaluation, training).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cassi.errors import UserError
from cassi.files import save_npz
from cassi.mismatch import PARAMETER_UNITS, Mismatch
from cassi.operator import MASK_INTERPOLATIONS, CassiOperator

REQUIRED_KEYS = ("mask", "bands", "step", "dispersion", *PARAMETER_UNITS)
OVERSAMPLE_KEYS = ("spatial", "spectral")
INTERPOLATION_KEY = "mask_interpolation"
STATUS_KEY = "calibration_status"
REASONS_KEY = "calibration_reasons"
CODE_PHASE_KEY = "code_phase"
ZIP_MAGIC = b"PK\x03\x04"      # the first bytes of every .npz (a zip archive) that holds arrays


def calibration_status(status: str | None, reasons: Sequence[str] | None) -> dict[str, Any]:
    """A calibration's status as reports record it: ``status`` (None: not recorded) and its ``reasons`` (None: not
    recorded)."""
    return {"status": status, "reasons": None if status is None or reasons is None else list(reasons)}


def status_text(info: Mapping[str, Any]) -> str:
    """A calibration's status for people: "ambiguous" and a line "  - REASON" per reason (a Markdown sub-list under
    a list item), "ambiguous (reasons not recorded)" or "status not recorded" (``info``: :func:`calibration_status`)."""
    if info["status"] is None:
        return "status not recorded"
    if info["reasons"] is None:
        return f"{info['status']} (reasons not recorded)"
    return info["status"] + "".join(f"\n  - {reason}" for reason in info["reasons"])


def refuse_failed(where: str, subject: str, info: Mapping[str, Any]) -> None:
    """:class:`UserError` "WHERE: SUBJECT "failed" (reasons: ...)" when the calibration ``info``
    (:func:`calibration_status`) failed: what it made is no estimate of the instrument. The reasons are quoted on
    one line (a reason may hold ';')."""
    if info["status"] != "failed":
        return
    reasons = ("reasons not recorded" if info["reasons"] is None
               else "reasons: " + (", ".join(f'"{r}"' for r in info["reasons"]) or "none recorded"))
    raise UserError(f'{where}: {subject} "failed" ({reasons}): it is no estimate of the instrument; recalibrate')


@dataclass
class OperatorRecord:
    """The contents of an operator file."""

    mask: torch.Tensor
    bands: int
    step: int
    dispersion: str
    mismatch: Mismatch
    oversample: tuple[int, int] = (1, 1)
    mask_interpolation: str = "linear"
    status: str | None = None
    reasons: tuple[str, ...] | None = None      # None: not recorded
    code_phase: tuple[float, float] | None = None   # (fy, fx): the mask is a code recovered from the handed one

    @property
    def calibration(self) -> dict[str, Any]:
        """The status and reasons of the calibration that wrote the file (:func:`calibration_status`)."""
        return calibration_status(self.status, self.reasons)


def save_operator(path: str | Path, op: CassiOperator, status: str | None = None,
                  reasons: Sequence[str] = (), code_phase: tuple[float, float] | None = None) -> Path:
    """Write ``op`` (its unwarped mask, its mismatch, ``op.oversample`` and ``op.mask_interpolation``)
    atomically to ``path`` (.npz); ``status`` and ``reasons``: those of the calibration that estimated the
    mismatch; ``code_phase`` (fy, fx): ``op``'s mask is the code recovered from a handed mask resampled there."""
    if op.mask.shape[0] != 1:
        raise ValueError("save_operator stores one instrument: the operator holds per-sample masks")
    arrays = {"mask": op.mask[0].detach().cpu().float().numpy(), "bands": np.int64(op.bands),
              "step": np.int64(op.step), "dispersion": np.str_(op.dispersion),
              "spatial": np.int64(op.oversample[0]), "spectral": np.int64(op.oversample[1]),
              INTERPOLATION_KEY: np.str_(op.mask_interpolation)}
    arrays.update({k: np.float64(v) for k, v in op.mismatch.to_dict().items()})
    if status is not None:
        arrays[STATUS_KEY] = np.str_(status)
        arrays[REASONS_KEY] = np.array(list(reasons), dtype=np.str_)
    if code_phase is not None:
        arrays[CODE_PHASE_KEY] = np.array(code_phase, dtype=np.float64)
    return save_npz(path, compress=False, **arrays)


def _scalar(data, key: str, kind: str, path: Path):
    """The 0-d value of ``key`` as ``kind`` ("int", "float" or "str"); an error names the key otherwise."""
    value = np.asarray(data[key])
    expected = {"int": "iu", "float": "iuf", "str": "U"}[kind]
    if value.shape != () or value.dtype.kind not in expected:
        raise UserError(f"{path}: key '{key}' must be a single {kind} value, got dtype {value.dtype} and shape "
                        f"{value.shape}")
    return {"int": int, "float": float, "str": str}[kind](value)


def _reasons(data, path: Path) -> tuple[str, ...] | None:
    """The recorded reasons of the calibration status (None when the file does not record them)."""
    if REASONS_KEY not in data:
        return None
    value = np.asarray(data[REASONS_KEY])
    if value.ndim != 1 or value.dtype.kind != "U":
        raise UserError(f"{path}: key '{REASONS_KEY}' must be a 1-D array of strings, got dtype {value.dtype} and "
                        f"shape {value.shape}")
    return tuple(str(reason) for reason in value)


def _code_phase(data, path: Path) -> tuple[float, float] | None:
    """The recorded (fy, fx) phase of a handed mask the file's mask was recovered from (None: not recorded)."""
    if CODE_PHASE_KEY not in data:
        return None
    value = np.asarray(data[CODE_PHASE_KEY])
    if value.shape != (2,) or value.dtype.kind not in "iuf" or not np.all(np.isfinite(value)):
        raise UserError(f"{path}: key '{CODE_PHASE_KEY}' must be the 2 finite numbers (fy, fx), got dtype "
                        f"{value.dtype} and shape {value.shape}")
    return float(value[0]), float(value[1])


def _check_npz(path: Path) -> None:
    """:class:`UserError` unless ``path`` starts as a zip archive, as every .npz does: a .mat, .npy or .json
    file given as an operator is said to be no operator file, not parsed as one."""
    with path.open("rb") as file:
        if file.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            raise UserError(f"{path}: not an .npz operator file written by calibrate.py (an .npz is a zip archive "
                            f"and this {path.suffix or 'suffix-less'} file is not one)")


def read_operator_file(path: str | Path) -> OperatorRecord:
    """The contents of an operator file written by :func:`save_operator`; a clear error names a file that
    is no .npz, or a missing or bad key."""
    path = Path(path)
    if path.is_dir():
        inside = path / "operator.npz"
        raise UserError(f"{path} is a folder, not an operator file; pass "
                        + (str(inside) if inside.is_file() else "the operator.npz calibrate.py wrote"))
    if not path.is_file():
        raise FileNotFoundError(f"operator file not found: {path}")
    _check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise UserError(f"{path}: operator file lacks key(s) {missing}; it has {sorted(data.files)}")
            values = {k: data[k] for k in (*REQUIRED_KEYS, *OVERSAMPLE_KEYS, INTERPOLATION_KEY, STATUS_KEY,
                                           REASONS_KEY, CODE_PHASE_KEY) if k in data.files}
    except UserError:
        raise
    except Exception as err:  # truncated, pickled objects, ...
        reason = ("it holds pickled Python objects, which are never loaded" if "pickle" in str(err)
                  else f"{type(err).__name__}: {err}")
        raise UserError(f"{path}: not a readable .npz operator file written by calibrate.py ({reason})") from err
    mask = np.asarray(values["mask"])
    if mask.ndim != 2 or mask.dtype.kind not in "iuf":
        raise UserError(f"{path}: key 'mask' must be a 2-D numeric array, got dtype {mask.dtype} and shape "
                        f"{mask.shape}")
    oversample = tuple(_scalar(values, k, "int", path) if k in values else 1 for k in OVERSAMPLE_KEYS)
    if min(oversample) < 1:
        raise UserError(f"{path}: oversampling (spatial, spectral) = {oversample} must be >= 1")
    interpolation = _scalar(values, INTERPOLATION_KEY, "str", path) if INTERPOLATION_KEY in values else "linear"
    if interpolation not in MASK_INTERPOLATIONS or interpolation != "linear" and oversample[0] != 1:
        raise UserError(f"{path}: key '{INTERPOLATION_KEY}' must be one of {MASK_INTERPOLATIONS} ('cubic' with "
                        f"spatial N = 1 only), got {interpolation!r} with N={oversample[0]}")
    status = _scalar(values, STATUS_KEY, "str", path) if STATUS_KEY in values else None
    reasons = _reasons(values, path)
    refuse_failed(str(path), "this operator comes from a calibration whose status is",
                  calibration_status(status, reasons))
    return OperatorRecord(torch.from_numpy(mask.astype(np.float32)), _scalar(values, "bands", "int", path),
                          _scalar(values, "step", "int", path), _scalar(values, "dispersion", "str", path),
                          Mismatch.from_dict({k: _scalar(values, k, "float", path) for k in PARAMETER_UNITS}),
                          oversample, interpolation, status, reasons, _code_phase(values, path))


def load_operator(path: str | Path) -> CassiOperator:
    """The native operator of an operator file; a file that records an N x K forward model or the cubic
    mask reading is refused (load it with ``calib.instrument.load_instrument``)."""
    record = read_operator_file(path)
    if record.oversample != (1, 1):
        raise UserError(f"{path}: the instrument was calibrated with the N={record.oversample[0]}, "
                        f"K={record.oversample[1]} forward model; load it with calib.instrument.load_instrument")
    if record.mask_interpolation != "linear":
        raise UserError(f"{path}: the instrument was calibrated with the mask read by {record.mask_interpolation} "
                        f"interpolation ({INTERPOLATION_KEY}), which the native operator does not do; load it with "
                        "calib.instrument.load_instrument")
    try:
        return CassiOperator(record.mask, record.bands, record.step, record.mismatch, dispersion=record.dispersion)
    except ValueError as err:
        raise UserError(f"{path}: {err}") from err
