"""Shared test helpers: where ../shared lives, and skipping cleanly when it is absent."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (before torch loads): see README, "CPU threads".
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test when that file is not on this machine."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def mst_toolbox(tmp_path: Path, n_cave: int = 3, size: int = 40, mask_size: int = 16, truth: int = 2) -> Path:
    """A tiny MST toolbox ``datasets/`` folder: ``cave_1024_28`` (16-bit 'img_expand' cubes), the KAIST-style
    ``TSA_simu_data/mask.mat`` and ``Truth/`` test scenes ('img' in [0, 1])."""
    import numpy as np
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    root = tmp_path / "datasets"
    (root / "cave_1024_28").mkdir(parents=True)
    (root / "TSA_simu_data" / "Truth").mkdir(parents=True)
    for k in range(n_cave):
        savemat(root / "cave_1024_28" / f"scene{k + 1:02d}.mat",
                {"img_expand": rng.integers(300, 65535, (size, size, 28), dtype=np.uint16)})
    savemat(root / "TSA_simu_data" / "mask.mat", {"mask": (rng.random((mask_size, mask_size)) > 0.5).astype(float)})
    for k in range(truth):
        savemat(root / "TSA_simu_data" / "Truth" / f"scene{k + 1:02d}.mat", {"img": rng.random((mask_size, mask_size, 28))})
    return root
