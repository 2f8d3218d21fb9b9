"""Built-in synthetic hyperspectral scenes: the default data when no real cubes are given.

A scene is a background plus a dozen painted shapes (blobs, rotated rectangles, ellipses) with hard edges.
Each shape is one material of a small library of smooth reflectance spectra over 450-650 nm; its pixels
are modulated by multiplicative fractal texture, by shape shading (spheres, gradients), by a smooth
illumination field and by a smooth illuminant spectrum. Per-pixel labels are the material index in
``MATERIAL_NAMES`` (the same ids in every scene). Everything is drawn from ``numpy.random.default_rng(seed)``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# Band centres (nm) of the 28-band KAIST / CAVE simulation (TSA-Net, MST).
KAIST_WAVELENGTHS = np.array([
    453.3, 457.6, 462.1, 466.8, 471.6, 476.5, 481.6, 486.9, 492.4, 498.0, 503.9, 509.9, 516.2, 522.7,
    529.5, 536.5, 543.8, 551.4, 558.6, 567.5, 575.3, 584.3, 594.4, 604.2, 614.4, 625.1, 636.3, 648.1])

Seed = int | Sequence[int]


def wavelengths(bands: int = 28) -> np.ndarray:
    """Band centres in nm: the KAIST list for 28 bands, else evenly spaced over 450-650 nm."""
    return KAIST_WAVELENGTHS.copy() if bands == 28 else np.linspace(450.0, 650.0, bands)


def _g(wl: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((wl - mu) / sigma) ** 2)


def _s(wl: np.ndarray, mu: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(wl - mu) / width))


# Reflectance (0..1) of each material as a function of wavelength in nm.
MATERIALS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "leaf": lambda wl: 0.04 + 0.10 * _g(wl, 552, 28) + 0.05 * _s(wl, 700, 12),   # green peak, red edge
    "dry grass": lambda wl: 0.08 + 0.32 * _s(wl, 525, 30),
    "skin": lambda wl: 0.22 + 0.30 * _s(wl, 585, 18) - 0.05 * _g(wl, 542, 9) - 0.05 * _g(wl, 577, 9),
    "red paint": lambda wl: 0.05 + 0.75 * _s(wl, 598, 9),
    "orange paint": lambda wl: 0.06 + 0.72 * _s(wl, 568, 11),
    "yellow paint": lambda wl: 0.07 + 0.73 * _s(wl, 508, 11),
    "green paint": lambda wl: 0.05 + 0.42 * _g(wl, 527, 30),
    "cyan paint": lambda wl: 0.07 + 0.55 * (1.0 - _s(wl, 552, 16)),
    "blue paint": lambda wl: 0.05 + 0.55 * _g(wl, 458, 27),
    "purple paint": lambda wl: 0.06 + 0.40 * _g(wl, 450, 28) + 0.45 * _s(wl, 612, 14),
    "white paper": lambda wl: 0.78 + 0.08 * _s(wl, 465, 12),
    "grey fabric": lambda wl: 0.33 + 0.03 * (wl - 550.0) / 100.0,
    "sky": lambda wl: 0.12 + 0.55 * (450.0 / wl) ** 4,
    "wood": lambda wl: 0.07 + 0.38 * np.clip((wl - 440.0) / 210.0, 0, None) ** 1.6,
    "black plastic": lambda wl: 0.035 + 0.01 * (wl - 450.0) / 200.0,
}
MATERIAL_NAMES: tuple[str, ...] = tuple(MATERIALS)


def material_spectrum(name: str, wl: np.ndarray, shift_nm: float = 0.0, gain: float = 1.0) -> np.ndarray:
    """Reflectance of ``name`` at ``wl`` nm, features moved by ``shift_nm`` and scaled by ``gain``, in [0.01, 0.95]."""
    return np.clip(gain * MATERIALS[name](wl - shift_nm), 0.01, 0.95)


def fractal_noise(rng: np.random.Generator, height: int, width: int, beta: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise with power spectrum ~ 1/f^beta, (H, W) float64."""
    spec = np.fft.rfft2(rng.standard_normal((height, width)))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    spec *= f ** (-beta / 2.0)
    spec[0, 0] = 0.0
    field = np.fft.irfft2(spec, s=(height, width))
    return field / (field.std() + 1e-12)


def random_mask(height: int, width: int, seed: Seed = 0, fill: float = 0.5) -> np.ndarray:
    """Random binary coded aperture (H, W) float32 of 0/1, each pixel open with probability ``fill``."""
    return (np.random.default_rng(seed).random((height, width)) < fill).astype(np.float32)


def _paint_shapes(rng: np.random.Generator, height: int, width: int, n_shapes: int,
                  smooth: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Instance map (H, W) int (0 = background, k = shape k, later shapes on top) and shading (H, W).

    Each shape is evaluated only in the window of pixels it can cover: within ``reach`` radii of its centre (a
    rectangle's corners at most sqrt(2); a blob's boundary pushed out by at most 0.25 x its noise field's maximum)
    plus 2 pixels, the same pixels as evaluating it over the whole image."""
    size = float(min(height, width))
    inst = np.zeros((height, width), dtype=np.int64)
    shade = np.ones((height, width))
    for k in range(1, n_shapes + 1):
        cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
        radius = size * rng.uniform(0.08, 0.35)
        ang = rng.uniform(0, np.pi)
        kind = rng.integers(3)
        field = smooth[rng.integers(len(smooth))] * rng.choice([-1.0, 1.0]) if kind == 0 else None
        reach = 1.0 + 0.25 * max(float(field.max()), 0.0) if kind == 0 else np.sqrt(2.0)
        half = radius * reach + 2.0
        y0, x0 = int(np.clip(np.floor(cy - half), 0, height)), int(np.clip(np.floor(cx - half), 0, width))
        y1, x1 = int(np.clip(np.ceil(cy + half) + 1, y0, height)), int(np.clip(np.ceil(cx + half) + 1, x0, width))
        rows, cols = slice(y0, y1), slice(x0, x1)
        yy = np.arange(y0, y1, dtype=np.float64)[:, None]
        xx = np.arange(x0, x1, dtype=np.float64)[None, :]
        u = ((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)) / radius
        v = (-(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)) / radius
        if kind == 0:  # blob: a disc whose boundary is bent by smooth noise
            inside = (1.0 - np.hypot(u, v)) + 0.25 * field[rows, cols] > 0.0
            shading = 0.8 + 0.2 * np.clip(1.0 - np.hypot(u, v), 0, 1)
        elif kind == 1:  # rotated rectangle, lit by a linear gradient
            aspect = rng.uniform(0.3, 1.0)
            inside = (np.abs(u) < 1.0) & (np.abs(v) < aspect)
            shading = 1.0 - 0.25 * (u + 1.0) / 2.0 * rng.uniform(0, 1)
        else:  # ellipse shaded as a lit sphere
            aspect = rng.uniform(0.5, 1.0)
            r2 = u ** 2 + (v / aspect) ** 2
            inside = r2 < 1.0
            lu, lv = rng.uniform(-0.5, 0.5, size=2)
            r2_lit = (u - lu) ** 2 + (v / aspect - lv) ** 2
            shading = 0.45 + 0.55 * np.sqrt(np.clip(1.0 - r2_lit / 2.0, 0, 1))
        inst[rows, cols][inside] = k
        shade[rows, cols][inside] = shading[inside]
    return inst, shade


def synthetic_scene(height: int, width: int, bands: int = 28, seed: Seed = 0,
                    n_classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic natural-looking scene.

    Returns ``cube`` (L, H, W) float32 in [0, 1] (max in [0.75, 1]) and ``labels`` (H, W) int64, the index of
    each pixel's material in ``MATERIAL_NAMES``. ``n_classes`` materials (background included) are drawn
    without replacement from the library; ``seed`` is an int or a sequence of ints.
    """
    if not 1 <= n_classes <= len(MATERIAL_NAMES):
        raise ValueError(f"n_classes must be in 1..{len(MATERIAL_NAMES)}, got {n_classes}")
    if height < 1 or width < 1 or bands < 1:
        raise ValueError(f"invalid scene size (bands, height, width) = ({bands}, {height}, {width})")
    rng = np.random.default_rng(seed)
    wl = wavelengths(bands)
    classes = rng.choice(len(MATERIAL_NAMES), size=n_classes, replace=False)

    smooth = [fractal_noise(rng, height, width, 3.6) for _ in range(2)]
    n_shapes = int(rng.integers(2 * n_classes, 3 * n_classes + 3))
    inst, shade = _paint_shapes(rng, height, width, n_shapes, smooth)

    # Instance 0 is the background (class 0 of the scene); the first shapes cycle through the other classes.
    others = classes[1:] if n_classes > 1 else classes
    inst_class = np.concatenate([[classes[0]], [others[k % len(others)] for k in range(n_shapes)]])
    inst_spectra = np.stack([
        material_spectrum(MATERIAL_NAMES[c], wl, rng.normal(0.0, 6.0), rng.uniform(0.8, 1.1)) for c in inst_class])
    inst_texture = rng.uniform(0.03, 0.25, size=n_shapes + 1)
    inst_saturation = rng.uniform(0.0, 0.3, size=n_shapes + 1)

    fine = fractal_noise(rng, height, width, 1.6)
    medium = fractal_noise(rng, height, width, 2.4)
    texture = np.exp(inst_texture[inst] * (0.4 * fine + 0.9 * medium))
    illum_field = 0.65 + 0.35 * (0.5 + 0.5 * np.tanh(0.8 * smooth[0] + rng.normal(0, 0.5)))
    illuminant = 1.0 + rng.uniform(-0.25, 0.25) * (wl - 550.0) / 100.0

    # Per pixel: its instance's spectrum, saturation-stretched about its mean, floored, times the gain and the
    # illuminant; built band-major (L, H, W) in place (the same values as pixel-major, with fewer temporaries).
    mean = inst_spectra.mean(axis=-1)[inst]
    cube = np.take(inst_spectra.T, inst, axis=1)                  # (L, H, W)
    cube -= mean
    cube *= 1.0 + inst_saturation[inst] * np.tanh(medium)
    cube += mean
    np.maximum(cube, 0.005, out=cube)
    cube *= texture * shade * illum_field
    cube *= illuminant[:, None, None]
    cube *= rng.uniform(0.75, 1.0) / cube.max()
    labels = inst_class[inst].astype(np.int64)
    return cube.astype(np.float32), labels


def synthetic_dataset(n: int, height: int, width: int, bands: int = 28, seed: int = 0,
                      n_classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scenes: cubes (n, L, H, W) float32 and labels (n, H, W) int64; scene i uses seed (seed, i)."""
    scenes = [synthetic_scene(height, width, bands, (seed, i), n_classes) for i in range(n)]
    return np.stack([c for c, _ in scenes]), np.stack([lab for _, lab in scenes])
