"""Measurements simulated on the fly from a batch's ground-truth cubes and masks.

The datamodule yields cubes and masks only; the instrument (mismatch, gain, detector noise) is a training
setting and lives here. Everything physical is delegated to :class:`cassi.CassiOperator` and
:func:`cassi.noise.add_noise`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from calib.instrument import instrument_operator
from cassi import CassiOperator, Mismatch
from cassi.checks import check_mismatch
from cassi.mismatch import PARAMETER_UNITS
from cassi.noise import add_noise, check_noise
from cassi.operator_file import OperatorRecord, read_operator_file
from models.loading import file_sha256
from models.release import mask_sha256


def derived_seed(*parts: int) -> int:
    """A 63-bit seed determined by ``parts`` only (so runs, resumes and ranks are reproducible)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def operator_file_record(path: str, record: OperatorRecord) -> dict[str, Any]:
    """What an operator file (``calibrate.py``'s ``operator.npz``) says the instrument is, JSON-ready, as checkpoints
    record it: ``path`` (as given) and ``sha256`` of the file, the mismatch ``estimate`` (dx, dy, theta, a1, alpha)
    in ``units``, the ``forward_model`` (``spatial`` N, ``spectral`` K oversampling, ``mask_interpolation``,
    ``dispersion``, ``bands``, ``step``), the ``mask`` (``shape``, ``sha256``), the ``code_phase`` (fy, fx) px when the
    mask is a code recovered from a handed mask (the estimate is then in the code's frame), else None, and the
    ``calibration`` status and reasons."""
    return {"path": str(path), "sha256": file_sha256(path), "estimate": record.mismatch.to_dict(),
            "units": dict(PARAMETER_UNITS),
            "forward_model": {"spatial": record.oversample[0], "spectral": record.oversample[1],
                              "mask_interpolation": record.mask_interpolation, "dispersion": record.dispersion,
                              "bands": record.bands, "step": record.step},
            "mask": {"shape": list(record.mask.shape), "sha256": mask_sha256(record.mask)},
            "code_phase": None if record.code_phase is None else dict(zip(("fy", "fx"), record.code_phase)),
            "calibration": record.calibration}


class Instrument:
    """The simulated CASSI instrument used for training and validation.

    Args:
        bands, step: spectral bands L and nominal dispersion (px per band).
        mismatch: :class:`cassi.Mismatch` fields (dx, dy px; theta deg; a1 px/band; alpha deg) of the
            instrument that takes the measurements; None is the nominal instrument.
        noise: keyword arguments of :func:`cassi.noise.add_noise` (``peak`` photons at the brightest pixel,
            ``read_noise`` relative Gaussian sigma); None is noise-free.
        gain: factor applied to the clean measurement before the noise (the MST real-data recipe trains on
            1.2 x the nominal measurement).
        operator: an operator file (``calibrate.py``'s ``operator.npz``): its mismatch is the instrument's
            (instead of ``mismatch``) and measurements and network inputs go through the forward model it
            records (:func:`calib.instrument.instrument_operator`, N x K enlarged grid and mask reading, on the batch's
            device); its bands and step must equal ``bands`` and ``step``. Its mask (``mask``, (H, W)) is the data's
            business: ``train.py`` refuses data whose mask is another (``--data.mask FILE``, which may be the operator
            file itself). ``calibration``: the status and reasons of the calibration that wrote it
            (:func:`cassi.operator_file.calibration_status`), else None. ``operator_file``: what that instrument was
            (:func:`operator_file_record`), else None.
    """

    def __init__(self, bands: int = 28, step: int = 2, mismatch: Mapping[str, float] | None = None,
                 noise: Mapping[str, Any] | None = None, gain: float = 1.0, operator: str | None = None):
        if noise is not None:
            unknown = set(noise) - {"peak", "read_noise"}
            if unknown:
                raise ValueError(f"unknown noise setting(s) {sorted(unknown)}; expected 'peak' and/or 'read_noise'")
        if gain <= 0:
            raise ValueError(f"measurement gain must be positive, got {gain}")
        self.bands, self.step, self.gain = bands, step, gain
        self.mismatch = None if mismatch is None else Mismatch.from_dict(mismatch)
        self.oversample, self.mask_interpolation = (1, 1), "linear"
        self.calibration: dict[str, Any] | None = None
        self.mask: Tensor | None = None
        self.operator_file: dict[str, Any] | None = None
        if operator is not None:
            if mismatch is not None:
                raise ValueError("give the instrument's mismatch or an operator file, not both")
            calibrated = read_operator_file(operator)
            if (calibrated.bands, calibrated.step) != (bands, step):
                raise ValueError(f"operator file {operator} has {calibrated.bands} bands and step {calibrated.step}; "
                                 f"training uses {bands} bands and step {step}")
            self.mismatch, self.oversample = calibrated.mismatch, calibrated.oversample
            self.mask_interpolation, self.calibration = calibrated.mask_interpolation, calibrated.calibration
            self.mask, self.operator_file = calibrated.mask, operator_file_record(operator, calibrated)
        self.noise = None if noise is None else dict(noise)
        if self.noise is not None:
            check_noise(**self.noise)
        if self.mismatch is not None:
            check_mismatch(self.mismatch, "instrument mismatch")

    def operator(self, mask: Tensor) -> CassiOperator:
        """The operator for a batch's mask, (h, w) shared or (B, h, w) per sample."""
        return instrument_operator(mask, self.bands, self.step, self.mismatch, self.oversample,
                                   self.mask_interpolation)

    def measure(self, batch: Mapping[str, Tensor], seed: int) -> tuple[Tensor, CassiOperator]:
        """(measurement y (B, h, w + step*(L-1)), operator) for ``batch["cube"]`` (B, L, h, w) and its mask.

        ``seed`` drives the detector noise (if any).
        """
        cube = batch["cube"]
        if cube.dim() != 4 or cube.shape[1] != self.bands:
            raise ValueError(f"batch 'cube' must be (B, {self.bands}, h, w), got {tuple(cube.shape)}")
        if "mask" not in batch:
            raise ValueError("batch has no 'mask': the datamodule must provide the coded aperture")
        op = self.operator(batch["mask"].to(cube.dtype))
        with torch.no_grad():
            y = op(cube) * self.gain
            if self.noise is not None:
                y = add_noise(y, seed=seed, **self.noise)
        return y, op
