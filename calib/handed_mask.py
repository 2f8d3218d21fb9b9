"""The handed mask read blind before calibration: is it a binary code resampled at one sub-pixel phase?

A sharp binary code B handed over shifted by a fraction of a pixel with bilinear interpolation (the
convention of :func:`cassi.warp.warp_mask`) is blurred by a 2-tap filter per axis; the calibration model
reads it bilinearly a second time and its sub-pixel estimate is pulled towards whole-pixel shifts (README,
"Forward-model selection (issue 12 §1)"). :func:`read_handed_mask` tests whether the handed mask (H, W)
equals, to its float or 8-bit quantisation (:data:`TOLERANCE` of its maximum), with the rows and columns
outside its support left out,

    handed = warp_mask(B, dx=-fx, dy=-fy),  B in {lo, max}^(H, W),  (fy, fx) in [-1/2, 1/2)^2 not (0, 0),

i.e. handed(o) = B(o + (fy, fx)) read bilinearly: a 2-tap filter per axis. The phase
comes from the grey levels (at most 16 sums of the four weights; they fix (fy, fx) up to the mirror and
swap symmetries, each tried); B from two Viterbi passes with the binary constraint (down each column for
the x-filtered code, whose alphabet is {0, 1 - fx, fx, 1}, then along each row for B); the phase is then
refitted by least squares on the decoded B, and the answer is "detected" only when ``warp_mask`` of B
reproduces the handed mask (lo: the minimum over the support, 0 or a transmission floor). A rotated warp has no single phase and is not detected, nor is a grey mask (a
captured mask such as the KAIST or TSA masks: thousands of levels) nor a sharp binary one.

When detected the calibration reads B (sharp: the bilinear reading is exact for it) and the estimate is
composed back into the handed mask's frame: the model's mask is warp(B, xi_B) and B(p) = handed(p - f),
so xi = xi_B + (fx, fy) in (dx, dy), theta, a1, alpha unchanged (:meth:`HandedMask.to_handed_frame`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from calib.forward_model import PARAMETER_NAMES
from calib.ranges import Ranges
from calib.result import CalibrationResult, StageRecord
from cassi.mismatch import Mismatch
from cassi.warp import warp_mask

TOLERANCE = 0.003        # of the mask's maximum: above 8-bit quantisation (0.5/255) and float rounding
MAX_LEVELS = 16          # grey levels of a binary code resampled by one 2x2 bilinear kernel
PHASE_GRID = 0.0025      # grid step (px) of the phase search over the grey levels
PHASE_STARTS = 3         # best separated grid points tried, each with its 8 mirror / swap images
REFITS = 6               # decode / least-squares phase rounds at most


@dataclass
class HandedMask:
    """What :func:`read_handed_mask` found. ``code``: B (H, W), float32, the handed mask's minimum or maximum
    over its support, 0 outside it (None when not detected); ``phase`` (fy, fx) px in [-1/2, 1/2) with handed = warp_mask(code, -fx, -fy)
    (the code's frame is the one nearest the handed mask's); ``residual``: max |warp_mask(code, -fx, -fy) -
    handed| / max over the support less the array's outer rows and columns (None when nothing was decoded)."""

    detected: bool
    reason: str
    code: Tensor | None = None
    phase: tuple[float, float] = (0.0, 0.0)
    residual: float | None = None
    kernel: str = "bilinear"
    unshift: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """For ``calibration.json`` → ``settings.handed_mask`` (``unshift``: the record of
        :func:`calib.unshift.try_unshift` when it ran)."""
        out = {"detected": self.detected, "kernel": self.kernel if self.detected else None,
               "phase": {"fy": self.phase[0], "fx": self.phase[1]} if self.detected else None,
               "residual": self.residual, "tolerance": TOLERANCE, "reason": self.reason}
        return out if self.unshift is None else {**out, "unshift": self.unshift}

    def with_unshift(self, other: "HandedMask") -> "HandedMask":
        """This reading with the un-shifting record of ``other`` (and its code and phase when it was kept)."""
        return other if other.detected else replace(self, unshift=other.unshift)

    def into_code_frame(self, value: Any) -> Any:
        """Points (dicts of the five parameters, in stage records, dicts and lists) given for the handed mask
        moved into the code's frame (dx - fx, dy - fy)."""
        return _moved(value, self._shift(-1.0))

    def code_ranges(self, ranges: Ranges) -> Ranges:
        """The search ``ranges`` (given for the handed mask) in the code's frame."""
        if not self.detected:
            return ranges
        shift = self._shift(-1.0)
        return Ranges.from_dict({k: [v + shift.get(k, 0.0) for v in lo_hi] for k, lo_hi in ranges.to_dict().items()})

    def _shift(self, sign: float) -> dict[str, float]:
        """(dx, dy) from the code's frame into the handed mask's (``sign`` 1) or back (-1): sign (fx, fy)."""
        return {"dx": sign * self.phase[1], "dy": sign * self.phase[0]}

    def to_handed_frame(self, result: CalibrationResult) -> CalibrationResult:
        """``result`` of a calibration with the code, its points (estimate, stage bests, search evaluations,
        landscape slices, model-selection estimates) moved into the handed mask's frame (dx + fx, dy + fy),
        ``settings.handed_mask`` recorded and ``code`` kept for operator.npz."""
        settings = {**result.settings, "handed_mask": self.record()}
        if not self.detected:
            return replace(result, settings=settings)
        shift = self._shift(1.0)
        settings["ranges"] = {k: [v + shift.get(k, 0.0) for v in lo_hi] for k, lo_hi in settings["ranges"].items()}
        landscape = {name: {**s, "values": [v + shift[name] for v in s["values"]]} if name in shift else s
                     for name, s in result.landscape.items()}
        history = _moved(result.history, shift)
        estimate = Mismatch.from_dict(_moved(result.estimate.to_dict(), shift))
        return replace(result, estimate=estimate, history=history, landscape=landscape,
                       evaluations=_moved(result.evaluations, shift), settings=_moved(settings, shift),
                       code=self.code)


def _moved(value: Any, shift: dict[str, float]) -> Any:
    """``value`` with every point (a dict holding the five parameters as numbers) shifted by ``shift``."""
    if isinstance(value, StageRecord):
        return replace(value, best=_moved(value.best, shift), trace=_moved(value.trace, shift))
    if isinstance(value, dict):
        if set(PARAMETER_NAMES) <= set(value) and all(isinstance(value[n], (int, float)) for n in PARAMETER_NAMES):
            return {k: v + shift.get(k, 0.0) for k, v in value.items()}
        return {k: _moved(v, shift) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, shift) for v in value]
    return value


def model_frame(result: CalibrationResult, mask: Tensor) -> tuple[Tensor, Mismatch]:
    """The mask and mismatch the calibrated forward model reads: the recovered code and the estimate in
    its frame when the handed ``mask`` was read as a resampled code, else ``mask`` and the estimate."""
    if result.code is None:
        return mask, result.estimate
    phase = result.settings["handed_mask"]["phase"]
    est = result.estimate.to_dict()
    return result.code, Mismatch.from_dict({**est, "dx": est["dx"] - phase["fx"], "dy": est["dy"] - phase["fy"]})


def read_handed_mask(mask: Tensor) -> HandedMask:
    """Test whether ``mask`` (H, W) is a binary code resampled bilinearly at one sub-pixel phase (module
    docstring); the code and the phase when it is."""
    m = torch.as_tensor(mask).detach().to("cpu", torch.float64).numpy()
    top = float(m.max())
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if top <= 0 or len(rows) < 3 or len(cols) < 3:
        return HandedMask(False, "too small or empty to test")
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    low = float(m[r0:r1 + 1, c0:c1 + 1].min())           # the code's closed value (0, or a transmission floor)
    if low >= top * (1 - TOLERANCE):
        return HandedMask(False, "a uniform mask (one level)")
    v = (m[r0:r1 + 1, c0:c1 + 1] - low) / (top - low)
    if np.all(np.minimum(v, np.abs(1 - v)) <= TOLERANCE):
        return HandedMask(False, "a sharp binary mask (two levels)")
    levels = _levels(v)
    if levels is None or len(levels) > MAX_LEVELS:
        return HandedMask(False, f"{'a continuum of' if levels is None else len(levels)} grey levels: not a binary "
                                 f"code resampled by one bilinear kernel (at most {MAX_LEVELS} levels)")
    best = None
    for phase in _phase_candidates(levels):
        decoded = _decode_and_refit(v, phase)
        if decoded is not None and (best is None or decoded[2] < best[2]):
            best = decoded
        if best is not None and best[2] <= TOLERANCE:
            break
    if best is None or best[2] > TOLERANCE:
        residual = None if best is None else best[2]
        return HandedMask(False, "no sub-pixel phase reproduces it from a binary code"
                          + ("" if residual is None else f" (best residual {residual:.2g} of its maximum)"),
                          residual=residual)
    code_box, phase, _ = best
    h, w = m.shape
    code = np.zeros((h + 1, w + 1))
    code[r0:r0 + code_box.shape[0], c0:c0 + code_box.shape[1]] = low + code_box * (top - low)
    code, phase = nearest_frame(code, *phase)
    residual = _verify(m, code, phase, (r0, r1, c0, c1)) / top
    if residual > TOLERANCE:
        return HandedMask(False, f"warp_mask of the decoded code does not reproduce it (residual {residual:.2g})",
                          residual=residual)
    return HandedMask(True, "a binary code resampled bilinearly at one sub-pixel phase",
                      torch.from_numpy(code).float(), phase, residual)


def nearest_frame(code: np.ndarray, fy: float, fx: float) -> tuple[np.ndarray, tuple[float, float]]:
    """The (H, W) window of ``code`` (H + 1, W + 1), whose bilinear resampling at (fy, fx) in [0, 1)^2 is the
    (H, W) handed mask, in the frame nearest the handed mask's, and the phase there, in [-1/2, 1/2)^2: per
    axis the first row dropped and the phase less one for f >= 1/2, else the last row (past the array's edge)."""
    rows = slice(1, None) if fy >= 0.5 else slice(None, -1)
    cols = slice(1, None) if fx >= 0.5 else slice(None, -1)
    return np.ascontiguousarray(code[rows, cols]), (fy - 1 if fy >= 0.5 else fy, fx - 1 if fx >= 0.5 else fx)


def _levels(v: np.ndarray) -> np.ndarray | None:
    """The distinct values of ``v``, those closer than :data:`TOLERANCE` merged (cluster means); None when
    a cluster spans more than twice that (a continuum of grey levels, e.g. a captured mask)."""
    values = np.unique(v)
    groups = np.split(values, np.flatnonzero(np.diff(values) > TOLERANCE) + 1)
    if any(g[-1] - g[0] > 2 * TOLERANCE for g in groups):
        return None
    return np.array([g.mean() for g in groups])


def _weights(fy: np.ndarray, fx: np.ndarray) -> list[np.ndarray]:
    """The four bilinear weights w00, w01, w10, w11 (rows i, columns j)."""
    return [(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]


def _phase_candidates(levels: np.ndarray) -> list[tuple[float, float]]:
    """Phases whose 16 subset sums of the weights come closest to every level (worst level's distance),
    searched on a grid of 0 <= fx <= fy <= 1/2 (the level set is symmetric under f -> 1 - f per axis and
    under the swap of the axes): the :data:`PHASE_STARTS` best separated grid points and their images."""
    grid = np.arange(0, 0.5 + PHASE_GRID / 2, PHASE_GRID)
    fy, fx = np.meshgrid(grid, grid, indexing="ij")
    weights = _weights(fy, fx)
    sums = np.stack([sum(w for w, on in zip(weights, subset) if on) + 0 * fy
                     for subset in itertools.product((0, 1), repeat=4)])               # (16, G, G)
    cost = np.zeros_like(fy)
    for level in levels:
        cost = np.maximum(cost, np.abs(sums - level).min(axis=0))
    cost[fx > fy] = np.inf
    starts = []
    for index in np.argsort(cost, axis=None):
        point = (fy.flat[index], fx.flat[index])
        if all(max(abs(point[0] - p[0]), abs(point[1] - p[1])) > 4 * PHASE_GRID for p in starts):
            starts.append(point)
        if len(starts) == PHASE_STARTS:
            break
    images = set()
    for a, b in starts:
        for p, q in ((a, b), (b, a)):
            for y, x in itertools.product((p, 1 - p), (q, 1 - q)):
                images.add((round(y % 1.0, 6), round(x % 1.0, 6)))
    return sorted(images)


def _decode_and_refit(v: np.ndarray, phase: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float], float] | None:
    """Decode B ((R+1, C+1), 0/1) from ``v`` (R, C) at ``phase`` and refit the phase on it by least squares,
    until the phase settles (:data:`REFITS` rounds at most); returns (B, phase, max residual) or None when a
    refit leaves [0, 1)."""
    for _ in range(REFITS):
        code = _decode(v, *phase)
        columns = [code[i:i + v.shape[0], j:j + v.shape[1]].ravel() for i in (0, 1) for j in (0, 1)]
        w = np.linalg.lstsq(np.stack(columns, axis=1), v.ravel(), rcond=None)[0]
        w = w / w.sum() if w.sum() > 0 else w
        refit = (float(w[2] + w[3]), float(w[1] + w[3]))
        if not all(-TOLERANCE <= f < 1 for f in refit):
            return None
        refit = tuple(0.0 if f < TOLERANCE / 2 else f for f in refit)
        settled = max(abs(a - b) for a, b in zip(refit, phase)) < 1e-9
        phase = refit
        if settled:
            break
    code = _decode(v, *phase)
    if phase[0] == 0.0:
        code[-1] = 0                                          # rows / columns no weight reaches stay dark
    if phase[1] == 0.0:
        code[:, -1] = 0
    return code, phase, float(np.abs(_resample(code, *phase) - v).max())


def _resample(code: np.ndarray, fy: float, fx: float) -> np.ndarray:
    """sum_ij wy_i wx_j code[r + i, c + j]: (R+1, C+1) -> (R, C)."""
    rows = (1 - fy) * code[:-1] + fy * code[1:]
    return (1 - fx) * rows[:, :-1] + fx * rows[:, 1:]


def _decode(v: np.ndarray, fy: float, fx: float) -> np.ndarray:
    """The binary B ((R+1, C+1)) whose resampling at (fy, fx) is nearest to ``v`` (R, C): down each column
    the x-filtered code G (R+1, C) over its alphabet, then along each row B from G."""
    alphabet = np.unique([0.0, fx, 1 - fx, 1.0])
    g = alphabet[_viterbi(v.T, 1 - fy, fy, alphabet)].T
    binary = np.array([0.0, 1.0])
    return binary[_viterbi(g, 1 - fx, fx, binary)]


def _viterbi(obs: np.ndarray, w0: float, w1: float, symbols: np.ndarray) -> np.ndarray:
    """For each row of ``obs`` (S, T): the states s (S, T+1), indices into ``symbols``, minimising
    sum_t (obs[t] - w0 symbols[s_t] - w1 symbols[s_t+1])^2 (no constraint at either end)."""
    pair = w0 * symbols[:, None] + w1 * symbols[None, :]
    count, steps = obs.shape
    cost = np.zeros((count, len(symbols)))
    back = np.empty((steps, count, len(symbols)), dtype=np.int64)
    for t in range(steps):
        total = cost[:, :, None] + (obs[:, t, None, None] - pair) ** 2
        back[t] = total.argmin(axis=1)
        cost = total.min(axis=1)
    states = np.empty((count, steps + 1), dtype=np.int64)
    states[:, -1] = cost.argmin(axis=1)
    index = np.arange(count)
    for t in range(steps - 1, -1, -1):
        states[:, t] = back[t][index, states[:, t + 1]]
    return states


def _verify(handed: np.ndarray, code: np.ndarray, phase: tuple[float, float], box: tuple[int, int, int, int]) -> float:
    """max |warp_mask(code, -fx, -fy) - handed| over the support ``box`` less the array's outer rows and
    columns (where the resampling may read past the array)."""
    again = warp_mask(torch.from_numpy(code), -phase[1], -phase[0]).numpy()
    r0, r1, c0, c1 = box
    h, w = handed.shape
    r0, r1, c0, c1 = max(r0, 1), min(r1, h - 2), max(c0, 1), min(c1, w - 2)
    return float(np.abs(again - handed)[r0:r1 + 1, c0:c1 + 1].max())
