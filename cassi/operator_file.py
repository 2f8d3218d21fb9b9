"""Saving and loading an instrument model (mask + mismatch) as one ``.npz`` file.

Keys: ``mask`` (H, W) float32, ``bands``, ``step``, ``dispersion`` ("linear"/"integer") and the five
mismatch parameters ``dx, dy, theta, a1, alpha`` (px, px, deg, px/band, deg). ``calibrate.py`` writes
one; ``train.py`` and ``eval.py`` accept it wherever they take a mask.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cassi.errors import UserError
from cassi.files import save_npz
from cassi.mismatch import PARAMETER_UNITS, Mismatch
from cassi.operator import CassiOperator

REQUIRED_KEYS = ("mask", "bands", "step", "dispersion", *PARAMETER_UNITS)


def save_operator(path: str | Path, op: CassiOperator) -> Path:
    """Write ``op`` (its unwarped mask and its mismatch) atomically to ``path`` (.npz)."""
    if op.mask.shape[0] != 1:
        raise ValueError("save_operator stores one instrument: the operator holds per-sample masks")
    arrays = {"mask": op.mask[0].detach().cpu().float().numpy(), "bands": np.int64(op.bands),
              "step": np.int64(op.step), "dispersion": np.str_(op.dispersion)}
    arrays.update({k: np.float64(v) for k, v in op.mismatch.to_dict().items()})
    return save_npz(path, compress=False, **arrays)


def _scalar(data, key: str, kind: str, path: Path):
    """The 0-d value of ``key`` as ``kind`` ("int", "float" or "str"); an error names the key otherwise."""
    value = np.asarray(data[key])
    expected = {"int": "iu", "float": "iuf", "str": "U"}[kind]
    if value.shape != () or value.dtype.kind not in expected:
        raise UserError(f"{path}: key '{key}' must be a single {kind} value, got dtype {value.dtype} and shape "
                        f"{value.shape}")
    return {"int": int, "float": float, "str": str}[kind](value)


def load_operator(path: str | Path) -> CassiOperator:
    """Read an operator file written by :func:`save_operator`; a clear error names a missing or bad key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"operator file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise UserError(f"{path}: operator file lacks key(s) {missing}; it has {sorted(data.files)}")
            values = {k: data[k] for k in REQUIRED_KEYS}
    except UserError:
        raise
    except Exception as err:  # not a zip, truncated, pickled objects, ...
        raise UserError(f"{path}: not a readable .npz operator file ({type(err).__name__}: {err})") from err
    mask = np.asarray(values["mask"])
    if mask.ndim != 2 or mask.dtype.kind not in "iuf":
        raise UserError(f"{path}: key 'mask' must be a 2-D numeric array, got dtype {mask.dtype} and shape "
                        f"{mask.shape}")
    mismatch = Mismatch.from_dict({k: _scalar(values, k, "float", path) for k in PARAMETER_UNITS})
    try:
        return CassiOperator(torch.from_numpy(mask.astype(np.float32)), _scalar(values, "bands", "int", path),
                             _scalar(values, "step", "int", path), mismatch,
                             dispersion=_scalar(values, "dispersion", "str", path))
    except ValueError as err:
        raise UserError(f"{path}: {err}") from err
