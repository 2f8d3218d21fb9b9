"""PNG previews: RGB renders of reconstruction and ground truth, the error map, spectral curves, class maps.

Used by evaluation (``eval.py``) and training (validation previews). Figures are built with
``matplotlib.figure.Figure`` (no pyplot state, no display needed) and written atomically. Cubes are (L, H, W)
reflectance-like values; simulated scenes are rendered with exposure 1 (a reflectance of 1 is white), real
captures with an automatic exposure shared by all panels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from cassi.files import save_figure
from data.io import voc_palette
from data.render import auto_exposure, cube_to_rgb, error_map
from data.synthetic import wavelengths

CURVE_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange")


def probe_points(cube: np.ndarray, count: int = 4) -> list[tuple[int, int]]:
    """(row, col) of ``count`` probes: the brightest pixels of the band-mean image (5 x 5 box-smoothed),
    each at least a sixth of the image size from the others and from the border."""
    height, width = cube.shape[1:]
    image = cube.mean(axis=0)
    padded = np.pad(image, 2, mode="edge")
    smooth = sum(padded[i:i + height, j:j + width] for i in range(5) for j in range(5)) / 25.0
    gap = max(min(height, width) // 6, 1)
    order = np.argsort(smooth, axis=None)[::-1]
    points: list[tuple[int, int]] = []
    for flat in order:
        row, col = divmod(int(flat), width)
        if min(row, col, height - 1 - row, width - 1 - col) < gap // 2:
            continue
        if all(max(abs(row - r), abs(col - c)) >= gap for r, c in points):
            points.append((row, col))
            if len(points) == count:
                break
    return points


def _spectrum(cube: np.ndarray, row: int, col: int) -> np.ndarray:
    """Mean spectrum of the 3 x 3 patch around (row, col)."""
    return cube[:, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2].mean(axis=(1, 2))


def probe_spectra(pred: np.ndarray, target: np.ndarray | None) -> list[tuple[int, int, np.ndarray | None, np.ndarray]]:
    """(row, col, truth spectrum or None, reconstructed spectrum) at the probes of the truth (else of ``pred``);
    spectra are 3 x 3 means, cubes (L, H, W)."""
    points = probe_points(pred if target is None else target)
    return [(row, col, None if target is None else _spectrum(target, row, col), _spectrum(pred, row, col))
            for row, col in points]


def shared_probe_spectra(cubes: list[np.ndarray]) -> list[tuple[int, int, list[np.ndarray]]]:
    """(row, col, [3 x 3 mean spectrum of each cube]) at the probes of the first cube, so that
    reconstructions of one capture (cubes (L, H, W)) are compared at the same pixels."""
    return [(row, col, [_spectrum(cube, row, col) for cube in cubes]) for row, col in probe_points(cubes[0])]


def _mark_probes(axis, points: list[tuple[int, int]]) -> None:
    for k, (row, col) in enumerate(points):
        axis.plot(col, row, "o", markersize=7, markerfacecolor="none", markeredgecolor=CURVE_COLOURS[k])
        axis.annotate(str(k + 1), (col, row), xytext=(5, 5), textcoords="offset points",
                      color=CURVE_COLOURS[k], fontsize=8)


def _heat_map(figure: Figure, axis, image: np.ndarray, title: str, top: float | None = None) -> None:
    """A non-negative map in the magma colour map (up to ``top``, default its maximum), with its colour bar."""
    shown = axis.imshow(image, cmap="magma", vmin=0.0, vmax=top)
    axis.set_title(title)
    figure.colorbar(shown, ax=axis, shrink=0.8)


def _save_panels(figure: Figure, axes, title: str, path: str | Path) -> Path:
    """Image panels without axes, the title, saved atomically."""
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(title)
    return save_figure(figure, path, dpi=100)


def save_comparison(path: str | Path, pred: Tensor, target: Tensor, title: str) -> Path:
    """Reconstruction | ground truth | per-pixel RMSE over bands, with the spectral probes marked."""
    pred_np, target_np = pred.detach().cpu().numpy(), target.detach().cpu().numpy()
    points = probe_points(target_np)
    figure = Figure(figsize=(11, 4), layout="constrained")
    axes = figure.subplots(1, 3)
    axes[0].imshow(cube_to_rgb(pred_np))
    axes[0].set_title("reconstruction")
    axes[1].imshow(cube_to_rgb(target_np))
    axes[1].set_title("ground truth")
    _mark_probes(axes[1], points)
    _heat_map(figure, axes[2], error_map(pred_np, target_np), "error (RMSE over bands)")
    return _save_panels(figure, axes, title, path)


def save_spectra(path: str | Path, pred: Tensor, target: Tensor | None, title: str) -> Path:
    """Spectra at the four probes: reconstruction (dashed) against ground truth (solid) when there is one."""
    pred_np = pred.detach().cpu().numpy()
    target_np = None if target is None else target.detach().cpu().numpy()
    curves = []
    for k, (_, _, truth, recon) in enumerate(probe_spectra(pred_np, target_np)):
        if truth is not None:
            curves.append((k, truth, "-", "truth"))
        curves.append((k, recon, "--", "recon."))
    return _save_spectra_figure(path, curves, title)


def save_real_spectra(path: str | Path, reconstructions: list[tuple[str, Tensor, Tensor]], title: str) -> Path:
    """Real capture: the spectra of every (label, reconstruction (L, H, W), residual) at the same four
    probes (those of the first reconstruction), one line style per reconstruction."""
    preds = [pred.detach().cpu().numpy() for _, pred, _ in reconstructions]
    curves = [(k, spectrum, style, label) for k, (_, _, spectra) in enumerate(shared_probe_spectra(preds))
              for (label, _, _), spectrum, style in zip(reconstructions, spectra, ("-", "--", ":", "-."))]
    return _save_spectra_figure(path, curves, title)


def _save_spectra_figure(path: str | Path, curves: list[tuple[int, np.ndarray, str, str]], title: str) -> Path:
    """Spectra against wavelength: each curve (probe index k, spectrum (L,), line style, label) in probe k's
    colour, labelled "k+1 label"."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axis = figure.subplots()
    for k, spectrum, style, label in curves:
        axis.plot(wavelengths(len(spectrum)), spectrum, style, color=CURVE_COLOURS[k], label=f"{k + 1} {label}")
    axis.set_xlabel("wavelength (nm)")
    axis.set_ylabel("intensity")
    axis.set_title(title)
    axis.legend(fontsize=7, ncol=2)
    return save_figure(figure, path, dpi=100)


def save_real(path: str | Path, measurement: Tensor, reconstructions: list[tuple[str, Tensor, Tensor]],
              title: str) -> Path:
    """Real capture: one row per (label, reconstruction (L, H, W), residual A x - y) -- the RGB render (one
    automatic exposure for all rows, the same probes marked on each, those of the first row) and |A x - y|
    (one colour scale for all rows) -- and the snapshot."""
    preds = [pred.detach().cpu().numpy() for _, pred, _ in reconstructions]
    residuals = [res.detach().cpu().abs().numpy() for _, _, res in reconstructions]
    exposure, points = auto_exposure(preds[0]), probe_points(preds[0])
    top = max(float(r.max()) for r in residuals)
    figure = Figure(figsize=(13, 4 * len(reconstructions)), layout="constrained")
    axes = figure.subplots(len(reconstructions), 3, squeeze=False,
                           width_ratios=[preds[0].shape[2], measurement.shape[-1], residuals[0].shape[-1]])
    for row, ((label, _, _), pred, residual) in enumerate(zip(reconstructions, preds, residuals)):
        axes[row, 0].imshow(cube_to_rgb(pred, exposure=exposure))
        axes[row, 0].set_title(f"{label}: reconstruction")
        _mark_probes(axes[row, 0], points)
        _heat_map(figure, axes[row, 2], residual, f"{label}: |A x - y|", top)
    axes[0, 1].imshow(measurement.detach().cpu().numpy(), cmap="gray")
    axes[0, 1].set_title("measurement")
    return _save_panels(figure, axes.flat, title, path)


def save_segmentation(path: str | Path, pred: np.ndarray, labels: np.ndarray, n_class: int, title: str) -> Path:
    """Predicted | true class maps (H, W) side by side in the PASCAL-VOC palette."""
    palette = voc_palette(n_class)
    figure = Figure(figsize=(7, 3.6), layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, classes, name in zip(axes, (pred, labels), ("predicted classes", "true classes")):
        axis.imshow(palette[np.clip(classes, 0, n_class - 1)])
        axis.set_title(name)
    return _save_panels(figure, axes, title, path)
