"""Helpers shared by the benchmark scripts: locating ../shared, loading its cubes, timing."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_ENV = "CASSI_SHARED"          # where ../shared is, for a checkout that is not beside it
SHARED_DATA = Path(os.environ.get(SHARED_ENV, REPO.parent / "shared")) / "data"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data; exits with a clear message when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        raise SystemExit(f"benchmark data not found: {path} (this benchmark reads ../shared/data; set {SHARED_ENV} "
                         "to the shared folder of a checkout that is not beside it)")
    return path


def pseudo_kaist_cubes() -> list[tuple[str, torch.Tensor]]:
    """The 10 pseudo ground-truth cubes, (28, 256, 256) float32 each, named scene01 ... scene10."""
    from data.io import load_cube

    folder = shared_file("pseudo_kaist")
    return [(p.stem, torch.from_numpy(load_cube(p))) for p in sorted(folder.glob("scene*.npz"))]


def kaist_mask() -> torch.Tensor:
    """The KAIST simulation mask (256, 256) float32."""
    from data.io import load_mask

    return torch.from_numpy(load_mask(shared_file("kaist", "mask.mat")))


def best_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call, seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def psnr(x: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> float:
    """Plain PSNR (dB, peak 1) of a cube clipped to [0, 1] against a reference cube."""
    x = torch.as_tensor(x, dtype=torch.float64).clamp(0, 1)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    return float(10 * torch.log10(1.0 / ((x - ref) ** 2).mean()))
