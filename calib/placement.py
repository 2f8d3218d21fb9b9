"""The calibration forward model's placement sums, on any device: numba on CPU, torch ops elsewhere.

A placement ``p`` moves band ``band[p]`` times its effective mask ``masks[:, p]`` by the integer
detector shift (``row[p]``, ``col[p]``); rows stay inside the window of height h, columns inside the
measurement width Wm, and whatever falls outside is dropped. :func:`place` is the forward sum,
:func:`pick` its adjoint and :func:`mask_products` the gradient with respect to the masks. The
output has as many entries B as the largest input; an input with B / g entries is shared by g
consecutive output entries (a batch of 1 broadcasts; the held-out score solves its two folds of a
candidate as neighbouring entries that share the candidate's masks).

Backends: ``"numba"`` (:mod:`calib.kernels`, fused CPU loops, the default on CPU) and ``"torch"``
(gathers and ``index_add_`` over precomputed destination indices: any device, the default off CPU).
Both compute the same sums; ``tests/test_calib_forward_model.py`` holds them to each other.
The environment variable ``CASSI_PLACEMENT_BACKEND=torch`` makes the torch ops the default on the CPU
too: the whole calibration then runs the code a GPU runs (its tests and benchmarks on machines
without one, ``tests/test_calib_devices.py``).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

BACKENDS = ("numba", "torch")
BACKEND_VARIABLE = "CASSI_PLACEMENT_BACKEND"   # "torch": the torch ops on the CPU too (module docstring)


def default_backend(device: torch.device | str) -> str:
    """``"numba"`` on CPU (``"torch"`` when the environment sets ``CASSI_PLACEMENT_BACKEND=torch``),
    ``"torch"`` on any other device."""
    if torch.device(device).type != "cpu":
        return "torch"
    chosen = os.environ.get(BACKEND_VARIABLE, "") or "numba"
    if chosen not in BACKENDS:
        raise ValueError(f"environment variable {BACKEND_VARIABLE}={chosen!r}: expected one of {BACKENDS}")
    return chosen


def check_backend(backend: str, device: torch.device | str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"placement backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numba" and torch.device(device).type != "cpu":
        raise ValueError(f"the numba placement kernels run on CPU tensors only, got device {device}; "
                         "use backend='torch'")
    return backend


class PlacementIndex:
    """The (band, row shift, col shift) of every placement: int64 arrays for the numba kernels, and
    per-device destination maps for the torch backend (built on first use)."""

    def __init__(self, band: list[int], row: list[int], col: list[int]) -> None:
        self.band, self.row, self.col = (np.asarray(v, dtype=np.int64) for v in (band, row, col))
        self._maps: dict[tuple, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.band)

    def destinations(self, height: int, width: int, measurement_width: int, device: torch.device
                     ) -> tuple[Tensor, Tensor]:
        """(flat detector index (P * h * W,) of every source pixel of every placement, with
        ``h * Wm`` for pixels that fall off the detector; band (P,)), on ``device``."""
        key = (height, width, measurement_width, str(device))
        if key not in self._maps:
            rows = torch.arange(height).view(1, -1, 1) + torch.from_numpy(self.row).view(-1, 1, 1)
            cols = torch.arange(width).view(1, 1, -1) + torch.from_numpy(self.col).view(-1, 1, 1)
            inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < measurement_width)
            flat = torch.where(inside, rows * measurement_width + cols, height * measurement_width)
            self._maps[key] = (flat.reshape(-1).to(device), torch.from_numpy(self.band).to(device))
        return self._maps[key]


def batch_size(*tensors: Tensor) -> int:
    """Entries B of the output: the largest input batch, which every input batch must divide."""
    b = max(t.shape[0] for t in tensors)
    if any(t.shape[0] == 0 or b % t.shape[0] for t in tensors):
        raise ValueError(f"batch sizes {[t.shape[0] for t in tensors]} do not divide {b}")
    return b


def _grouped(t: Tensor, b: int) -> Tensor:
    """``t`` (B / g, ...) with every entry repeated for its g consecutive output entries: (B, ...)."""
    return t if t.shape[0] == b else t.repeat_interleave(b // t.shape[0], 0)


def _with_dropped_pixel(y: Tensor) -> Tensor:
    """(B, h * Wm + 1): the detector flattened, plus one zero where dropped light goes."""
    return torch.cat([y.reshape(y.shape[0], -1), y.new_zeros(y.shape[0], 1)], 1)


def _place_torch(x: Tensor, masks: Tensor, index: PlacementIndex, width: int) -> Tensor:
    b, h, w = batch_size(x, masks), x.shape[-2], x.shape[-1]
    flat, band = index.destinations(h, w, width, x.device)
    products = (_grouped(x, b)[:, band] * _grouped(masks, b)).reshape(b, -1)
    y = x.new_zeros(b, h * width + 1).index_add_(1, flat, products)
    return y[:, :-1].view(b, h, width)


def _gathered(y: Tensor, index: PlacementIndex, width: int) -> Tensor:
    """(B, P, h, width): the detector value each source pixel of each placement lands on (0 off it)."""
    h = y.shape[-2]
    flat, _ = index.destinations(h, width, y.shape[-1], y.device)
    return _with_dropped_pixel(y)[:, flat].view(y.shape[0], len(index), h, width)


def _pick_torch(y: Tensor, masks: Tensor, index: PlacementIndex, bands: int, width: int) -> Tensor:
    b = batch_size(y, masks)
    _, band = index.destinations(y.shape[-2], width, y.shape[-1], y.device)
    products = _grouped(_gathered(y, index, width), b) * _grouped(masks, b)
    x = y.new_zeros(b, bands, y.shape[-2], width)
    return x.index_add_(1, band, products)


def _mask_products_torch(cube: Tensor, canvas: Tensor, index: PlacementIndex, width: int) -> Tensor:
    b = batch_size(cube, canvas)
    _, band = index.destinations(cube.shape[-2], width, canvas.shape[-1], cube.device)
    return _grouped(_gathered(canvas, index, width), b) * _grouped(cube, b)[:, band]


def place(x: Tensor, masks: Tensor, index: PlacementIndex, width: int, backend: str = "numba") -> Tensor:
    """``y = sum_p place(x[:, band_p] * masks[:, p])``: (B, h, width) from x (B or 1, L, h, W) and
    masks (B or 1, P, h, W)."""
    if backend == "torch":
        return _place_torch(x, masks, index, width)
    from calib import kernels
    return kernels.place(x, masks, index, width)


def pick(y: Tensor, masks: Tensor, index: PlacementIndex, bands: int, width: int, backend: str = "numba") -> Tensor:
    """Adjoint of :func:`place`: (B, L, h, width) from y (B or 1, h, Wm) and masks (B or 1, P, h, W)."""
    if backend == "torch":
        return _pick_torch(y, masks, index, bands, width)
    from calib import kernels
    return kernels.pick(y, masks, index, bands, width)


def mask_products(cube: Tensor, canvas: Tensor, index: PlacementIndex, width: int, backend: str = "numba") -> Tensor:
    """``grad[b, p] = cube[b, band_p] * canvas[b]`` moved back by placement p's shift (0 where p
    falls off the detector): (B, P, h, width), the gradient of ``<canvas, place(cube, masks)>``
    with respect to the masks."""
    if backend == "torch":
        return _mask_products_torch(cube, canvas, index, width)
    from calib import kernels
    return kernels.mask_products(cube, canvas, index, width)
