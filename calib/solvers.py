"""Reconstruction solvers a user calibrates for: GAP-TV or a frozen MST network from a checkpoint.

A solver maps a measurement batch (B, H, W + step*(L-1)) and a :class:`cassi.CassiOperator` to a
cube (B, L, H, W). The calibration uses it to reconstruct with the nominal and the calibrated
operator and to report the measurement residual before / after; the parameter estimate itself comes
from the blind held-out criterion (:mod:`calib.score`), which a data-fitting solver cannot provide.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from cassi.gap_tv import gap_tv
from cassi.operator import CassiOperator

Solver = Callable[[Tensor, CassiOperator], Tensor]
NETWORKS = ("mst_s", "mst_m", "mst_l")
SOLVERS = ("gap_tv", *NETWORKS)


def gap_tv_solver(iterations: int = 50, tv_weight: float = 0.1) -> Solver:
    """Accelerated GAP-TV with the project's defaults."""
    def solve(y: Tensor, op: CassiOperator) -> Tensor:
        with torch.no_grad():
            return gap_tv(y, op, iterations=iterations, tv_weight=tv_weight)
    return solve


def network_solver(name: str, checkpoint: str | Path, device: str | torch.device = "cpu") -> Solver:
    """A frozen ``mst_*`` network (eval mode, no gradients, on ``device``) from a toolbox ``.pth`` or a
    release folder."""
    from models import load_release, load_toolbox_checkpoint

    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        model = load_release(checkpoint)
    else:
        model = load_toolbox_checkpoint(name, checkpoint)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def solve(y: Tensor, op: CassiOperator) -> Tensor:
        with torch.no_grad():
            return model.reconstruction(model(**model.prepare_inputs(y, op)))
    return solve


def load_solver(name: str, checkpoint: str | Path | None = None, device: str | torch.device = "cpu") -> Solver:
    """``"gap_tv"`` or one of ``mst_s | mst_m | mst_l`` (which need ``checkpoint``); a network is put
    on ``device`` (GAP-TV runs where its inputs are)."""
    if name == "gap_tv":
        if checkpoint is not None:
            raise ValueError("--ckpt is only used with a network solver (mst_s, mst_m, mst_l), not gap_tv")
        return gap_tv_solver()
    if name in NETWORKS:
        if checkpoint is None:
            raise ValueError(f"solver {name} needs a checkpoint (--ckpt PATH)")
        return network_solver(name, checkpoint, device)
    raise ValueError(f"unknown solver {name!r}; expected one of {', '.join(SOLVERS)}")


def residual(y: Tensor, op: CassiOperator, x: Tensor) -> float:
    """Relative measurement residual ``||y - A x|| / ||y||``."""
    with torch.no_grad():
        return float((y - op(x)).norm() / y.norm().clamp_min(1e-30))
