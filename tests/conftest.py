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


def fvgnet_layout(tmp_path: Path, train: int = 5, test: int = 2, size: int = 48, mask_size: int = 48) -> Path:
    """A tiny CRSDUN folder in the official layout: ``fvgnet/visible_28/<name>.npy`` (size x size x 28 float32 in
    [0, 1]), ``fvgnet/labels/<name>.png`` (PASCAL-VOC colours, the first one a palette-mode PNG), ``train_data.csv``
    (``train`` labelled images and one unlabelled row, 'masks' False, whose files are absent), ``test_data.csv``
    (``test`` images) as pandas writes them, and ``mask/mask512x512.mat`` (``mask_size`` square). Returns the
    ``fvgnet`` folder."""
    import numpy as np
    from PIL import Image
    from scipy.io import savemat

    from data.io import FVGNET_PALETTE

    rng = np.random.default_rng(0)
    root = tmp_path / "CRSDUN" / "fvgnet"
    (root / "visible_28").mkdir(parents=True)
    (root / "labels").mkdir()
    names = [f"2021-11-03_{k:03d}" for k in range(train + test)]
    for k, name in enumerate(names):
        np.save(root / "visible_28" / f"{name}.npy", rng.random((size, size, 28), dtype=np.float32))
        classes = np.zeros((size, size), np.uint8)
        classes[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1 + k % 22   # one fruit on the background
        classes[:, -size // 8:] = 1 + (k + 5) % 22
        if k == 0:
            image = Image.fromarray(classes)
            image.putpalette(FVGNET_PALETTE.reshape(-1).tolist())     # mode "L" -> "P"
        else:
            image = Image.fromarray(FVGNET_PALETTE[classes])
        image.save(root / "labels" / f"{name}.png")
    for split, listed in (("train_data.csv", names[:train] + ["2021-11-10_050"]), ("test_data.csv", names[train:])):
        rows = [f"{i},{name},{name != '2021-11-10_050'},apple" for i, name in enumerate(listed)]
        (root / split).write_text("\n".join([",names,masks,fruit", *rows]) + "\n")
    (root.parent / "mask").mkdir()
    savemat(root.parent / "mask" / "mask512x512.mat",
            {"mask": (rng.random((mask_size, mask_size)) > 0.5).astype(np.float32)})
    return root
