"""Where the training data of a recipe live: the MST toolbox's ``datasets/`` layout, any folder, or nothing.

The MST toolbox (caiyuanhao1998/MST) keeps its data in one folder::

    datasets/cave_1024_28/*.mat          CAVE, key 'img_expand' (1024 x 1024 x 28, 16-bit)   simulation training
    datasets/TSA_simu_data/mask.mat      the KAIST mask (256 x 256)                           simulation mask
    datasets/TSA_simu_data/Truth/*.mat   the 10 KAIST test scenes                              eval / ``train.py test``
    datasets/CAVE_512_28/*.mat           CAVE, key 'data_slice' (512 x 512 x 28, 16-bit)     real-data training
    datasets/KAIST_CVPR2021/*.mat        KAIST, key 'HSI' (2704 x 3376 x 28, [0, 1])         real-data training
    datasets/TSA_real_data/mask.mat      the real mask (660 x 660)                             real-data mask

:func:`find_training_data` turns a source name and ``--data.root`` into the folders to read, with one clear
error naming the folder or file that is missing. It only looks at folder listings (no cube is read), so a
recipe can stop before any work.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.io import load_cube

SOURCES = ("auto", "synthetic", "folder", "mst_simulation", "mst_real")
CUBE_SUFFIXES = (".mat", ".npz", ".npy")
SYNTHETIC_CONFIG = "configs/data/synthetic.yaml"
NO_DATA_HINT = (f"no data? train on built-in synthetic scenes by adding --config {SYNTHETIC_CONFIG} after the "
                "recipe config")


@dataclass(frozen=True)
class CubeFile:
    """One cube file and how to read it (``data.io.load_cube`` key and scale; None: its defaults)."""

    path: Path
    key: str | None = None
    scale: float | None = None

    def load(self, bands: int | None = 28) -> np.ndarray:
        """The cube (L, H, W) float32."""
        return load_cube(self.path, key=self.key, bands=bands, scale=self.scale)


@dataclass(frozen=True)
class CubeFolder:
    """A folder of cube files (those with one of ``suffixes``) read with one key and scale."""

    path: Path
    key: str | None = None
    scale: float | None = None
    suffixes: tuple[str, ...] = CUBE_SUFFIXES

    def files(self) -> list[CubeFile]:
        return [CubeFile(path, self.key, self.scale) for path in list_cubes(self.path, self.suffixes)]


@dataclass(frozen=True)
class TrainingData:
    """Resolved data of a run: cube folders (none for synthetic scenes), the mask file (None: a seeded random
    mask) and the KAIST test folder (``Truth/`` + ``mask.mat``) when the layout has one."""

    source: str
    folders: tuple[CubeFolder, ...] = ()
    mask: Path | None = None
    test_root: Path | None = None

    def files(self) -> list[CubeFile]:
        """Every cube file of every folder, folder by folder, sorted by name within a folder."""
        return [file for folder in self.folders for file in folder.files()]


def list_cubes(folder: Path, suffixes: tuple[str, ...] = CUBE_SUFFIXES) -> list[Path]:
    """Cube files of ``folder`` sorted by name; an error naming the folder when there are none."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no such data folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no cube files ({', '.join(suffixes)})")
    return files


def _has_mat_files(folder: Path) -> bool:
    return any(p.suffix.lower() == ".mat" for p in folder.iterdir())


def _given_mask(given: str) -> Path:
    path = Path(given)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    return path


def _recipe_mask(default: Path, recipe: str) -> Path:
    if not default.is_file():
        raise FileNotFoundError(f"the {recipe} uses the mask {default.parent.name}/{default.name}, which is not at "
                                f"{default}; pass --data.mask /path/to/{default.parent.name}/{default.name}")
    return default


def _require_root(root: str | None, recipe: str, needs: str) -> Path:
    if root is None:
        raise ValueError(f"the {recipe} trains on {needs}: pass --data.root /path/to/MST/datasets; {NO_DATA_HINT}")
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"no such data folder: {path} (the {recipe} needs {needs}); {NO_DATA_HINT}")
    return path


SIMULATION = "MST simulation recipe"
SIMULATION_NEEDS = ("the toolbox's CAVE cubes (datasets/cave_1024_28/) and the KAIST mask "
                    "(datasets/TSA_simu_data/mask.mat)")
REAL = "MST real-data recipe"
REAL_NEEDS = ("the toolbox's datasets/CAVE_512_28/ and datasets/KAIST_CVPR2021/ cubes and the real mask "
              "datasets/TSA_real_data/mask.mat")


def _simulation_folders(root: str | None) -> tuple[Path, Path]:
    """(``cave_1024_28``, the toolbox's ``datasets`` folder) from ``root`` = either of them."""
    path = _require_root(root, SIMULATION, SIMULATION_NEEDS)
    if (path / "cave_1024_28").is_dir():
        return path / "cave_1024_28", path
    if path.name == "cave_1024_28" or any(p.suffix.lower() == ".mat" for p in path.iterdir()):
        return path, path.parent
    raise FileNotFoundError(f"{path}: holds neither cave_1024_28/ nor .mat cubes; the {SIMULATION} needs "
                            f"{SIMULATION_NEEDS}: pass --data.root /path/to/MST/datasets or /path/to/cave_1024_28; "
                            f"{NO_DATA_HINT}")


def _resolve_source(source: str, root: str | None) -> str:
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; expected one of {', '.join(SOURCES)}")
    if source == "auto":
        return "synthetic" if root is None else "folder"
    if source == "synthetic" and root is not None:
        raise ValueError(f"--data.root {root} is set but the data source is 'synthetic' (built-in scenes); "
                         "drop one of them")
    if source == "folder" and root is None:
        raise ValueError(f"data source 'folder' needs --data.root (a folder of cube files); {NO_DATA_HINT}")
    return source


def mask_file(source: str, root: str | None, mask: str | None) -> Path | None:
    """The mask file of a run: ``mask`` if given, else the recipe's (``mst_*`` sources), else None (a seeded
    random mask). Reads no cube (a checkpoint's training mask can be rebuilt without its training data)."""
    source = _resolve_source(source, root)
    if mask is not None:
        return _given_mask(mask)
    if source == "mst_simulation":
        return _recipe_mask(_simulation_folders(root)[1] / "TSA_simu_data" / "mask.mat", SIMULATION)
    if source == "mst_real":
        return _recipe_mask(_require_root(root, REAL, REAL_NEEDS) / "TSA_real_data" / "mask.mat", REAL)
    return None


def find_training_data(source: str, root: str | None, mask: str | None) -> TrainingData:
    """Resolve ``source`` (one of :data:`SOURCES`), ``root`` and ``mask`` from folder listings (no cube is read).

    ``auto``: synthetic scenes without ``root``, else ``folder``. ``synthetic``: built-in scenes (``root`` must
    not be set). ``folder``: every cube file of ``root``. ``mst_simulation``: ``cave_1024_28`` (``root`` or in
    it; .mat files only, as the toolbox's ``LoadTraining``) and ``TSA_simu_data/mask.mat`` beside it.
    ``mst_real``: ``root``'s ``CAVE_512_28`` (key 'data_slice' / 65535) and ``KAIST_CVPR2021`` (key 'HSI'),
    and ``TSA_real_data/mask.mat``. ``mask`` replaces the recipe's mask (else a seeded random one).
    """
    source = _resolve_source(source, root)
    test_root = None
    if source == "synthetic":
        return TrainingData(source, mask=mask_file(source, root, mask))
    if source == "folder":
        folders = (CubeFolder(Path(root)),)
    elif source == "mst_simulation":
        cave, toolbox = _simulation_folders(root)
        folders = (CubeFolder(cave, suffixes=(".mat",)),)
        if (toolbox / "TSA_simu_data" / "Truth").is_dir():
            test_root = toolbox / "TSA_simu_data"
    else:
        path = _require_root(root, REAL, REAL_NEEDS)
        folders = (CubeFolder(path / "CAVE_512_28", "data_slice", 1.0 / 65535.0, (".mat",)),
                   CubeFolder(path / "KAIST_CVPR2021", "HSI", None, (".mat",)))
        for folder in folders:
            if not folder.path.is_dir():
                raise FileNotFoundError(f"{path}: no {folder.path.name}/ folder; the {REAL} needs {REAL_NEEDS}; "
                                        f"{NO_DATA_HINT}")
    for folder in folders:
        folder.files()
    return TrainingData(source, folders, mask_file(source, root, mask), test_root)
