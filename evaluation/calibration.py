"""Where scenario III's operator comes from: ``calib.calibrate`` per measurement, or a saved estimate.

* ``--operator FILE.npz``: an operator file (``cassi.operator_file``) written by ``calibrate.py``; its mask
  must be the evaluation mask (same shape and values) -- its mismatch and forward model (N, K) are used.
* ``--calibration FILE.json``: ``calibrate.py``'s calibration.json; the five parameters are read from its
  ``estimate`` object (or from the top level), the forward model from ``settings.oversample`` if present.
* neither: ``calib.calibrate(y, mask, solver=..., ckpt=...)`` estimates the mismatch of every scene's
  measurement on its own (slow: a search per scene).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cassi import Mismatch, PARAMETER_UNITS
from cassi.errors import UserError
from cassi.operator_file import read_operator_file
from evaluation.scenarios import FixedEstimate
from models.release import mask_sha256


def from_operator_file(path: str | Path, mask: Tensor, bands: int = 28, step: int = 2) -> FixedEstimate:
    """The mismatch and forward model (N, K) of an operator file whose mask equals ``mask`` and whose
    bands and step are these."""
    record = read_operator_file(path)
    shape, wanted = tuple(record.mask.shape), tuple(mask.shape)
    if shape != wanted:
        raise UserError(f"{path}: the operator's mask is {shape} but the evaluation mask is {wanted}; "
                        "calibrate with the same mask")
    if mask_sha256(record.mask) != mask_sha256(mask):
        raise UserError(f"{path}: the operator's mask has the evaluation mask's shape {shape} but other values "
                        f"(sha256 {mask_sha256(record.mask)[:12]}... vs {mask_sha256(mask)[:12]}...): it is not the "
                        "evaluation mask; calibrate with the same mask")
    if (record.bands, record.step) != (bands, step):
        raise UserError(f"{path}: the operator has {record.bands} bands and step {record.step}, the evaluation "
                        f"{bands} bands and step {step}")
    return FixedEstimate(record.mismatch, {"source": "operator file", "path": str(path)}, record.oversample)


def from_calibration_json(path: str | Path) -> FixedEstimate:
    """The mismatch in a calibration.json (``estimate`` object or top-level parameter names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file not found: {path}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    values = content.get("estimate", content) if isinstance(content, dict) else None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected an object with the mismatch parameters {sorted(PARAMETER_UNITS)}")
    params = {k: values[k] for k in PARAMETER_UNITS if k in values}
    if not params:
        raise ValueError(f"{path}: no mismatch parameter ({', '.join(PARAMETER_UNITS)}) found "
                         f"(keys: {sorted(values)})")
    try:
        mismatch = Mismatch.from_dict(params)
    except ValueError as err:
        raise UserError(f"{path}: {err}") from err
    settings = content.get("settings")
    oversample = settings.get("oversample") if isinstance(settings, dict) else None
    if oversample is not None:
        if not (isinstance(oversample, list) and len(oversample) == 2
                and all(isinstance(v, int) and v >= 1 for v in oversample)):
            raise UserError(f"{path}: settings.oversample must be [N, K] with integers >= 1, got {oversample!r}")
        oversample = tuple(oversample)
    return FixedEstimate(mismatch, {"source": "calibration file", "path": str(path)}, oversample)


@dataclass
class CalibratePerScene:
    """``calib.calibrate`` on every measurement (the measurement and the nominal mask only)."""

    solver: str = "gap_tv"
    ckpt: str | None = None
    bands: int = 28
    step: int = 2
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> dict[str, Any]:
        return {"source": "calib.calibrate", "solver": self.solver, "ckpt": self.ckpt, **self.options}

    @property
    def oversample(self) -> tuple[int, int]:
        from calib.pipeline import MODEL_OVERSAMPLE
        return tuple(self.options.get("oversample", MODEL_OVERSAMPLE))

    def __call__(self, y: Tensor, mask: Tensor) -> Mismatch:
        calibrate = calibrate_function()
        result = calibrate(y[0], mask, solver=self.solver, ckpt=self.ckpt, bands=self.bands, step=self.step,
                           **self.options)
        estimate = result.estimate
        return Mismatch(**{k: float(torch.as_tensor(v)) for k, v in estimate.to_dict().items()})


def calibrate_function():
    """``calib.calibrate``, or a clear error when the calibration package does not provide it."""
    try:
        from calib import calibrate
    except ImportError as err:
        raise UserError("scenario III needs calib.calibrate, which is not available here "
                           f"({err}); pass --operator FILE.npz or --calibration FILE.json instead") from err
    return calibrate


def make_calibrator(operator: str | None, calibration: str | None, mask: Tensor, solver: str = "gap_tv",
                    ckpt: str | None = None, bands: int = 28, step: int = 2, **options: Any):
    """The calibration source for scenario III, in the order: operator file, calibration file, calib."""
    if operator and calibration:
        raise ValueError("give either --operator or --calibration, not both")
    if operator:
        return from_operator_file(operator, mask, bands, step)
    if calibration:
        return from_calibration_json(calibration)
    calibrate_function()
    return CalibratePerScene(solver, ckpt, options=options)
