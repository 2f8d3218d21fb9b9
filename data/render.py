"""Rendering cubes for people: an sRGB preview of a spectral cube and a per-pixel error map.

The colour matching functions are the CIE 1931 2-degree observer in the multi-lobe Gaussian fit of
Wyman, Sloan and Shirley (JCGT 2013, "Simple analytic approximations to the CIE XYZ color matching
functions"), sampled at the band centres. XYZ goes to linear sRGB (D65 matrix), white-balanced so
that a flat reflectance of 1 in every band renders as white (the 28 KAIST bands stop at 648 nm, so an
unbalanced render of white would look cyan), then sRGB-gamma encoded to 8 bits.
"""
from __future__ import annotations

import numpy as np
import torch

from data.synthetic import wavelengths as band_wavelengths

# (weight, centre nm, sigma below the centre, sigma above the centre) of each lobe.
_LOBES = {
    "x": ((1.056, 599.8, 37.9, 31.0), (0.362, 442.0, 16.0, 26.7), (-0.065, 501.1, 20.4, 26.2)),
    "y": ((0.821, 568.8, 46.9, 40.5), (0.286, 530.9, 16.3, 31.1)),
    "z": ((1.217, 437.0, 11.8, 36.0), (0.681, 459.0, 26.0, 13.8)),
}
XYZ_TO_LINEAR_SRGB = np.array([[3.2406, -1.5372, -0.4986],
                               [-0.9689, 1.8758, 0.0415],
                               [0.0557, -0.2040, 1.0570]])


def _as_numpy_cube(cube: np.ndarray | torch.Tensor, name: str = "cube") -> np.ndarray:
    if isinstance(cube, torch.Tensor):
        cube = cube.detach().cpu().numpy()
    cube = np.asarray(cube, dtype=np.float64)
    if cube.ndim != 3:
        raise ValueError(f"{name} must be (L, H, W), got shape {cube.shape}")
    return cube


def colour_matching(wl: np.ndarray) -> np.ndarray:
    """CIE 1931 x-bar, y-bar, z-bar at wavelengths ``wl`` (nm), (len(wl), 3)."""
    wl = np.asarray(wl, dtype=np.float64)
    out = np.zeros((wl.size, 3))
    for k, lobes in enumerate(_LOBES.values()):
        for weight, mu, below, above in lobes:
            sigma = np.where(wl < mu, below, above)
            out[:, k] += weight * np.exp(-0.5 * ((wl - mu) / sigma) ** 2)
    return out


def _srgb_gamma(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def linear_rgb(cube: np.ndarray | torch.Tensor, wavelengths: np.ndarray | None = None) -> np.ndarray:
    """White-balanced linear sRGB (H, W, 3) of a cube (L, H, W); a flat cube of ones gives (1, 1, 1)."""
    cube = _as_numpy_cube(cube)
    wl = band_wavelengths(cube.shape[0]) if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)
    if wl.shape != (cube.shape[0],):
        raise ValueError(f"got {wl.size} wavelengths for a cube of {cube.shape[0]} bands")
    to_rgb = XYZ_TO_LINEAR_SRGB @ colour_matching(wl).T                 # (3, L)
    white = to_rgb.sum(axis=1)
    return np.einsum("cl,lhw->hwc", to_rgb / white[:, None], cube)


def auto_exposure(cube: np.ndarray | torch.Tensor, percentile: float = 99.0) -> float:
    """Exposure that maps the given percentile of the rendered luminance to 1 (for arbitrary-scale data)."""
    rgb = linear_rgb(cube)
    level = float(np.percentile(rgb.mean(axis=-1), percentile))
    return 1.0 / level if level > 0 else 1.0


def cube_to_rgb(cube: np.ndarray | torch.Tensor, wavelengths: np.ndarray | None = None,
                exposure: float = 1.0) -> np.ndarray:
    """sRGB preview (H, W, 3) uint8 of a reflectance-like cube (L, H, W).

    ``wavelengths`` (nm, (L,)) default to the KAIST band centres for 28 bands. ``exposure`` multiplies the
    linear light before clipping to [0, 1]; use the same value for cubes that are compared side by side.
    """
    rgb = _srgb_gamma(linear_rgb(cube, wavelengths) * exposure)
    return np.round(rgb * 255.0).astype(np.uint8)


def error_map(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-pixel RMSE over the bands, (H, W) float32, of two cubes (L, H, W) of the same shape."""
    pred, target = _as_numpy_cube(pred, "pred"), _as_numpy_cube(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in shape: {pred.shape} vs {target.shape}")
    return np.sqrt(((pred - target) ** 2).mean(axis=0)).astype(np.float32)
