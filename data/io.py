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
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

PathLike = str | os.PathLike

# Keys tried (in this order) when no key is given.
CUBE_MAT_KEYS = ("img_expand", "img")          # MST cave_1024_28 (img_expand), TSA/MST Truth/sceneNN.mat (img)
MEASUREMENT_MAT_KEYS = ("meas", "y", "meas_real")
CAVE_16BIT_SCALE = 1.0 / 65536.0               # MST LoadTraining divides CAVE cubes by 65536

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
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path


def _check_finite(arr: np.ndarray, where: str) -> None:
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise ValueError(f"{where}: {bad} of {arr.size} values are NaN or Inf")


def _as_float32(arr: np.ndarray, where: str) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"{where}: expected a real numeric array, got dtype {arr.dtype}")
    out = np.asarray(arr, dtype=np.float32)
    _check_finite(out, where)
    return out


def _pick(arrays: Mapping[str, np.ndarray], key: str | None, candidates: Sequence[str], path: Path) -> str:
    """Resolve the key to read: the given one, or exactly one of ``candidates`` present in the file."""
    present = sorted(arrays)
    if key is not None:
        if key not in arrays:
            raise ValueError(f"{path}: key '{key}' not found; keys present: {present}")
        return key
    found = [k for k in candidates if k in arrays]
    if not found:
        raise ValueError(f"{path}: none of the keys {list(candidates)} found; keys present: {present} "
                         f"(pass key=...)")
    if len(found) > 1:
        raise ValueError(f"{path}: several candidate keys {found} present; pass key=... to choose one")
    return found[0]


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """All arrays of a .mat / .npz file, or {'': array} for a .npy file."""
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return load_mat(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if suffix == ".npy":
        return {"": np.load(path, allow_pickle=False)}
    raise ValueError(f"{path}: unsupported file type '{suffix}' (expected .mat, .npz or .npy)")


def _read_one(path: PathLike, key: str | None, candidates: Sequence[str]) -> tuple[np.ndarray, str]:
    """Read one array; returns it and a 'file[key]' description for error messages."""
    path = _existing(path)
    arrays = _read_arrays(path)
    if path.suffix.lower() == ".npy":
        if key is not None:
            raise ValueError(f"{path}: a .npy file holds a single array; key '{key}' does not apply")
        return arrays[""], str(path)
    name = _pick(arrays, key, candidates, path)
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
    try:
        raw = scipy.io.loadmat(path)
    except (ValueError, TypeError, NotImplementedError) as err:
        raise ValueError(f"{path}: not a readable MATLAB file ({err})") from err
    return {k: v for k, v in raw.items()
            if not k.startswith("__") and isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}


# --------------------------------------------------------------------------- cubes

def _infer_scale(cube: np.ndarray, where: str) -> float:
    """1.0 for reflectance already in [0, 1]; 1/65536 for 16-bit CAVE counts (max in (255, 65536])."""
    vmax = float(cube.max())
    if vmax <= 1.5:
        return 1.0
    if 255.0 < vmax <= 65536.0:
        return CAVE_16BIT_SCALE
    raise ValueError(f"{where}: cannot infer the value scale from the range [{float(cube.min()):.4g}, "
                     f"{vmax:.4g}]; pass scale=... (1/65536 for 16-bit CAVE counts, 1.0 for [0, 1] data)")


def load_cube(path: PathLike, key: str | None = None, bands: int | None = 28,
              layout: str | None = None, scale: float | None = None) -> np.ndarray:
    """Hyperspectral cube as (L, H, W) float32.

    Formats and their default layout:
        .mat  key 'img_expand' (MST ``cave_1024_28``) or 'img' (TSA/MST ``Truth/sceneNN.mat``), (H, W, L)
        .npz  key 'cube', (L, H, W) (our own files and ``pseudo_kaist`` / ``pseudo_real``)
        .npy  single array, (H, W, L) (FVgNET ``visible_28/<name>.npy``, read by CRSDUN as H x W x 28)
    ``layout`` ("LHW" or "HWL") overrides the default. ``bands`` (None: any) is the required band count.

    Scale: ``scale=None`` infers it from the values, as the toolboxes do: max <= 1.5 -> used as stored;
    max in (255, 65536] -> 16-bit CAVE counts, multiplied by 1/65536 (MST ``LoadTraining``); anything else is
    an error asking for an explicit ``scale``. Pass ``scale=1.0`` to read values exactly as stored.
    """
    arr, where = _read_one(path, key, CUBE_MAT_KEYS if Path(path).suffix.lower() == ".mat" else ("cube",))
    _check_ndim(arr, 3, "cube", where)
    suffix = Path(path).suffix.lower()
    layout = layout or ("LHW" if suffix == ".npz" else "HWL")
    if layout == "HWL":
        arr = np.transpose(arr, (2, 0, 1))
    elif layout != "LHW":
        raise ValueError(f"layout must be 'LHW' or 'HWL', got {layout!r}")
    cube = _as_float32(arr, where)
    if bands is not None and cube.shape[0] != bands:
        raise ValueError(f"{where}: expected {bands} bands, got {cube.shape[0]} "
                         f"(shape as (L, H, W): {cube.shape}; is layout={layout!r} right?)")
    factor = _infer_scale(cube, where) if scale is None else float(scale)
    if factor != 1.0:
        cube = cube * np.float32(factor)
    return np.ascontiguousarray(cube)


# --------------------------------------------------------------------------- masks / measurements

def load_mask(path: PathLike, key: str | None = "mask") -> np.ndarray:
    """Coded-aperture mask as (H, W) float32 from .mat / .npz (``key``, default 'mask') or .npy.

    Values are returned as stored (the KAIST and real masks are continuous in [0.005, 1], not binary);
    negative transmissions are an error.
    """
    if Path(path).suffix.lower() == ".npy":
        key = None
    arr, where = _read_one(path, key, ("mask",))
    _check_ndim(arr, 2, "mask", where)
    mask = _as_float32(arr, where)
    if mask.min() < 0:
        raise ValueError(f"{where}: mask has negative values (min {float(mask.min()):.4g})")
    return mask


def load_measurement(path: PathLike, key: str | None = None) -> np.ndarray:
    """2-D snapshot as (H, Wm) float32.

    Keys tried when ``key`` is None: .npz 'y' (``kaist_meas/*.npz``); .mat one of 'meas', 'y', 'meas_real'
    (TSA real captures) -- an error if several are present. .npy: the single array.
    Values as stored (no normalisation).
    """
    candidates = MEASUREMENT_MAT_KEYS if Path(path).suffix.lower() == ".mat" else ("y",)
    arr, where = _read_one(path, key, candidates)
    _check_ndim(arr, 2, "measurement", where)
    return _as_float32(arr, where)


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


# --------------------------------------------------------------------------- writing

def save_npz_atomic(path: PathLike, compress: bool = True, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` (exactly that name) as .npz via a temp file + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
