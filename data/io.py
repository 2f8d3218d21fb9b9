"""Readers and writers for the file formats CASSI users have (MATLAB v5 / v7.3, npz, npy, PNG labels).

Every loader returns numpy ``float32`` arrays (labels: ``int64``) in a documented layout and raises
``FileNotFoundError`` / ``ValueError`` naming the file, the key and the offending shape or value.
Nothing is silently clipped, reshaped or replaced.

Layouts:
    cube         (L, H, W)   band-first, band 0 = shortest wavelength
    mask         (H, W)      coded-aperture transmission, values as stored (not binarised)
    measurement  (H, Wm)     2-D snapshot, Wm = W + step * (L - 1)
    labels       (H, W)      int64 class index
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cassi.errors import UserError

PathLike = str | os.PathLike

# Keys tried (in this order) when no key is given.
CUBE_MAT_KEYS = ("img_expand", "img")          # MST cave_1024_28 (img_expand), TSA/MST Truth/sceneNN.mat (img)
MEASUREMENT_MAT_KEYS = ("meas", "y", "meas_real")
CAVE_16BIT_SCALE = 1.0 / 65536.0               # MST LoadTraining divides CAVE cubes by 65536
COUNTS_16BIT_MIN_MAX = 4096.0                  # smallest maximum read as 16-bit counts (see _infer_scale)
MASK_MAX = 1.0 + 1e-6                          # a transmission is at most 1 (float rounding allowed)

# FVgNET (fake-vs-genuine fruit) segmentation labels: PASCAL-VOC colour map, 23 classes
# (class order as in the CRSDUN data loader, zjhe02/CRSDUN dataset.py).
FVGNET_CLASSES = (
    "background",
    "real potato", "fake potato", "real apple", "fake apple", "real orange", "fake orange",
    "real grape", "fake grape", "real lemon", "fake lemon", "real avocado", "fake avocado",
    "real pepper", "fake pepper", "real plant", "fake plant", "real banana", "fake banana",
    "real onion", "fake onion", "real unknown", "fake unknown",
)


def voc_palette(n_classes: int) -> np.ndarray:
    """PASCAL-VOC colour map: (n_classes, 3) uint8, class k's bits spread over the RGB high bits."""
    palette = np.zeros((n_classes, 3), dtype=np.uint8)
    for k in range(n_classes):
        rgb, code = [0, 0, 0], k
        for bit in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((code >> ch) & 1) << bit
            code >>= 3
        palette[k] = rgb
    return palette


FVGNET_PALETTE = voc_palette(len(FVGNET_CLASSES))


# --------------------------------------------------------------------------- helpers

def _existing(path: PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; a file is expected here (name the file inside it)")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path


def _check_finite(arr: np.ndarray, where: str) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(f"{where}: {int(arr.size - finite.sum())} of {arr.size} values are NaN or Inf (the first at "
                         f"index {first}: dead pixels or a failed export?)")


def _as_float32(arr: np.ndarray, where: str) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"{where}: expected a real numeric array, got dtype {arr.dtype}")
    out = np.asarray(arr, dtype=np.float32)
    _check_finite(out, where)
    return out


def _pick(arrays: Mapping[str, np.ndarray], key: str | None, candidates: Sequence[str], path: Path,
          option: str | None = None) -> str:
    """Resolve the key to read: the given one, or exactly one of ``candidates`` present in the file. ``option``: the
    command-line option that picks the key, named in the error; without one (the command has none) the error says
    to re-save the file."""
    present = sorted(arrays)
    python = "or pick one with key=... from Python"
    if key is not None:
        if key not in arrays:
            choose = f"pick one with {option} KEY" if option else f"re-save the array under '{key}', {python}"
            raise ValueError(f"{path}: key '{key}' not found; keys present: {present} ({choose})")
        return key
    found = [k for k in candidates if k in arrays]
    if not found:
        choose = f"pick one with {option} KEY" if option else f"re-save the array under one of them, {python}"
        raise ValueError(f"{path}: none of the keys {list(candidates)} found; keys present: {present} ({choose})")
    if len(found) > 1:
        choose = f"pick one with {option} KEY" if option else f"re-save the file with one of them, {python}"
        raise ValueError(f"{path}: several candidate keys {found} present ({choose})")
    return found[0]


def _unreadable(path: Path, kind: str, err: Exception) -> UserError:
    """The error for a file that cannot be parsed (empty, truncated, another format, pickled objects)."""
    if path.stat().st_size == 0:
        reason = "the file is empty"
    elif "pickled" in str(err):
        reason = "it holds pickled Python objects (or is not a numpy file); only plain arrays are read"
    else:
        reason = f"{type(err).__name__}: {str(err) or 'no details'}"
    return UserError(f"{path}: not a readable {kind} file, truncated or corrupt? ({reason})")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """All arrays of a .mat / .npz file, or {'': array} for a .npy file."""
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return load_mat(path)
    if suffix not in (".npz", ".npy"):
        raise ValueError(f"{path}: unsupported file type '{suffix}' (expected .mat, .npz or .npy)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            if suffix == ".npy":
                return {"": loaded}
            raise ValueError("it holds a single .npy array, not a .npz archive")
        with loaded:
            if suffix == ".npy":
                raise ValueError("it is a .npz archive, not a .npy array")
            return {k: loaded[k] for k in loaded.files}
    except Exception as err:  # numpy / zipfile / zlib raise many types for a damaged file
        raise _unreadable(path, suffix, err) from err


def _read_one(path: PathLike, key: str | None, candidates: Sequence[str],
              option: str | None = None) -> tuple[np.ndarray, str]:
    """Read one array; returns it and a 'file[key]' description for error messages (``option``: see :func:`_pick`)."""
    path = _existing(path)
    return _one_of(_read_arrays(path), path, key, candidates, option)


def _one_of(arrays: Mapping[str, np.ndarray], path: Path, key: str | None, candidates: Sequence[str],
            option: str | None = None) -> tuple[np.ndarray, str]:
    """One array of a file's ``arrays`` (:func:`_read_arrays`) and its 'file[key]' description (:func:`_read_one`)."""
    if path.suffix.lower() == ".npy":
        if key is not None:
            raise ValueError(f"{path}: a .npy file holds a single array; key '{key}' does not apply")
        return arrays[""], str(path)
    name = _pick(arrays, key, candidates, path, option)
    return arrays[name], f"{path}['{name}']"


def _check_ndim(arr: np.ndarray, ndim: int, what: str, where: str) -> None:
    if arr.ndim != ndim:
        raise ValueError(f"{where}: expected a {ndim}-D {what}, got shape {arr.shape}")


# --------------------------------------------------------------------------- MATLAB

def load_mat(path: PathLike) -> dict[str, np.ndarray]:
    """All numeric variables of a MATLAB .mat file (v4/v5/v7 via scipy, v7.3 / HDF5 via h5py).

    Arrays have MATLAB's own index order in both cases: v7.3 datasets (which HDF5 stores with the axes
    reversed) are transposed back, so an H x W x L MATLAB variable is (H, W, L) either way.
    Non-numeric v7.3 entries (structs, cells, strings, complex data) are left out.
    """
    import h5py
    import scipy.io

    path = _existing(path)
    try:
        if h5py.is_hdf5(path):
            out: dict[str, np.ndarray] = {}
            with h5py.File(path, "r") as f:
                for name, item in f.items():
                    if name.startswith("#") or not isinstance(item, h5py.Dataset):
                        continue
                    if item.dtype.kind not in "biuf" or item.attrs.get("MATLAB_class", b"") == b"char":
                        continue
                    out[name] = np.asarray(item[()]).T
            return out
        raw = scipy.io.loadmat(path)
    except Exception as err:  # scipy / h5py raise many types for a damaged file
        raise _unreadable(path, "MATLAB .mat (v4-v7 or v7.3)", err) from err
    return {k: v for k, v in raw.items()
            if not k.startswith("__") and isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}


# --------------------------------------------------------------------------- cubes

def _infer_scale(cube: np.ndarray, where: str) -> float:
    """1.0 for reflectance already in [0, 1]; 1/65536 for 16-bit CAVE counts: whole numbers whose maximum
    is in [4096, 65536] (above 12 bits: a darker 'scene' is more likely data on another scale)."""
    vmax = float(cube.max())
    if vmax <= 1.5:
        return 1.0
    if COUNTS_16BIT_MIN_MAX <= vmax <= 65536.0 and np.array_equal(cube, np.round(cube)):
        return CAVE_16BIT_SCALE
    raise UserError(f"{where}: cannot tell the value scale of data in [{float(cube.min()):.4g}, {vmax:.4g}]: "
                    "neither reflectance in [0, 1] nor 16-bit counts (whole numbers with a maximum in "
                    f"[{COUNTS_16BIT_MIN_MAX:g}, 65536]); rescale the file to [0, 1] (from Python: "
                    "load_cube(..., scale=FACTOR))")


def _band_count_error(shape: tuple[int, ...], where: str, layout: str, bands: int, suffix: str) -> str:
    """What :func:`load_cube` says of a cube whose band axis (``layout``) does not hold ``bands``: the stored shape,
    how it was read and, when another axis holds ``bands``, how to store the cube."""
    order = "H x W x L" if layout == "HWL" else "L x H x W"
    stored = " x ".join(str(n) for n in shape)
    origin = " (MATLAB's order; h5py shows a v7.3 file's axes reversed)" if suffix == ".mat" else ""
    text = (f"{where}: expected {bands} bands, got {shape[2 if layout == 'HWL' else 0]}: it holds a {stored} "
            f"array{origin}, read as {order}")
    if bands in shape:
        text += f"; store the cube as {order.replace('L', str(bands))}"
    if shape[0 if layout == "HWL" else 2] == bands:
        text += f" (from Python: load_cube(..., layout='{'LHW' if layout == 'HWL' else 'HWL'}'))"
    return text


def load_cube(path: PathLike, key: str | None = None, bands: int | None = 28,
              layout: str | None = None, scale: float | None = None) -> np.ndarray:
    """Hyperspectral cube as (L, H, W) float32.

    Formats and their default layout:
        .mat  key 'img_expand' (MST ``cave_1024_28``) or 'img' (TSA/MST ``Truth/sceneNN.mat``), (H, W, L)
        .npz  key 'cube', (L, H, W) (our own files and ``pseudo_kaist`` / ``pseudo_real``)
        .npy  single array, (H, W, L) (FVgNET ``visible_28/<name>.npy``, read by CRSDUN as H x W x 28)
    ``layout`` ("LHW" or "HWL") overrides the default. ``bands`` (None: any) is the required band count.

    Scale: ``scale=None`` infers it from the values, as the toolboxes do: max <= 1.5 -> used as stored;
    whole numbers with a max in [4096, 65536] -> 16-bit CAVE counts, multiplied by 1/65536 (MST
    ``LoadTraining``); anything else is an error asking for an explicit ``scale``. Pass ``scale=1.0`` to
    read values exactly as stored. Negative values are an error.
    """
    arr, where = _read_one(path, key, CUBE_MAT_KEYS if Path(path).suffix.lower() == ".mat" else ("cube",))
    _check_ndim(arr, 3, "cube", where)
    suffix = Path(path).suffix.lower()
    layout = layout or ("LHW" if suffix == ".npz" else "HWL")
    if layout not in ("HWL", "LHW"):
        raise ValueError(f"layout must be 'LHW' or 'HWL', got {layout!r}")
    if bands is not None and arr.shape[2 if layout == "HWL" else 0] != bands:
        raise ValueError(_band_count_error(arr.shape, where, layout, bands, suffix))
    cube = _as_float32(np.transpose(arr, (2, 0, 1)) if layout == "HWL" else arr, where)
    if cube.size and float(cube.min()) < 0:
        raise UserError(f"{where}: {int((cube < 0).sum())} negative values (min {float(cube.min()):.4g}); a "
                        "hyperspectral cube holds radiance or reflectance, which cannot be negative")
    factor = _infer_scale(cube, where) if scale is None else float(scale)
    if factor != 1.0:
        cube = cube * np.float32(factor)
    return np.ascontiguousarray(cube)


# --------------------------------------------------------------------------- masks / measurements

def load_mask(path: PathLike, key: str | None = "mask", option: str | None = None) -> np.ndarray:
    """Coded-aperture mask as (H, W) float32 from .mat / .npz (``key``, default 'mask') or .npy; ``option``: the
    command-line option that picks the key, named when it is missing.

    Values are returned as stored (the KAIST and real masks are continuous in [0.005, 1], not binary);
    values outside [0, 1] are an error (a 0/255 image is not rescaled silently).
    """
    if Path(path).suffix.lower() == ".npy":
        key = None
    return _checked_mask(*_read_one(path, key, ("mask",), option))


def _checked_mask(arr: np.ndarray, where: str) -> np.ndarray:
    """A mask array read from ``where`` as :func:`load_mask` returns it, or the error it raises."""
    _check_ndim(arr, 2, "mask", where)
    mask = _as_float32(arr, where)
    if mask.min() < 0:
        raise ValueError(f"{where}: mask has negative values (min {float(mask.min()):.4g})")
    if mask.max() > MASK_MAX:
        raise UserError(f"{where}: mask values go up to {float(mask.max()):.4g}, but a transmission is at most 1"
                        + (" (an 8-bit image? divide it by 255)" if arr.dtype == np.uint8 else ""))
    return mask


def load_measurement(path: PathLike, key: str | None = None, option: str | None = None) -> np.ndarray:
    """2-D snapshot as (H, Wm) float32.

    Keys tried when ``key`` is None: .npz 'y' (``kaist_meas/*.npz``); .mat one of 'meas', 'y', 'meas_real'
    (TSA real captures) -- an error if several are present; ``option``: the command-line option that picks the
    key, named when none or several are found. .npy: the single array.
    Values as stored (no normalisation).
    """
    return MeasurementFile(path).measurement(key, option)


class MeasurementFile:
    """One measurement file, read once (when first needed) for all it holds: the snapshot
    (:func:`load_measurement`), the whole numbers it records and the mask it may hold (the KAIST snapshots
    ``kaist_meas/*.npz``: key 'mask'). A missing file or a folder is an error at once."""

    def __init__(self, path: PathLike) -> None:
        self.path = _existing(path)

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the file (:func:`_read_arrays`), read on first use."""
        return _read_arrays(self.path)

    def measurement(self, key: str | None = None, option: str | None = None) -> np.ndarray:
        """The snapshot (H, Wm) float32, as :func:`load_measurement` reads it."""
        candidates = MEASUREMENT_MAT_KEYS if self.path.suffix.lower() == ".mat" else ("y",)
        arr, where = _one_of(self.arrays, self.path, key, candidates, option)
        _check_ndim(arr, 2, "measurement", where)
        return _as_float32(arr, where)

    def recorded_integers(self, keys: Sequence[str]) -> dict[str, int]:
        """The whole-number scalars an ``.npz`` records under ``keys`` (``calibrate.py simulate``: bands, step; the
        KAIST snapshots: step), those present; {} for other formats (not read for them). A key that holds anything
        else is an error naming the file and the key."""
        if self.path.suffix.lower() != ".npz":
            return {}
        out = {}
        for key in keys:
            if key not in self.arrays:
                continue
            value = self.arrays[key]
            if value.shape != () or not np.issubdtype(value.dtype, np.integer):
                raise UserError(f"{self.path}['{key}']: expected a whole number, got dtype {value.dtype}, "
                                f"shape {value.shape}")
            out[key] = int(value)
        return out

    def mask(self, key: str = "mask") -> tuple[np.ndarray, str] | None:
        """The mask the file holds under ``key`` (.npz / .mat), checked as :func:`load_mask` checks it, and its
        'file[key]' description; None when it holds none (always for .npy)."""
        if self.path.suffix.lower() == ".npy" or key not in self.arrays:
            return None
        where = f"{self.path}['{key}']"
        return _checked_mask(self.arrays[key], where), where


# --------------------------------------------------------------------------- labels

def load_label_png(path: PathLike, palette: np.ndarray = FVGNET_PALETTE) -> np.ndarray:
    """Colour-coded PNG label map -> (H, W) int64 class map, class k = colour ``palette[k]``.

    ``palette``: (K, 3) RGB, default the FVgNET / PASCAL-VOC map (``FVGNET_PALETTE``, ``FVGNET_CLASSES``).
    Palette-mode PNGs are converted to RGB; an alpha channel must be fully opaque.
    Any colour not in the palette is an error listing it.
    """
    from PIL import Image

    path = _existing(path)
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must have shape (K, 3), got {palette.shape}")
    with Image.open(path) as img:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        rgb = np.asarray(img)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"{path}: expected an RGB(A) label image, got shape {rgb.shape} (mode {img.mode})")
    if rgb.shape[2] == 4:
        if (rgb[..., 3] != 255).any():
            raise ValueError(f"{path}: label image has transparent pixels")
        rgb = rgb[..., :3]
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal = palette.astype(np.int64)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    if len(np.unique(pal_codes)) != len(pal_codes):
        raise ValueError("palette has repeated colours")
    order = np.argsort(pal_codes, kind="stable")
    pos = np.clip(np.searchsorted(pal_codes[order], codes), 0, len(order) - 1)
    known = pal_codes[order][pos] == codes
    if not known.all():
        bad, counts = np.unique(codes[~known], return_counts=True)
        listed = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) x{n}" for c, n in zip(bad[:10], counts[:10]))
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(f"{path}: {len(bad)} colour(s) not in the palette: {listed}{more}")
    return order[pos].astype(np.int64)
