"""Where the training data of a recipe live: the MST toolbox's ``datasets/`` layout, any folder, or nothing.

The MST toolbox (caiyuanhao1998/MST) keeps its data in one folder::

    datasets/cave_1024_28/*.mat          CAVE, key 'img_expand' (1024 x 1024 x 28, 16-bit)   simulation training
    datasets/TSA_simu_data/mask.mat      the KAIST mask (256 x 256)                           simulation mask
    datasets/TSA_simu_data/Truth/*.mat   the 10 KAIST test scenes                              eval / ``train.py test``
    datasets/CAVE_512_28/*.mat           CAVE, key 'data_slice' (512 x 512 x 28, 16-bit)     real-data training
    datasets/KAIST_CVPR2021/*.mat        KAIST, key 'HSI' (2704 x 3376 x 28, [0, 1])         real-data training
    datasets/TSA_real_data/mask.mat      the real mask (660 x 660)                             real-data mask

CRSDUN (zjhe02/CRSDUN, ``dataset.py`` / ``opt.py``) keeps FVgNET beside its mask::

    CRSDUN/fvgnet/visible_28/<name>.npy  cube (H x W x 28), read as stored                   joint training
    CRSDUN/fvgnet/labels/<name>.png      per-pixel classes, PASCAL-VOC colours (23 classes)
    CRSDUN/fvgnet/train_data.csv         the training images: columns 'names', 'masks' (labelled: True)
    CRSDUN/fvgnet/test_data.csv          the test images (the paper's 50), never read for training
    CRSDUN/mask/mask512x512.mat          the coded aperture (512 x 512, binary)

:func:`find_training_data` turns a source name and ``--data.root`` into the folders to read, with one clear
error naming the folder or file that is missing. It only looks at folder listings (no cube is read), so a
recipe can stop before any work.
"""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cassi.errors import UserError
from data.io import load_cube, load_label_png

SOURCES = ("auto", "synthetic", "folder", "mst_simulation", "mst_real", "fvgnet")
CUBE_SUFFIXES = (".mat", ".npz", ".npy")
SYNTHETIC_CONFIG = "configs/data/synthetic.yaml"
NO_DATA_HINT = (f"no data? train on built-in synthetic scenes by adding --config {SYNTHETIC_CONFIG} after the "
                "recipe config")


@dataclass(frozen=True)
class CubeFile:
    """One cube file and how to read it (``data.io.load_cube`` key and scale; None: its defaults), with its
    label image when it has one (a PNG in the FVgNET palette, ``data.io.load_label_png``)."""

    path: Path
    key: str | None = None
    scale: float | None = None
    labels: Path | None = None

    def load(self, bands: int | None = 28) -> np.ndarray:
        """The cube (L, H, W) float32."""
        return load_cube(self.path, key=self.key, bands=bands, scale=self.scale)

    def load_scene(self, bands: int | None = 28) -> tuple[np.ndarray, np.ndarray | None]:
        """The cube (L, H, W) float32 and its class map (H, W) int64 (None without a label image)."""
        cube = self.load(bands)
        if self.labels is None:
            return cube, None
        labels = load_label_png(self.labels)
        if labels.shape != cube.shape[1:]:
            raise UserError(f"{self.labels}: labels of {labels.shape[0]} x {labels.shape[1]} px for the cube "
                            f"{self.path} of {cube.shape[1]} x {cube.shape[2]} px; they must match")
        return cube, labels


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
class LabelledSplit:
    """The labelled images an FVgNET split file lists, as CRSDUN's ``HySpecSegmentation``: the rows of
    ``folder/split`` whose 'masks' column is true, sorted by 'names'; image ``name`` is the cube
    ``visible_28/<name>.npy`` (H x W x 28, values as stored) with the labels ``labels/<name>.png``."""

    folder: Path
    split: str = "train_data.csv"

    @property
    def path(self) -> Path:
        return self.folder / self.split

    def names(self) -> list[str]:
        """The labelled images' names, sorted; an error naming the file for a missing column or a bad row."""
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.folder}: no {self.split} (CRSDUN's FVgNET split file)")
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        missing = [c for c in ("names", "masks") if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{self.path}: no {' / '.join(repr(c) for c in missing)} column (CRSDUN reads the image "
                            "names from 'names' and keeps the rows whose 'masks' is True)")
        names = []
        for line, row in enumerate(rows, start=2):
            flag = str(row["masks"]).strip().lower()
            if flag not in ("true", "false", "1", "0"):
                raise UserError(f"{self.path}, line {line}: 'masks' is {row['masks']!r}, expected True or False")
            if flag in ("true", "1"):
                if not row["names"]:
                    raise UserError(f"{self.path}, line {line}: no image name in the 'names' column")
                names.append(row["names"])
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        if repeated:
            raise UserError(f"{self.path}: image(s) listed more than once: {', '.join(repeated[:5])}")
        return sorted(names)

    def files(self) -> list[CubeFile]:
        """Cube and label file of every listed image; an error naming the first one that is missing."""
        files = [CubeFile(self.folder / "visible_28" / f"{name}.npy", scale=1.0,  # as stored: CRSDUN's np.load
                          labels=self.folder / "labels" / f"{name}.png") for name in self.names()]
        if not files:
            raise UserError(f"{self.path}: lists no labelled image (no row with 'masks' True)")
        for file in files:
            for path in (file.path, file.labels):
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: missing; {self.path} lists image '{file.path.stem}', whose "
                                            "cube is visible_28/<name>.npy and labels labels/<name>.png")
        return files


@dataclass(frozen=True)
class TrainingData:
    """Resolved data of a run: cube folders or split lists (none for synthetic scenes), the mask file (None: a
    seeded random mask) and the KAIST test folder (``Truth/`` + ``mask.mat``) when the layout has one."""

    source: str
    folders: tuple[CubeFolder | LabelledSplit, ...] = ()
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


def _require_root(root: str | None, recipe: str, needs: str, folder: str = "/path/to/MST/datasets") -> Path:
    if root is None:
        raise ValueError(f"the {recipe} trains on {needs}: pass --data.root {folder}; {NO_DATA_HINT}")
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


FVGNET = "CRSDUN recipe"
FVGNET_NEEDS = ("FVgNET in CRSDUN's layout (fvgnet/ with visible_28/*.npy, labels/*.png, train_data.csv) and its "
                "mask (mask/mask512x512.mat beside fvgnet/)")
FVGNET_TRAIN, FVGNET_TEST = "train_data.csv", "test_data.csv"


def _fvgnet_folder(root: str | None) -> Path:
    """The ``fvgnet`` folder (the one holding ``train_data.csv``) from ``root`` = it or the CRSDUN folder."""
    path = _require_root(root, FVGNET, FVGNET_NEEDS, "/path/to/CRSDUN/fvgnet")
    for folder in (path, path / "fvgnet"):
        if (folder / FVGNET_TRAIN).is_file():
            return folder
    raise FileNotFoundError(f"{path}: holds neither {FVGNET_TRAIN} nor fvgnet/{FVGNET_TRAIN}; the {FVGNET} needs "
                            f"{FVGNET_NEEDS}: pass --data.root /path/to/CRSDUN/fvgnet; {NO_DATA_HINT}")


def _fvgnet_split(root: str | None) -> LabelledSplit:
    """The training split; an error if an image of it is also a test image (``test_data.csv``, when present)."""
    folder = _fvgnet_folder(root)
    train = LabelledSplit(folder, FVGNET_TRAIN)
    if (folder / FVGNET_TEST).is_file():
        shared = sorted(set(train.names()) & set(LabelledSplit(folder, FVGNET_TEST).names()))
        if shared:
            raise UserError(f"{folder / FVGNET_TEST}: {len(shared)} test image(s) also listed in {FVGNET_TRAIN} "
                            f"({', '.join(shared[:3])}); training and validation must not see test images")
    return train


def _simulation_folders(root: str | None) -> tuple[Path, Path]:
    """(``cave_1024_28``, the toolbox's ``datasets`` folder) from ``root`` = either of them."""
    path = _require_root(root, SIMULATION, SIMULATION_NEEDS)
    if (path / "cave_1024_28").is_dir():
        return path / "cave_1024_28", path
    if (path / "Truth").is_dir():
        raise FileNotFoundError(f"{path}: is the KAIST test folder (Truth/, mask.mat: TSA_simu_data), not training "
                                f"cubes; the {SIMULATION} needs {SIMULATION_NEEDS}: pass --data.root "
                                "/path/to/MST/datasets (it finds TSA_simu_data/ beside cave_1024_28/); train.py test "
                                f"/ predict take this folder alone as --data.test_root {path}")
    if path.name == "cave_1024_28" or any(p.suffix.lower() == ".mat" for p in path.iterdir()):
        return path, path.parent
    raise FileNotFoundError(f"{path}: holds neither cave_1024_28/ nor .mat cubes; the {SIMULATION} needs "
                            f"{SIMULATION_NEEDS}: pass --data.root /path/to/MST/datasets or /path/to/cave_1024_28; "
                            f"{NO_DATA_HINT}")


def simulation_test_folder(root: str | None) -> Path:
    """The KAIST test folder of the MST simulation layout: ``TSA_simu_data`` beside ``cave_1024_28`` (``mask.mat``
    and, for ``train.py test``, ``Truth/``), whether or not it exists."""
    return _simulation_folders(root)[1] / "TSA_simu_data"


def _toolbox_datasets(root: str) -> Path | None:
    """The MST toolbox's ``datasets/`` folder of ``root``: ``root`` itself, or its parent for ``root`` =
    ``cave_1024_28``; None when that folder holds no ``cave_1024_28/``."""
    path = Path(root)
    toolbox = path.parent if path.name == "cave_1024_28" else path
    return toolbox if (toolbox / "cave_1024_28").is_dir() else None


def toolbox_mask(root: str) -> Path | None:
    """``TSA_simu_data/mask.mat`` of the MST toolbox layout that ``root`` belongs to (``root`` = ``cave_1024_28`` or
    the ``datasets/`` folder holding it), or None when there is none."""
    toolbox = _toolbox_datasets(root)
    mask = None if toolbox is None else toolbox / "TSA_simu_data" / "mask.mat"
    return mask if mask is not None and mask.is_file() else None


def toolbox_test_folder(root: str) -> Path | None:
    """The MST toolbox's KAIST test folder (``TSA_simu_data`` holding ``Truth/``) that ``root`` is, or that lies
    beside ``root`` = ``cave_1024_28`` (or in the ``datasets/`` folder holding it); None when there is none."""
    toolbox = _toolbox_datasets(root)
    folders = (Path(root), *(() if toolbox is None else (toolbox / "TSA_simu_data",)))
    return next((folder for folder in folders if (folder / "Truth").is_dir()), None)


def _refuse_toolbox_folder(path: Path) -> None:
    """The error for the toolbox's ``datasets/`` read as a plain folder of cubes (it holds none, only their folders)."""
    if not path.is_dir() or any(p.suffix.lower() in CUBE_SUFFIXES for p in path.iterdir()):
        return
    held = {source: folder for source, folder in (("mst_simulation", "cave_1024_28"), ("mst_real", "CAVE_512_28"))
            if (path / folder).is_dir()}
    if held:
        listed = " or ".join(f"{source} ({folder}/)" for source, folder in held.items())
        raise FileNotFoundError(f"{path}: the MST toolbox's datasets/ folder, not a folder of cubes; pass "
                                f"--data.source {listed}, or --data.root {path / next(iter(held.values()))} (its cubes "
                                "alone)")


def resolve_source(source: str, root: str | None) -> str:
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
    source = resolve_source(source, root)
    if mask is not None:
        return _given_mask(mask)
    if source == "mst_simulation":
        return _recipe_mask(simulation_test_folder(root) / "mask.mat", SIMULATION)
    if source == "mst_real":
        return _recipe_mask(_require_root(root, REAL, REAL_NEEDS) / "TSA_real_data" / "mask.mat", REAL)
    if source == "fvgnet":
        return _recipe_mask(_fvgnet_folder(root).parent / "mask" / "mask512x512.mat", FVGNET)
    return None


def find_training_data(source: str, root: str | None, mask: str | None) -> TrainingData:
    """Resolve ``source`` (one of :data:`SOURCES`), ``root`` and ``mask`` from folder listings (no cube is read).

    ``auto``: synthetic scenes without ``root``, else ``folder``. ``synthetic``: built-in scenes (``root`` must
    not be set). ``folder``: every cube file of ``root``. ``mst_simulation``: ``cave_1024_28`` (``root`` or in
    it; .mat files only, as the toolbox's ``LoadTraining``) and ``TSA_simu_data/mask.mat`` beside it.
    ``mst_real``: ``root``'s ``CAVE_512_28`` (key 'data_slice' / 65535) and ``KAIST_CVPR2021`` (key 'HSI'),
    and ``TSA_real_data/mask.mat``. ``fvgnet``: the labelled images of ``train_data.csv`` (``root`` = the
    ``fvgnet`` folder or the CRSDUN folder holding it; every listed cube and label file must exist, none may be a
    ``test_data.csv`` image) and ``mask/mask512x512.mat`` beside ``fvgnet``. ``mask`` replaces the recipe's mask
    (else a seeded random one).
    """
    source = resolve_source(source, root)
    test_root = None
    if source == "synthetic":
        return TrainingData(source, mask=mask_file(source, root, mask))
    if source == "folder":
        folders = (CubeFolder(Path(root)),)
        _refuse_toolbox_folder(Path(root))
    elif source == "fvgnet":
        folders = (_fvgnet_split(root),)
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
