"""Training data: random crops of hyperspectral cubes plus the coded-aperture mask.

The datamodule yields ground-truth cubes and masks only. Measurements are simulated on the fly by the
LightningModule through the CASSI operator (``cassi.CassiOperator``), so mismatch and noise settings live there.

Batches are dicts:
    "cube"    (B, L, h, w) float32 in [0, 1]
    "labels"  (B, h, w) int64 material ids (synthetic scenes only)
    "mask"    (h, w) float32 shared by the batch, or (B, h, w) when ``mask_crop="sample"`` (a random window of a
              larger mask per sample, as CRSDUN's ``crop_mask`` and the MST real-data loader); ``mask_crop="batch"``
              shares the first sample's window with the whole batch (for MST, whose attention uses only it)
    "scene"   (B,) int64 index of the held-out (validation) or test scene (validation and test batches)

Where the data come from (``source``, see :mod:`data.layouts`): built-in synthetic scenes, a folder of cubes, or
the MST toolbox's layout (``mst_simulation``: ``cave_1024_28`` + the KAIST mask; ``mst_real``: ``CAVE_512_28`` +
``KAIST_CVPR2021`` + the real mask). ``check()`` validates all of it from folder listings and the mask file
before any work. Test / predict sets (``train.py test|predict``) are the KAIST protocol's scenes: ``test_root``
in the MST ``TSA_simu_data`` layout (found in the toolbox folder by ``mst_simulation``), else the built-in
synthetic test scenes of ``eval.py kaist`` at the mask's size, one scene per batch.

Reproducibility / DDP: the training set is map-style with ``samples_per_epoch`` items; item ``i`` of epoch ``e``
is drawn from ``numpy.random.default_rng((seed, 0, e, i))`` only, so any sampler (``DistributedSampler``
included) gives each rank its own items and a resumed run sees the same data. The epoch reaches the items
through ``EpochSampler.set_epoch`` (Lightning calls it every epoch, also through its distributed wrapper),
which yields ``(epoch, i)`` pairs; plain integer indices use ``TrainCrops.set_epoch``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.io import load_mask
from data.kaist import Scene, check_scene_sizes, mst_mask, mst_scenes, synthetic_scenes
from data.layouts import CubeFile, TrainingData, find_training_data, mask_file
from data.synthetic import random_mask, synthetic_scene

MASK_CROP = ("none", "sample", "batch")


class SceneSource:
    """Full cubes (L, H, W) (and optional labels (H, W)) by scene index, in memory or read on demand."""

    def __init__(self, cubes: Sequence[np.ndarray] | None = None, labels: Sequence[np.ndarray] | None = None,
                 files: Sequence[CubeFile] | None = None, bands: int = 28):
        self.cubes, self.labels, self.files, self.bands = cubes, labels, files, bands

    def __len__(self) -> int:
        return len(self.cubes) if self.cubes is not None else len(self.files)

    def cube(self, k: int) -> np.ndarray:
        return self.cubes[k] if self.cubes is not None else self.files[k].load(self.bands)

    def label(self, k: int) -> np.ndarray | None:
        return None if self.labels is None else self.labels[k]

    def name(self, k: int) -> str:
        return str(self.files[k].path) if self.files else f"synthetic scene {k}"

    def check_sizes(self, crop: int) -> None:
        """Error if an in-memory scene is smaller than ``crop`` (files read on demand are checked when read)."""
        for k, cube in enumerate(self.cubes or []):
            if min(cube.shape[1:]) < crop:
                raise ValueError(f"{self.name(k)}: size {cube.shape[1:]} is smaller than the crop {crop}")


def _dihedral(x: np.ndarray, rot: int, vflip: bool, hflip: bool) -> np.ndarray:
    """Rotate the last two axes by ``rot`` quarter turns, then flip columns / rows (MST ``arguement_1``)."""
    x = np.rot90(x, rot, axes=(-2, -1))
    if vflip:
        x = x[..., ::-1]
    if hflip:
        x = x[..., ::-1, :]
    return np.ascontiguousarray(x)


def _crop(src: SceneSource, k: int, size: int, rng: np.random.Generator | None = None):
    """A size x size window of scene k (and its labels): random from ``rng``, or the centre when None."""
    cube, lab = src.cube(k), src.label(k)
    height, width = cube.shape[1:]
    if min(height, width) < size:
        raise ValueError(f"{src.name(k)}: size {(height, width)} is smaller than the crop {size}")
    if rng is None:
        top, left = (height - size) // 2, (width - size) // 2
    else:
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    return cube[(slice(None), *window)], None if lab is None else lab[window]


class TrainCrops(Dataset):
    """Random training crops: item ``i`` of epoch ``e`` comes from ``default_rng((seed, 0, e, i))`` only.

    With probability ``splice_prob`` an item is the toolbox's spliced mosaic (MST ``shuffle_crop``): four
    ``crop/2`` crops from four random scenes tiled 2 x 2, not augmented further; otherwise one ``crop`` crop
    of a random scene with a random rot90 / flip. ``mask`` given with ``mask_crop``: each item also gets a
    random ``crop`` x ``crop`` window of that larger mask (the collate function decides whether the batch keeps
    every window or only the first).
    """

    def __init__(self, source: SceneSource, crop: int, samples_per_epoch: int, seed: int = 0,
                 splice_prob: float = 0.5, mask: np.ndarray | None = None, mask_crop: bool = False):
        if crop % 2:
            raise ValueError(f"crop size must be even (the spliced mosaic uses crop/2 quarters), got {crop}")
        self.source, self.crop, self.n, self.seed = source, crop, samples_per_epoch, seed
        self.splice_prob, self.mask, self.mask_crop = splice_prob, mask, mask_crop
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (``(epoch, i)`` indices carry their own)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, i = (self.epoch, index) if isinstance(index, (int, np.integer)) else index
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} samples per epoch")
        rng = np.random.default_rng((self.seed, 0, int(epoch), int(i)))
        n_scenes = len(self.source)
        if rng.random() < self.splice_prob:
            half = self.crop // 2
            parts = [_crop(self.source, int(rng.integers(n_scenes)), half, rng) for _ in range(4)]
            cube = np.block([[parts[0][0], parts[1][0]], [parts[2][0], parts[3][0]]])
            labels = None if parts[0][1] is None else np.block([[parts[0][1], parts[1][1]],
                                                                [parts[2][1], parts[3][1]]])
        else:
            cube, labels = _crop(self.source, int(rng.integers(n_scenes)), self.crop, rng)
            rot, vflip, hflip = int(rng.integers(4)), bool(rng.integers(2)), bool(rng.integers(2))
            cube = _dihedral(cube, rot, vflip, hflip)
            labels = None if labels is None else _dihedral(labels, rot, vflip, hflip)
        item = {"cube": torch.from_numpy(np.ascontiguousarray(cube, dtype=np.float32))}
        if labels is not None:
            item["labels"] = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        if self.mask_crop:
            item["mask"] = torch.from_numpy(_random_mask_window(rng, self.mask, self.crop))
        return item


def _random_mask_window(rng: np.random.Generator, mask: np.ndarray, size: int) -> np.ndarray:
    top = int(rng.integers(0, mask.shape[0] - size + 1))
    left = int(rng.integers(0, mask.shape[1] - size + 1))
    return np.ascontiguousarray(mask[top:top + size, left:left + size])


class ValCrops(Dataset):
    """Deterministic validation crops: ``crops_per_scene`` windows of each held-out scene, no augmentation.

    One crop per scene is the centre crop; further crops (and mask windows with ``mask_crop``) come from
    ``default_rng((seed, 1, i))``, independent of the epoch.
    """

    def __init__(self, source: SceneSource, crop: int, crops_per_scene: int = 1, seed: int = 0,
                 mask: np.ndarray | None = None, mask_crop: bool = False):
        self.source, self.crop, self.per_scene, self.seed = source, crop, crops_per_scene, seed
        self.mask, self.mask_crop = mask, mask_crop

    def __len__(self) -> int:
        return len(self.source) * self.per_scene

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} validation crops")
        k, j = divmod(int(i), self.per_scene)
        rng = np.random.default_rng((self.seed, 1, int(i)))
        cube, labels = _crop(self.source, k, self.crop, rng if j else None)
        item = {"cube": torch.from_numpy(np.ascontiguousarray(cube, dtype=np.float32)),
                "scene": torch.tensor(k, dtype=torch.int64)}
        if labels is not None:
            item["labels"] = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        if self.mask_crop:
            item["mask"] = torch.from_numpy(_random_mask_window(rng, self.mask, self.crop))
        return item


class EpochSampler(Sampler):
    """Yields ``(epoch, i)`` for i in range(len(dataset)); ``set_epoch`` (called by Lightning) moves the epoch."""

    def __init__(self, length: int):
        self.length, self.epoch = length, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in range(self.length))

    def __len__(self) -> int:
        return self.length


class CollateWithMask:
    """Default-collate the items; add the shared (h, w) ``mask`` unless the items carry their own windows, of
    which ``first_window_only`` keeps the first sample's as the batch's (h, w) mask."""

    def __init__(self, mask: torch.Tensor | None, first_window_only: bool = False):
        self.mask, self.first_window_only = mask, first_window_only

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = torch.utils.data.default_collate(items)
        if "mask" not in batch and self.mask is not None:
            batch["mask"] = self.mask
        elif "mask" in batch and self.first_window_only:
            batch["mask"] = batch["mask"][0]
        return batch


class WholeScenes(Dataset):
    """Whole test scenes, one per item: ``{"cube": (L, H, W), "scene": index}`` (the mask is the collate's)."""

    def __init__(self, scenes: Sequence[Scene]):
        self.scenes = list(scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"cube": self.scenes[i].cube, "scene": torch.tensor(i, dtype=torch.int64)}


class CassiDataModule(pl.LightningDataModule):
    """Cubes + masks for CASSI training (measurements are simulated by the LightningModule).

    Args:
        root: the data folder of ``source`` (see :mod:`data.layouts`): a folder of cubes (MST ``cave_1024_28`` .mat,
            or .npz / .npy cubes; see ``data.io.load_cube``), or the MST toolbox's ``datasets/`` folder.
        source: ``auto`` (synthetic without ``root``, else ``folder``), ``synthetic``, ``folder``, ``mst_simulation``
            (``cave_1024_28`` + ``TSA_simu_data/mask.mat``), ``mst_real`` (``CAVE_512_28`` + ``KAIST_CVPR2021`` +
            ``TSA_real_data/mask.mat``).
        num_scenes / val_scenes: synthetic training / held-out scenes (of ``scene_size`` px, default 1.25 x crop).
            For cube files, ``val_scenes`` files are held out, chosen with ``seed``; the KAIST-10 test scenes are
            never training or validation data (they are the test set).
        crop: training / validation crop size (px, even). splice_prob: probability of a spliced mosaic item.
        samples_per_epoch: training items per epoch (MST: 5000). val_crops_per_scene: validation crops per scene
            (the first is the centre crop).
        mask: mask file (``data.io.load_mask``), None -> the recipe's mask (``mst_*`` sources) or a random binary
            mask from ``seed`` (crop x crop, or ``mask_size`` x ``mask_size`` with ``mask_crop``). mask_key: its key.
        mask_crop: ``none``: the whole mask (crop x crop) for every sample; ``sample``: a random crop x crop window
            of a larger mask per sample; ``batch``: one such window per batch (the first sample's). ``True`` /
            ``False`` mean ``sample`` / ``none``.
        preload: read all cubes at setup (fast, memory-hungry like MST); False reads them per item.
        bands: band count to require from files.
        test_root: KAIST test scenes in the MST ``TSA_simu_data`` layout (``Truth/*.mat`` + ``mask.mat``) for
            ``train.py test|predict``; None -> the layout's own (``mst_simulation``), else ``test_scenes`` built-in
            synthetic scenes (those of ``eval.py kaist``, seed 0) at the training mask's size.
    """

    def __init__(self, root: str | None = None, source: Literal["auto", "synthetic", "folder", "mst_simulation",
                                                                  "mst_real"] = "auto",
                 num_scenes: int = 32, val_scenes: int = 4, scene_size: int | None = None, crop: int = 256,
                 splice_prob: float = 0.5, samples_per_epoch: int = 5000, val_crops_per_scene: int = 1,
                 batch_size: int = 5, num_workers: int = 0, mask: str | None = None, mask_key: str = "mask",
                 mask_crop: bool | Literal["none", "sample", "batch"] = "none", mask_size: int | None = None,
                 preload: bool = True, bands: int = 28, n_classes: int = 6, test_root: str | None = None,
                 test_scenes: int = 10, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        if isinstance(mask_crop, bool):
            mask_crop = "sample" if mask_crop else "none"
        if mask_crop not in MASK_CROP:
            raise ValueError(f"mask_crop must be one of {', '.join(MASK_CROP)} (or true / false), got {mask_crop!r}")
        self.mask_crop = mask_crop
        self.train_set: TrainCrops | None = None
        self.val_set: ValCrops | None = None
        self.test_set: WholeScenes | None = None
        self.mask: np.ndarray | None = None
        self.test_mask: torch.Tensor | None = None
        self.train_files: list[Path] = []
        self.val_files: list[Path] = []
        self.test_names: list[str] = []
        self._data: TrainingData | None = None

    # ------------------------------------------------------------------------------------- checks
    def data(self) -> TrainingData:
        """Where the cubes, the mask and the test scenes are (folder listings only; cached)."""
        if self._data is None:
            hp = self.hparams
            self._data = find_training_data(hp.source, hp.root, hp.mask)
        return self._data

    def check(self, stage: str = "fit") -> None:
        """Every data error this module can tell without reading a cube, raised before any work: missing
        folders or mask, too few files to hold scenes out, a mask that does not fit the crop."""
        if stage in ("fit", "validate"):
            self._held_out_split()
            self.training_mask()
            hp = self.hparams
            if not self.data().folders and hp.scene_size is not None and hp.scene_size < hp.crop:
                raise ValueError(f"synthetic scenes of {hp.scene_size} px are smaller than the crop {hp.crop}")
        elif self._test_root() is None:
            self.training_mask()                      # the synthetic test scenes take the training mask

    def training_mask(self) -> np.ndarray:
        """The coded aperture (H, W) of training: the mask file, or the seeded random one; checked against the
        crop (exactly crop x crop, or at least that with ``mask_crop``)."""
        hp = self.hparams
        path = mask_file(hp.source, hp.root, hp.mask)
        if path is not None:
            mask = load_mask(path, hp.mask_key)
        else:
            side = (hp.mask_size or 2 * hp.crop) if self.mask_crop != "none" else hp.crop
            mask = random_mask(side, side, seed=(hp.seed, 7))
        name = path or "(random)"
        if self.mask_crop != "none" and (mask.shape[0] < hp.crop or mask.shape[1] < hp.crop):
            raise ValueError(f"mask {name} has shape {mask.shape}; crop={hp.crop} with mask_crop={self.mask_crop} "
                             f"needs at least {hp.crop} x {hp.crop}: lower --data.crop")
        if self.mask_crop == "none" and mask.shape != (hp.crop, hp.crop):
            raise ValueError(f"mask {name} has shape {mask.shape}; crop={hp.crop} needs exactly {hp.crop} x {hp.crop}"
                             f": set --data.crop {mask.shape[0]} (a square mask) or --data.mask_crop batch / sample "
                             "to train on random windows of the larger mask")
        return mask

    def _held_out_split(self) -> tuple[list[CubeFile], list[CubeFile]]:
        """(training files, held-out files) of a file source; ([], []) for synthetic scenes."""
        hp = self.hparams
        data = self.data()
        if not data.folders:
            return [], []
        files = data.files()
        if not 0 < hp.val_scenes < len(files):
            where = ", ".join(str(folder.path) for folder in data.folders)
            raise ValueError(f"{where}: {len(files)} cube file(s); cannot hold out {hp.val_scenes} of {len(files)} "
                             "scenes for validation and keep at least one for training (--data.val_scenes)")
        held = set(np.random.default_rng((hp.seed, 3)).choice(len(files), hp.val_scenes, replace=False).tolist())
        return ([f for k, f in enumerate(files) if k not in held], [f for k, f in enumerate(files) if k in held])

    def _test_root(self) -> Path | None:
        root = self.hparams.test_root
        if root is None:
            return self.data().test_root
        if not (Path(root) / "Truth").is_dir() or not (Path(root) / "mask.mat").is_file():
            raise FileNotFoundError(f"--data.test_root {root}: expected the MST TSA_simu_data layout (Truth/*.mat "
                                    "and mask.mat)")
        return Path(root)

    # -------------------------------------------------------------------------------------- setup
    def _sources(self) -> tuple[SceneSource, SceneSource]:
        hp = self.hparams
        train_files, val_files = self._held_out_split()
        if not self.data().folders:
            size = hp.scene_size or hp.crop + hp.crop // 4
            scenes = [synthetic_scene(size, size, hp.bands, (hp.seed, k), hp.n_classes)
                      for k in range(hp.num_scenes + hp.val_scenes)]
            cubes, labels = [c for c, _ in scenes], [lab for _, lab in scenes]
            n = hp.num_scenes
            return (SceneSource(cubes[:n], labels[:n], bands=hp.bands),
                    SceneSource(cubes[n:], labels[n:], bands=hp.bands))
        self.train_files = [f.path for f in train_files]
        self.val_files = [f.path for f in val_files]
        return tuple(SceneSource([f.load(hp.bands) for f in fs] if hp.preload else None, files=fs, bands=hp.bands)
                     for fs in (train_files, val_files))

    def setup(self, stage: str | None = None) -> None:
        if stage in ("test", "predict"):
            self._setup_test()
        elif self.train_set is None:
            self._setup_fit()

    def _setup_fit(self) -> None:
        hp = self.hparams
        self.mask = self.training_mask()
        train, val = self._sources()
        train.check_sizes(hp.crop)
        val.check_sizes(hp.crop)
        windows = self.mask_crop != "none"
        self.train_set = TrainCrops(train, hp.crop, hp.samples_per_epoch, hp.seed, hp.splice_prob, self.mask, windows)
        self.val_set = ValCrops(val, hp.crop, hp.val_crops_per_scene, hp.seed, self.mask, windows)

    def _setup_test(self) -> None:
        if self.test_set is not None:
            return
        root = self._test_root()
        if root is not None:
            scenes, self.test_mask = mst_scenes(root, self.hparams.bands), mst_mask(root)
        else:
            self.test_mask = torch.from_numpy(self.training_mask())
            height, width = self.test_mask.shape
            scenes = synthetic_scenes(self.hparams.test_scenes, height, width, seed=0, bands=self.hparams.bands)
        check_scene_sizes(scenes, self.test_mask)
        self.test_names = [scene.name for scene in scenes]
        self.test_set = WholeScenes(scenes)

    # -------------------------------------------------------------------------------- dataloaders
    def _collate(self) -> CollateWithMask:
        shared = None if self.mask_crop != "none" else torch.from_numpy(self.mask)
        return CollateWithMask(shared, first_window_only=self.mask_crop == "batch")

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(self.train_set, batch_size=hp.batch_size, sampler=EpochSampler(len(self.train_set)),
                          num_workers=hp.num_workers, collate_fn=self._collate(), drop_last=True,
                          persistent_workers=hp.num_workers > 0, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(self.val_set, batch_size=hp.batch_size, shuffle=False, num_workers=hp.num_workers,
                          collate_fn=self._collate(), persistent_workers=hp.num_workers > 0)

    def test_dataloader(self) -> DataLoader:
        """One whole test scene per batch, with the test mask (the KAIST protocol, as ``eval.py kaist``)."""
        return DataLoader(self.test_set, batch_size=1, shuffle=False, collate_fn=CollateWithMask(self.test_mask))

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
