"""KAIST-protocol test scenes and their coded aperture (``eval.py kaist``, ``train.py test``): the MST / TSA folder
layout, or built-in synthetic scenes.

MST layout (``TSA_simu_data``)::

    ROOT/mask.mat            key 'mask', (H, W)
    ROOT/Truth/sceneNN.mat   key 'img', (H, W, 28) in [0, 1]   (every .mat in Truth/, sorted by name)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from data.io import load_cube, load_mask
from data.synthetic import random_mask, synthetic_scene


@dataclass
class Scene:
    """One ground-truth cube (L, H, W) float32, its name and, for synthetic scenes, the class map (H, W) int64 of
    their materials (``data.synthetic.MATERIAL_NAMES`` ids; ``train.py test``'s segmentation metric)."""

    name: str
    cube: Tensor
    labels: Tensor | None = None


def synthetic_scenes(count: int, height: int, width: int, seed: int = 0, bands: int = 28) -> list[Scene]:
    """``count`` built-in synthetic scenes (L, height, width) with their labels; scene i uses seed (seed, i)."""
    if count < 1 or height < 1 or width < 1:
        raise ValueError(f"need at least one scene of at least 1 px, got count={count}, size={height}x{width}")
    scenes = [synthetic_scene(height, width, bands, (seed, i)) for i in range(count)]
    return [Scene(f"synthetic{i + 1:02d}", torch.from_numpy(cube), torch.from_numpy(labels))
            for i, (cube, labels) in enumerate(scenes)]


def synthetic_mask(height: int, width: int, seed: int = 0) -> Tensor:
    """The random binary aperture used with synthetic scenes (seeded, half open)."""
    return torch.from_numpy(random_mask(height, width, seed=(seed, 1_000_003)))


def mst_test_folder(root: str | Path) -> Path:
    """The ``TSA_simu_data`` folder that ``root`` names: ``root`` itself, or the toolbox's ``datasets/`` holding it
    (``root/TSA_simu_data/Truth`` there and no ``root/Truth``). Nothing else is looked for: :func:`mst_mask` and
    :func:`mst_scenes` say what is missing."""
    root = Path(root)
    if not (root / "Truth").is_dir() and (root / "TSA_simu_data" / "Truth").is_dir():
        return root / "TSA_simu_data"
    return root


def mst_scenes(root: str | Path, bands: int = 28) -> list[Scene]:
    """All ``ROOT/Truth/*.mat`` cubes (key 'img'), sorted by file name; a clear error if none are there."""
    truth = Path(root) / "Truth"
    if not truth.is_dir():
        raise FileNotFoundError(f"{root}: expected the MST layout with a Truth/ folder of sceneNN.mat files "
                                f"(and mask.mat); {truth} does not exist")
    files = sorted(truth.glob("*.mat"))
    if not files:
        raise FileNotFoundError(f"{truth}: no .mat scenes found")
    return [Scene(path.stem, torch.from_numpy(load_cube(path, key="img", bands=bands))) for path in files]


def mst_mask(root: str | Path) -> Tensor:
    """``ROOT/mask.mat`` (key 'mask') as (H, W) float32."""
    path = Path(root) / "mask.mat"
    if not path.is_file():
        hint = f"; pass --data.root {Path(root).parent}" if Path(root).name == "Truth" else (
            " (pass --data.root the TSA_simu_data folder or the toolbox's datasets/ that holds it)")
        raise FileNotFoundError(f"{root}: expected the MST layout (mask.mat + Truth/sceneNN.mat); {path} "
                                f"does not exist{hint}")
    return torch.from_numpy(load_mask(path))


def check_scene_sizes(scenes: list[Scene], mask: Tensor) -> None:
    """Every scene must be (L, H, W) with (H, W) equal to the mask's shape."""
    for scene in scenes:
        if tuple(scene.cube.shape[-2:]) != tuple(mask.shape):
            raise ValueError(f"scene '{scene.name}' is {tuple(scene.cube.shape[-2:])} pixels but the mask is "
                             f"{tuple(mask.shape)}; they must match")
