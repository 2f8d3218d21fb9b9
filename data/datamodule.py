"""Training data: random crops of hyperspectral cubes plus the coded-aperture mask.

The datamodule yields ground-truth cubes and masks only. Measurements are simulated on the fly by the
LightningModule through the CASSI operator (``cassi.CassiOperator``), so mismatch and noise settings live there.

Batches are dicts:
    "cube"    (B, L, h, w) float32 in [0, 1]
    "labels"  (B, h, w) int64 class ids (synthetic scenes: material ids; FVgNET: its 23 classes)
    "mask"    (h, w) float32 shared by the batch, or (B, h, w) when ``mask_crop="sample"`` (a random window of a
              larger mask per sample, as CRSDUN's ``crop_mask`` and the MST real-data loader); ``mask_crop="batch"``
              shares the first sample's window with the whole batch (for MST, whose attention uses only it)
    "scene"   (B,) int64 index of the held-out (validation) or test scene (validation and test batches)

Where the data come from (``source``, see :mod:`data.layouts`): built-in synthetic scenes, a folder of cubes,
the MST toolbox's layout (``mst_simulation``: ``cave_1024_28`` + the KAIST mask; ``mst_real``: ``CAVE_512_28`` +
``KAIST_CVPR2021`` + the real mask), or CRSDUN's FVgNET layout (``fvgnet``: the labelled images of
``train_data.csv`` + CRSDUN's 512 x 512 mask). ``check()`` validates all of it from folder listings and the mask file
before any work. Test / predict sets (``train.py test|predict``) are the KAIST protocol's scenes: ``test_root``
in the MST ``TSA_simu_data`` layout (found in the toolbox folder by ``mst_simulation``), else the built-in
synthetic test scenes of ``eval.py kaist`` at the mask's size, one scene per batch.

Reproducibility / DDP: the training set is map-style with ``samples_per_epoch`` items (None: one per training
scene, each scene once per epoch in the order ``default_rng((seed, 4, e)).permutation``); item ``i`` of epoch ``e``
is drawn from ``numpy.random.default_rng((seed, 0, e, i))`` only, so any sampler (``DistributedSampler``
included) gives each rank its own items and a resumed run sees the same data. The epoch reaches the items
through ``EpochSampler.set_epoch`` (Lightning calls it every epoch, also through its distributed wrapper),
which yields ``(epoch, i)`` pairs; plain integer indices use ``TrainCrops.set_epoch``. The training loader
(:class:`ResumableLoader`) is resumable in mid-epoch: a checkpoint records how many batches of the epoch it had
taken, and the resumed run goes on with the next batch, without loading the ones before it.
"""
from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.io import load_mask
from data.kaist import Scene, check_scene_sizes, mst_mask, mst_scenes, synthetic_scenes
from data.layouts import (CubeFile, TrainingData, resolve_source, find_training_data, mask_file,
                          simulation_test_folder, toolbox_mask, toolbox_test_folder)
from data.synthetic import random_mask, synthetic_scene

MASK_CROP = ("none", "sample", "batch")
AUGMENT = ("dihedral", "hflip")
# Settings that a resumed fit may change: they leave its training batches and validation crops as they were (the test
# set, speed and memory). ``train.py fit --ckpt_path`` compares every other one with its checkpoint's; of the paths
# (:data:`MOVABLE_PATHS`) only whether each is set (built-in scenes or files, a random mask or a file).
RESUME_FREE_SETTINGS = ("test_root", "test_scenes", "num_workers", "preload")
MOVABLE_PATHS = ("root", "mask")           # the same files may have moved


def mask_crop_mode(mask_crop: bool | str) -> str:
    """``mask_crop`` as one of :data:`MASK_CROP` (``True`` / ``False``: ``sample`` / ``none``)."""
    if isinstance(mask_crop, bool):
        mask_crop = "sample" if mask_crop else "none"
    if mask_crop not in MASK_CROP:
        raise ValueError(f"mask_crop must be one of {', '.join(MASK_CROP)} (or true / false), got {mask_crop!r}")
    return mask_crop


def resume_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Datamodule ``settings`` as a resumed fit compares them with its checkpoint's: ``source`` as the one it
    resolves to (``auto``: ``synthetic`` without ``root``, else ``folder``; as spelled if it does not resolve), a path
    of :data:`MOVABLE_PATHS` as whether it is set, ``mask_crop`` as its mode, anything else as it is."""
    found = dict(settings)
    if isinstance(found.get("source"), str):
        with contextlib.suppress(ValueError):              # a wrong source is the datamodule's error to give
            found["source"] = resolve_source(found["source"], found.get("root"))
    found.update({key: found[key] is not None for key in MOVABLE_PATHS if key in found})
    if isinstance(found.get("mask_crop"), (bool, str)):
        found["mask_crop"] = mask_crop_mode(found["mask_crop"])
    return found


class SceneSource:
    """Full cubes (L, H, W) (and optional labels (H, W)) by scene index, in memory or read on demand."""

    def __init__(self, cubes: Sequence[np.ndarray] | None = None, labels: Sequence[np.ndarray] | None = None,
                 files: Sequence[CubeFile] | None = None, bands: int = 28):
        self.cubes, self.labels, self.files, self.bands = cubes, labels, files, bands

    @classmethod
    def from_files(cls, files: Sequence[CubeFile], bands: int, preload: bool) -> "SceneSource":
        """Scenes of ``files``, all read now (``preload``) or each one when it is used."""
        if not preload:
            return cls(files=files, bands=bands)
        scenes = [file.load_scene(bands) for file in files]
        labels = [lab for _, lab in scenes]
        return cls([cube for cube, _ in scenes], None if any(lab is None for lab in labels) else labels, files, bands)

    def __len__(self) -> int:
        return len(self.cubes) if self.cubes is not None else len(self.files)

    def scene(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Scene k's cube (L, H, W) and class map (H, W) (None without labels)."""
        if self.cubes is None:
            return self.files[k].load_scene(self.bands)
        return self.cubes[k], None if self.labels is None else self.labels[k]

    def name(self, k: int) -> str:
        return str(self.files[k].path) if self.files else f"synthetic scene {k}"

    def check_sizes(self, crop: int, top: int | None = None) -> None:
        """Error if an in-memory scene cannot hold the crop (files read on demand are checked when read)."""
        for k, cube in enumerate(self.cubes or []):
            _check_fits(self.name(k), cube.shape[1:], crop, top)


def _check_fits(name: str, shape: tuple[int, int], size: int, top: int | None) -> None:
    """Error naming the scene if a size x size crop (starting at row ``top``) does not fit its (H, W)."""
    if min(shape) < size:
        raise ValueError(f"{name}: size {tuple(shape)} is smaller than the crop {size}")
    if top is not None and top + size > shape[0]:
        raise ValueError(f"{name}: {shape[0]} rows, too few for crops of rows {top}..{top + size - 1} "
                         f"(--data.crop_top {top}, --data.crop {size})")


def _dihedral(x: np.ndarray, rot: int, vflip: bool, hflip: bool) -> np.ndarray:
    """Rotate the last two axes by ``rot`` quarter turns, then flip columns / rows (MST ``arguement_1``)."""
    x = np.rot90(x, rot, axes=(-2, -1))
    if vflip:
        x = x[..., ::-1]
    if hflip:
        x = x[..., ::-1, :]
    return np.ascontiguousarray(x)


def _crop(src: SceneSource, k: int, size: int, rng: np.random.Generator | None = None, top: int | None = None):
    """A size x size window of scene k (and its labels): random from ``rng`` (``top``: at that first row, as
    CRSDUN's ``RandomCropHoriz``), or the centre when ``rng`` is None."""
    cube, lab = src.scene(k)
    height, width = cube.shape[1:]
    _check_fits(src.name(k), (height, width), size, top)
    if rng is None:
        top, left = (height - size) // 2, (width - size) // 2
    else:
        top = int(rng.integers(0, height - size + 1)) if top is None else top
        left = int(rng.integers(0, width - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    return cube[(slice(None), *window)], None if lab is None else lab[window]


class TrainCrops(Dataset):
    """Random training crops: item ``i`` of epoch ``e`` comes from ``default_rng((seed, 0, e, i))`` only.

    With probability ``splice_prob`` an item is the toolbox's spliced mosaic (MST ``shuffle_crop``): four
    ``crop/2`` crops from four random scenes tiled 2 x 2, not augmented further; otherwise one ``crop`` crop
    of a scene, augmented (``augment``): ``dihedral``, a random rot90 / flip (MST ``arguement_1``), or ``hflip``,
    columns mirrored with probability 1/2 (CRSDUN's ``RandomHorizontalFlip``). The scene is a random one, or with
    ``samples_per_epoch=None`` item i of the epoch's permutation of the scenes (one pass per epoch, as a shuffled
    ``DataLoader`` over the images). ``crop_top`` fixes the first row of every crop (mosaic quarters included).
    ``mask`` given with ``mask_crop``: each item also gets a random ``crop`` x ``crop`` window of that larger mask
    (the collate function decides whether the batch keeps every window or only the first).
    """

    def __init__(self, source: SceneSource, crop: int, samples_per_epoch: int | None, seed: int = 0,
                 splice_prob: float = 0.5, mask: np.ndarray | None = None, mask_crop: bool = False,
                 augment: str = "dihedral", crop_top: int | None = None):
        if crop % 2:
            raise ValueError(f"crop size must be even (the spliced mosaic uses crop/2 quarters), got {crop}")
        if augment not in AUGMENT:
            raise ValueError(f"augment must be one of {', '.join(AUGMENT)}, got {augment!r}")
        self.one_pass = samples_per_epoch is None
        self.source, self.crop, self.seed = source, crop, seed
        self.n = len(source) if samples_per_epoch is None else samples_per_epoch
        self.splice_prob, self.mask, self.mask_crop = splice_prob, mask, mask_crop
        self.augment, self.crop_top = augment, crop_top
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
            parts = [_crop(self.source, int(rng.integers(n_scenes)), half, rng, self.crop_top) for _ in range(4)]
            cube = np.block([[parts[0][0], parts[1][0]], [parts[2][0], parts[3][0]]])
            labels = None if parts[0][1] is None else np.block([[parts[0][1], parts[1][1]],
                                                                [parts[2][1], parts[3][1]]])
        else:
            if self.one_pass:
                k = int(np.random.default_rng((self.seed, 4, int(epoch))).permutation(n_scenes)[i])
            else:
                k = int(rng.integers(n_scenes))
            cube, labels = _crop(self.source, k, self.crop, rng, self.crop_top)
            if self.augment == "dihedral":
                rot, vflip, hflip = int(rng.integers(4)), bool(rng.integers(2)), bool(rng.integers(2))
            else:  # CRSDUN's horizontal flip mirrors the columns: _dihedral's vflip (MST's name)
                rot, vflip, hflip = 0, bool(rng.random() < 0.5), False
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


class ResumableLoader(DataLoader):
    """The training ``DataLoader``, resumable in mid-epoch. ``state_dict()`` is the epoch of the pass in progress (its
    sampler's ``epoch``: :class:`EpochSampler`, or Lightning's distributed wrapper of it) and the batches taken from
    it; Lightning saves it in every checkpoint and hands it to ``load_state_dict`` when a run resumes. The next pass,
    if it is over that same epoch, skips those batches: their indices are drawn (``islice`` of the batch sampler,
    each rank its own), their items never loaded. A pass over another epoch starts at its first batch."""

    _position: dict[str, int] | None = None        # the pass in progress: {"epoch": e, "batches": taken}
    _resume: dict[str, int] | None = None          # loaded from a checkpoint, for the next pass
    _skip = 0                                      # batches the pass in progress skips

    def state_dict(self) -> dict[str, int]:
        return dict(self._position or {"epoch": 0, "batches": 0})

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = dict(state_dict)

    @property
    def _index_sampler(self) -> Iterable[Any]:
        # torch's DataLoader iterators draw the batches' indices from this (its batch sampler) at every pass
        return _SkippedBatches(super()._index_sampler, self)

    def __iter__(self) -> Iterator[Any]:
        # a generator: its pass begins at the first batch asked for, after Lightning's set_epoch
        epoch = self.sampler.epoch
        resume, self._resume = self._resume, None
        self._skip = resume["batches"] if resume and resume["epoch"] == epoch else 0
        self._position = position = {"epoch": epoch, "batches": self._skip}
        for batch in super().__iter__():
            position["batches"] += 1
            yield batch


class _SkippedBatches:
    """A batch sampler's batches from ``loader._skip`` on, read at every pass (persistent workers keep this
    object); its length is the whole epoch's, as Lightning counts the batches of a resumed epoch itself."""

    def __init__(self, batches: Iterable[Any], loader: ResumableLoader):
        self.batches, self.loader = batches, loader

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self.batches, self.loader._skip, None)


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
    """Whole test scenes, one per item: ``{"cube": (L, H, W), "scene": index}`` and the scene's ``labels`` (H, W) if it
    has them (the mask is the collate's)."""

    def __init__(self, scenes: Sequence[Scene]):
        self.scenes = list(scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        scene = self.scenes[i]
        labels = {} if scene.labels is None else {"labels": scene.labels}
        return {"cube": scene.cube, "scene": torch.tensor(i, dtype=torch.int64), **labels}


class CassiDataModule(pl.LightningDataModule):
    """Cubes + masks for CASSI training (measurements are simulated by the LightningModule).

    Args:
        root: the data folder of ``source`` (see :mod:`data.layouts`): a folder of cubes (MST ``cave_1024_28`` .mat,
            or .npz / .npy cubes; see ``data.io.load_cube``), the MST toolbox's ``datasets/`` folder, or CRSDUN's
            ``fvgnet/`` folder (or the CRSDUN folder holding it).
        source: ``auto`` (synthetic without ``root``, else ``folder``), ``synthetic``, ``folder``, ``mst_simulation``
            (``cave_1024_28`` + ``TSA_simu_data/mask.mat``), ``mst_real`` (``CAVE_512_28`` + ``KAIST_CVPR2021`` +
            ``TSA_real_data/mask.mat``), ``fvgnet`` (the labelled images of ``train_data.csv`` with their labels +
            CRSDUN's ``mask/mask512x512.mat``).
        num_scenes / val_scenes: synthetic training / held-out scenes (of ``scene_size`` px, default 1.25 x crop,
            or what crop_top + crop and val_crop need).
            For cube files, ``val_scenes`` files are held out, chosen with ``seed``; the KAIST-10 test scenes (and
            FVgNET's ``test_data.csv`` images) are never training or validation data (they are the test set).
        crop: training crop size (px, even). crop_top: first row of every training crop (None: random; CRSDUN: 170).
        augment: of the training crops: ``dihedral`` (random rot90 / flips, MST) or ``hflip`` (columns mirrored with
            probability 1/2, CRSDUN). splice_prob: probability of a spliced mosaic item.
        samples_per_epoch: training items per epoch (MST: 5000); None: one per training scene, each once per epoch.
        val_crop: validation crop size (None: ``crop``; the whole image when it is the image's size).
        val_crops_per_scene: validation crops per scene (the first is the centre crop).
        mask: mask file (``data.io.load_mask``), None -> the recipe's mask (``mst_*``, ``fvgnet`` sources) or a random
            binary mask from ``seed`` (crop x crop, or ``mask_size`` x ``mask_size`` with ``mask_crop``, default
            twice the larger crop). mask_key: its key.
        mask_crop: ``none``: the whole mask (crop x crop) for every sample; ``sample``: a random crop x crop window
            of a larger mask per sample; ``batch``: one such window per batch (the first sample's). Validation takes
            val_crop x val_crop windows the same way. ``True`` / ``False`` mean ``sample`` / ``none``.
        preload: read all cubes (and labels) at setup (fast, memory-hungry like MST; every file is checked before
            training starts); False reads them per item.
        bands: band count to require from files.
        test_root: KAIST test scenes in the MST ``TSA_simu_data`` layout (``Truth/*.mat`` + ``mask.mat``) for
            ``train.py test|predict``; None -> the layout's own (``mst_simulation``: an error if its ``Truth/`` is
            missing), else ``test_scenes`` built-in synthetic scenes (those of ``eval.py kaist``, seed 0) at the
            training mask's size.
        test_scenes: how many built-in synthetic test scenes ``train.py test|predict`` scores; only those: with a
            test folder (``test_root``, or the layout's own) every ``Truth/*.mat`` scene of it is scored.
    """

    def __init__(self, root: str | None = None, source: Literal["auto", "synthetic", "folder", "mst_simulation",
                                                                  "mst_real", "fvgnet"] = "auto",
                 num_scenes: int = 32, val_scenes: int = 4, scene_size: int | None = None, crop: int = 256,
                 crop_top: int | None = None, augment: Literal["dihedral", "hflip"] = "dihedral",
                 splice_prob: float = 0.5, samples_per_epoch: int | None = 5000, val_crop: int | None = None,
                 val_crops_per_scene: int = 1,
                 batch_size: int = 5, num_workers: int = 0, mask: str | None = None, mask_key: str = "mask",
                 mask_crop: bool | Literal["none", "sample", "batch"] = "none", mask_size: int | None = None,
                 preload: bool = True, bands: int = 28, n_classes: int = 6, test_root: str | None = None,
                 test_scenes: int = 10, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.mask_crop = mask_crop_mode(mask_crop)
        self.val_crop = crop if val_crop is None else val_crop
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
        folders or mask, too few files to hold scenes out or to fill a batch, a mask that does not fit the crop."""
        if stage in ("fit", "validate"):
            train_files, _ = self._held_out_split()
            self.training_mask()
            hp = self.hparams
            if stage == "validate" and hp.val_scenes == 0:
                raise ValueError("--data.val_scenes 0 holds out no scene: validate has none to score (fit trains "
                                 "without validation with it)")
            beside = toolbox_mask(hp.root) if self.data().source == "folder" and hp.mask is None else None
            if beside is not None:
                rank_zero_warn(f"--data.root {hp.root} holds the MST toolbox's cubes and the data source is 'folder' "
                               f"({hp.source}), so {stage} uses a seeded random mask, not {beside}: pass "
                               f"--data.source mst_simulation (the toolbox recipe) or --data.mask {beside}")
            items = hp.samples_per_epoch
            if items is None:
                items = len(train_files) if self.data().folders else hp.num_scenes
            if stage == "fit" and items < hp.batch_size:
                per_epoch = "samples per epoch" if hp.samples_per_epoch else "training scenes (one pass per epoch)"
                raise ValueError(f"{items} {per_epoch}, fewer than --data.batch_size {hp.batch_size}: no training "
                                 "step would run (the last incomplete batch of an epoch is dropped)")
            if stage == "fit":
                self._check_mask_size()
            largest = max(hp.crop + (hp.crop_top or 0), self.val_crop)
            if not self.data().folders and hp.scene_size is not None and hp.scene_size < largest:
                raise ValueError(f"synthetic scenes of {hp.scene_size} px are smaller than the crops (crop {hp.crop}, "
                                 f"crop_top {hp.crop_top}, val_crop {self.val_crop})")
        elif self._test_root() is None:
            self.training_mask()                      # the synthetic test scenes take the training mask
            hp = self.hparams
            truth = toolbox_test_folder(hp.root) if self.data().source == "folder" else None
            if truth is not None:
                rank_zero_warn(f"--data.root {hp.root} is or lies beside the MST toolbox's KAIST test folder {truth} "
                               f"and the data source is 'folder' ({hp.source}), so {stage} scores the "
                               f"{hp.test_scenes} built-in synthetic scenes, not {truth / 'Truth'}: pass "
                               f"--data.test_root {truth} to score those")

    def _check_mask_size(self) -> None:
        """``mask_size`` sizes the random mask that ``mask_crop`` windows (recipes set it for the case without a mask
        file): with ``mask_crop: none`` it could never have an effect, and is refused."""
        if self.hparams.mask_size is not None and self.mask_crop == "none":
            raise ValueError(f"--data.mask_size {self.hparams.mask_size} sizes the random mask that --data.mask_crop "
                             "batch / sample windows, and mask_crop is none (the mask is crop x crop): drop it")

    def training_mask(self) -> np.ndarray:
        """The coded aperture (H, W) of training: the mask file, or the seeded random one; checked against the
        crops (exactly crop x crop, or at least the larger crop with ``mask_crop``)."""
        hp = self.hparams
        path = mask_file(hp.source, hp.root, hp.mask)
        largest = max(hp.crop, self.val_crop)
        if path is not None:
            mask = load_mask(path, hp.mask_key, "--data.mask_key")
        else:
            side = (hp.mask_size or 2 * largest) if self.mask_crop != "none" else hp.crop
            mask = random_mask(side, side, seed=(hp.seed, 7))
        name = path or "(random)"
        if self.mask_crop == "none" and self.val_crop != hp.crop:
            raise ValueError(f"val_crop={self.val_crop} differs from crop={hp.crop}, but with mask_crop=none every "
                             "crop takes the whole mask: set --data.mask_crop batch / sample or drop --data.val_crop")
        if self.mask_crop != "none" and (mask.shape[0] < largest or mask.shape[1] < largest):
            crops, options = ((f"crop={hp.crop}", "--data.crop") if self.val_crop == hp.crop else
                              (f"crop={hp.crop}, val_crop={self.val_crop}", "--data.crop / --data.val_crop"))
            raise ValueError(f"mask {name} has shape {mask.shape}; {crops} with mask_crop={self.mask_crop} needs at "
                             f"least {largest} x {largest}: lower {options}")
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
        if hp.val_scenes < 0:
            raise ValueError(f"--data.val_scenes {hp.val_scenes}: expected the number of cube files held out for "
                             "validation (0: none, training without validation)")
        if hp.val_scenes >= len(files):
            where = ", ".join(str(folder.path) for folder in data.folders)
            raise ValueError(f"{where}: {len(files)} cube file(s); cannot hold out {hp.val_scenes} of {len(files)} "
                             "scenes for validation and keep at least one for training (--data.val_scenes)")
        held = set(np.random.default_rng((hp.seed, 3)).choice(len(files), hp.val_scenes, replace=False).tolist())
        return ([f for k, f in enumerate(files) if k not in held], [f for k, f in enumerate(files) if k in held])

    def _test_root(self) -> Path | None:
        root = self.hparams.test_root
        if root is None:
            data = self.data()
            if data.source == "mst_simulation" and data.test_root is None:   # not the synthetic scenes instead
                truth = simulation_test_folder(self.hparams.root) / "Truth"
                raise FileNotFoundError(f"{truth}: no such folder; test / predict score the KAIST test scenes of the "
                                        "MST layout, Truth/sceneNN.mat (key 'img') beside TSA_simu_data/mask.mat: "
                                        "put them there or pass --data.test_root /path/to/TSA_simu_data")
            return data.test_root
        if not (Path(root) / "Truth").is_dir() or not (Path(root) / "mask.mat").is_file():
            raise FileNotFoundError(f"--data.test_root {root}: expected the MST TSA_simu_data layout (Truth/*.mat "
                                    "and mask.mat)")
        return Path(root)

    # -------------------------------------------------------------------------------------- setup
    def _sources(self) -> tuple[SceneSource, SceneSource]:
        hp = self.hparams
        train_files, val_files = self._held_out_split()
        if not self.data().folders:
            size = hp.scene_size or max(hp.crop + hp.crop // 4, (hp.crop_top or 0) + hp.crop, self.val_crop)
            scenes = [synthetic_scene(size, size, hp.bands, (hp.seed, k), hp.n_classes)
                      for k in range(hp.num_scenes + hp.val_scenes)]
            cubes, labels = [c for c, _ in scenes], [lab for _, lab in scenes]
            n = hp.num_scenes
            return (SceneSource(cubes[:n], labels[:n], bands=hp.bands),
                    SceneSource(cubes[n:], labels[n:], bands=hp.bands))
        self.train_files = [f.path for f in train_files]
        self.val_files = [f.path for f in val_files]
        return tuple(SceneSource.from_files(fs, hp.bands, hp.preload) for fs in (train_files, val_files))

    def setup(self, stage: str | None = None) -> None:
        if stage in ("test", "predict"):
            self._setup_test()
        elif self.train_set is None:
            self._setup_fit()

    def _setup_fit(self) -> None:
        hp = self.hparams
        self.mask = self.training_mask()
        train, val = self._sources()
        train.check_sizes(hp.crop, hp.crop_top)
        val.check_sizes(self.val_crop)
        windows = self.mask_crop != "none"
        self.train_set = TrainCrops(train, hp.crop, hp.samples_per_epoch, hp.seed, hp.splice_prob, self.mask, windows,
                                    hp.augment, hp.crop_top)
        self.val_set = ValCrops(val, self.val_crop, hp.val_crops_per_scene, hp.seed, self.mask, windows)

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
        return ResumableLoader(self.train_set, batch_size=hp.batch_size, sampler=EpochSampler(len(self.train_set)),
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
