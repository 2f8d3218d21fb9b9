"""Saving and loading an instrument model (mask + mismatch) as one ``.npz`` file.

Keys: ``mask`` (H, W) float32, ``bands``, ``step``, ``dispersion`` ("linear"/"integer") and the five
mismatch parameters ``dx, dy, theta, a1, alpha`` (px, px, deg, px/band, deg). ``calibrate.py`` writes
one; ``train.py`` and ``eval.py`` accept it wherever they take a mask.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from cassi.mismatch import PARAMETER_UNITS, Mismatch
from cassi.operator import CassiOperator

REQUIRED_KEYS = ("mask", "bands", "step", "dispersion", *PARAMETER_UNITS)


def save_operator(path: str | Path, op: CassiOperator) -> Path:
    """Write ``op`` (its unwarped mask and its mismatch) atomically to ``path`` (.npz)."""
    path = Path(path)
    if op.mask.shape[0] != 1:
        raise ValueError("save_operator stores one instrument: the operator holds per-sample masks")
    arrays = {"mask": op.mask[0].detach().cpu().float().numpy(), "bands": np.int64(op.bands),
              "step": np.int64(op.step), "dispersion": np.str_(op.dispersion)}
    arrays.update({k: np.float64(v) for k, v in op.mismatch.to_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_operator(path: str | Path) -> CassiOperator:
    """Read an operator file written by :func:`save_operator`; a clear error names a missing key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"operator file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"{path}: not a readable .npz operator file ({err})") from err
    with data:
        missing = [k for k in REQUIRED_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path}: operator file lacks key(s) {missing}; it has {sorted(data.files)}")
        mask = torch.from_numpy(np.asarray(data["mask"], dtype=np.float32))
        mismatch = Mismatch.from_dict({k: float(data[k]) for k in PARAMETER_UNITS})
        return CassiOperator(mask, int(data["bands"]), int(data["step"]), mismatch,
                             dispersion=str(data["dispersion"]))
