"""Figures of a calibration (matplotlib, Agg): score landscapes and the score per stage."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from calib.forward_model import PARAMETER_NAMES  # noqa: E402
from calib.result import SOLVER_STAGE, CalibrationResult  # noqa: E402
from cassi.files import save_figure  # noqa: E402
from cassi.mismatch import PARAMETER_UNITS  # noqa: E402


def _stage_points(result: CalibrationResult, prefix: str) -> list[dict]:
    return [e for e in result.evaluations if e["stage"].startswith(prefix)]


def cell_edges(values: list[float]) -> np.ndarray:
    """Edges of the cells centred on sorted grid ``values`` (half-way between neighbours; a lone value gets a
    cell of width 1), so that each cell of a heat map sits on the grid point it shows."""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = (v[1:] + v[:-1]) / 2
    return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])


def _heatmap(ax, entries: list[dict], x: str, y: str, title: str) -> None:
    """Best score over the other parameters on the (x, y) grid of a search stage (log10, relative), each cell
    centred on its grid point."""
    if not entries:
        ax.set_axis_off()
        return
    xs = sorted({round(e["point"][x], 6) for e in entries})
    ys = sorted({round(e["point"][y], 6) for e in entries})
    grid = np.full((len(ys), len(xs)), np.nan)
    for e in entries:
        i, j = ys.index(round(e["point"][y], 6)), xs.index(round(e["point"][x], 6))
        grid[i, j] = np.nanmin([grid[i, j], e["score"]])
    grid = np.log10(grid / np.nanmin(grid))
    mesh = ax.pcolormesh(cell_edges(xs), cell_edges(ys), grid, cmap="viridis")
    ax.set_xlabel(f"{x} ({PARAMETER_UNITS[x]})")
    ax.set_ylabel(f"{y} ({PARAMETER_UNITS[y]})")
    ax.set_title(title, fontsize=9)
    plt.colorbar(mesh, ax=ax, label="log10(score / min)")


def slice_curves(result: CalibrationResult) -> dict[str, dict]:
    """The landscape slices as plotted: per parameter, offsets from the estimate divided by the slice
    half-width (``scale``), the score's rise over its value at the estimate on the same slice (%, so
    0 at offset 0) and its standard error (%, the criterion's noise, :mod:`calib.status`)."""
    est = result.estimate.to_dict()
    curves = {}
    for name in PARAMETER_NAMES:
        s = result.landscape.get(name)
        if not s:
            continue
        offsets = np.array(s["values"]) - est[name]
        centre = int(np.argmin(np.abs(offsets)))
        scores = np.array(s["scores"])
        scale = float(np.abs(offsets).max()) or 1.0
        errors = np.array(s.get("standard_error", np.zeros_like(scores)))
        curves[name] = {"offset": offsets / scale, "rise": 100 * (scores / scores[centre] - 1),
                        "standard_error": 100 * errors, "scale": scale}
    return curves


def plot_landscape(result: CalibrationResult, path: str | Path) -> Path:
    """Search landscapes (stage maps) and 1-D slices through the estimate; writes a PNG."""
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    _heatmap(axes[0, 0], _stage_points(result, "1a"), "theta", "dy", "1a: dy-theta grid (dx, a1, alpha nominal)")
    ax = axes[0, 1]
    coarse = _stage_points(result, "1b")
    beams = sorted({(round(e["point"]["dy"], 4), round(e["point"]["theta"], 4)) for e in coarse})
    for dy, theta in beams:
        pts = sorted((e["point"]["dx"], e["score"]) for e in coarse
                     if (round(e["point"]["dy"], 4), round(e["point"]["theta"], 4)) == (dy, theta))
        ax.plot(*zip(*pts), marker="o", ms=3, label=f"dy={dy:g}, theta={theta:g}")
    ax.set_xlabel("dx (px)")
    ax.set_ylabel("held-out score")
    ax.set_title("1b: dx per beam", fontsize=9)
    if beams:
        ax.legend(fontsize=7)
    _heatmap(axes[0, 2], _stage_points(result, "1d"), "alpha", "a1", "1d: a1-alpha grid")
    est = result.estimate.to_dict()
    for k, (name, curve) in enumerate(slice_curves(result).items()):
        ax = axes[1, 0] if k < 3 else axes[1, 1]
        ax.errorbar(curve["offset"], curve["rise"], yerr=curve["standard_error"], marker="o", capsize=3,
                    label=f"{name} (+-{curve['scale']:.3g} {PARAMETER_UNITS[name]})")
    for ax in (axes[1, 0], axes[1, 1]):
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("offset from the estimate (slice half-width = 1)")
        ax.set_ylabel("score rise (%), bars: criterion noise")
        ax.legend(fontsize=7)
        ax.set_title("slices through the estimate (search setting)", fontsize=9)
    plot_stages(result, ax=axes[1, 2])
    fig.suptitle(f"calibration: {result.estimate.text()}  status: {result.status}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def stage_criteria(result: CalibrationResult) -> list[str]:
    """The criterion each point of :func:`plot_stages` is scored by: the nominal point, then every stage
    of ``result.history``. Scores of different criteria are not comparable."""
    solver = "solver criterion"
    nominal = solver if result.settings.get("solver", "heldout") != "heldout" else "held-out, refinement setting"
    labels = [nominal]
    for stage in result.history:
        if stage.name.endswith(SOLVER_STAGE):
            labels.append(solver)
        elif stage.name.startswith("2"):
            labels.append("held-out, refinement setting")
        else:
            labels.append("held-out, search setting")
    return labels


def plot_stages(result: CalibrationResult, path: str | Path | None = None, ax=None):
    """Blind score at the end of every stage, one series per criterion (search setting, refinement
    setting, the inner solver's), never joined across criteria; writes a PNG if ``path``."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4))
    names = ["nominal"] + [h.name for h in result.history]
    values = [result.nominal_score] + [h.score for h in result.history]
    criteria = stage_criteria(result)
    for criterion, marker in zip(dict.fromkeys(criteria), "os^"):
        points = [i for i, c in enumerate(criteria) if c == criterion]
        ax.plot(points, [values[i] for i in points], marker=marker, label=criterion)
    ax.set_xticks(range(len(values)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("blind score (its criterion)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("score per stage (compare within one series only)", fontsize=9)
    if own:
        fig.tight_layout()
        return _save(fig, path)
    return None


def _save(fig, path: str | Path) -> Path:
    try:
        return save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
