"""The calibrated instrument as an operator every consumer can use: the calibration forward model
(:class:`calib.forward_model.EnlargedGridOperator`, N x K enlarged grid) of one instrument behind the
:class:`cassi.CassiOperator` interface, and the operator file that records it.

GAP-TV, HSRA-DUM and the data step of any unfolding network only need ``A`` and ``A^T``; those are
the enlarged-grid model's own (exact). The networks' other inputs are defined from the same model so
that with N = K = 1 every one of them equals the native operator's (tested):

* ``phi[c]`` (detector plane, (1, L, H, W + step*(L-1))): ``A`` applied to a uniform unit image in
  band c, i.e. the detector image of band c's light through the code. For the native operator this is
  the toolbox's shifted mask ``Phi_c``. Kept unnormalised, so ``sum_c phi_c * x_c`` (shifted) is the
  model's measurement of a locally flat scene -- what networks that rebuild ``A`` from ``Phi``
  (CRSDUN's data step) assume.
* ``mask3d[c]`` (scene plane, (1, L, H, W)): band c's effective mask ``sum_T G_{c,T}`` (how much of
  scene pixel q in band c reaches the detector, summed over the integer placements T of the model's
  docstring), divided by the band's throughput ``s_c`` (the same sum for an open, unwarped aperture).
  Dividing keeps the code and drops a spectral weight that is not part of it: the enlarged grid gives
  the first and last band half the light of the others (their fine bands cover half a band interval).
  Interior bands see the warped mask blurred by the within-band dispersion; N = K = 1 gives the warped
  mask itself for every band.
* ``back_project(y)[c]`` (the toolbox's ``shift_back``, input "H"): the detector read at band c's
  landing positions with the model's weights for an open aperture, divided by ``s_c`` -- a weighted
  average over the ~2-3 px that band c's light spreads over. N = K = 1 gives the bilinear read-out of
  the native operator (``shift_back`` when nominal).

Devices: the models live on the mask's device and follow it (``op.to(device)`` rebuilds them there on
first use); the placement sums run as numba kernels on the CPU and as torch ops elsewhere
(:mod:`calib.placement`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from calib.forward_model import EnlargedGridOperator, params_tensor
from cassi.errors import UserError
from cassi.mismatch import Mismatch
from cassi.operator import CassiOperator
from cassi.operator_file import OperatorRecord, read_operator_file


class InstrumentOperator(CassiOperator):
    """The N x K enlarged-grid model of one instrument (mask, mismatch) as a :class:`cassi.CassiOperator`.

    Args:
        mask: nominal coded mask (H, W), or one per sample (B, H, W) (each gets its own model).
        bands, step: band count L and nominal dispersion (px per band).
        mismatch: dx, dy (px), theta (deg), a1 (px/band), alpha (deg); None is nominal. Fixed (no gradient).
        spatial, spectral: the model's oversampling N and K.
        interpolation: how the model reads the mask between pixels
            (:data:`calib.forward_model.MASK_INTERPOLATIONS`; "cubic" on the native grid, N = 1, only).

    ``forward`` (B, L, H, W) -> (B, H, W + step*(L-1)) and ``adjoint`` back are exact adjoints;
    ``phi``, ``mask3d``, ``back_project`` as in the module docstring. Tensors on the mask's device
    (which ``.to(device)`` moves; the models follow on first use).
    """

    def __init__(self, mask: Tensor, bands: int = 28, step: int = 2, mismatch: Mismatch | None = None,
                 spatial: int = 4, spectral: int = 2, interpolation: str = "linear") -> None:
        super().__init__(mask, bands, step, mismatch)
        if self.mismatch.requires_grad():
            raise ValueError("InstrumentOperator holds a fixed instrument: its mismatch cannot require grad")
        self.spatial, self.spectral, self.interpolation = int(spatial), int(spectral), interpolation
        self._cache: dict[str, object] = {"models": self._build_models()}   # now: bad input fails here
        self._cache_device = self.mask.device

    @property
    def oversample(self) -> tuple[int, int]:
        return self.spatial, self.spectral

    @property
    def mask_interpolation(self) -> str:
        return self.interpolation

    def _cached(self, name: str, build):
        """``build()``, once per device of the mask: after ``.to(device)`` has moved the mask, the models
        and the planes derived from them are built again there."""
        if self._cache_device != self.mask.device:
            self._cache, self._cache_device = {}, self.mask.device
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    @property
    def models(self) -> list[EnlargedGridOperator]:
        """One enlarged-grid model per mask, on the mask's device."""
        return self._cached("models", self._build_models)

    def _build_models(self) -> list[EnlargedGridOperator]:
        params = params_tensor(self.mismatch)
        return [EnlargedGridOperator(m, params, self.bands, self.step, self.spatial, self.spectral,
                                     interpolation=self.interpolation) for m in self.mask]

    def _per_sample(self, fn, batch: Tensor) -> Tensor:
        if len(self.models) == 1:
            return fn(self.models[0], batch)
        return torch.cat([fn(m, batch[i:i + 1]) for i, m in enumerate(self.models)])

    def forward(self, x: Tensor) -> Tensor:
        """Measurement (B, H, W + step*(L-1)) of the cube ``x`` (B, L, H, W)."""
        self._check_cube(x)
        return self._per_sample(lambda m, v: m(v), x)

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y`` (B, L, H, W) of a measurement (B, H, W + step*(L-1))."""
        self.check_measurement(y)
        return self._per_sample(lambda m, v: m.adjoint(v), y)

    @property
    def readout(self) -> EnlargedGridOperator:
        """The model of an open, unwarped aperture (the read-out of :meth:`back_project`; built on first
        use: A and A^T do not need it)."""
        params = params_tensor(self.mismatch)
        params[:, :3] = 0                                         # the read-out has no mask, hence no warp
        return self._cached("readout", lambda: EnlargedGridOperator(
            torch.ones_like(self.mask[0]), params, self.bands, self.step, self.spatial, self.spectral))

    @property
    def throughput(self) -> Tensor:
        """``s_c``: the model's weight of band c for an open aperture, (L,) (about 1; half at the end bands)."""
        return self._cached("throughput", lambda: _band_sums(self.readout).mean((-2, -1)).clamp_min(1e-12))

    def back_project(self, y: Tensor) -> Tensor:
        """Per-band read-out of the detector without the mask (B, L, H, W) (module docstring)."""
        self.check_measurement(y)
        return self.readout.adjoint(y) / self.throughput.to(y.dtype).view(1, -1, 1, 1)

    @property
    def mask3d(self) -> Tensor:
        """Per-band effective masks divided by the band throughput, (B or 1, L, H, W)."""
        return self._cached("mask3d", lambda: torch.stack([_band_sums(m) for m in self.models])
                            / self.throughput.view(1, -1, 1, 1))

    @property
    def phi(self) -> Tensor:
        """``A`` of a uniform unit image in each band, (B or 1, L, H, W + step*(L-1))."""
        return self._cached("phi", self._unit_images)

    def _unit_images(self) -> Tensor:
        unit = self.mask.new_zeros(1, self.bands, self.height, self.width)
        planes = []
        for c in range(self.bands):                              # one band at a time: L cubes would not fit
            unit[:, c] = 1
            planes.append(torch.cat([m(unit) for m in self.models]))
            unit[:, c] = 0
        return torch.stack(planes, 1)


def _band_sums(model: EnlargedGridOperator) -> Tensor:
    """``sum_T G_{c,T}`` over each band's placements: (L, H, W) of a single-instrument model."""
    masks = model.masks[0]
    band = torch.as_tensor(model.index.band, dtype=torch.long, device=masks.device)
    return masks.new_zeros(model.bands, *masks.shape[-2:]).index_add_(0, band, masks)


def instrument_operator(mask: Tensor, bands: int = 28, step: int = 2, mismatch: Mismatch | None = None,
                        oversample: tuple[int, int] = (1, 1), interpolation: str = "linear") -> CassiOperator:
    """The operator of a calibrated instrument: the native :class:`cassi.CassiOperator` for
    ``oversample == (1, 1)`` with the bilinear mask reading (the same model, faster), else an
    :class:`InstrumentOperator` (the native operator only reads the mask bilinearly)."""
    spatial, spectral = (int(v) for v in oversample)
    if (spatial, spectral) == (1, 1) and interpolation == "linear":
        return CassiOperator(mask, bands, step, mismatch)
    return InstrumentOperator(mask, bands, step, mismatch, spatial, spectral, interpolation)


def load_instrument(path: str | Path) -> CassiOperator:
    """The instrument of an operator file (``calibrate.py``'s operator.npz) through the forward model it
    records (N, K and the mask reading; files without them are native-grid, bilinear operators)."""
    return record_instrument(read_operator_file(path), path)


def record_instrument(record: OperatorRecord, path: str | Path) -> CassiOperator:
    """:func:`load_instrument` of an operator file already read (``record``; ``path`` names it in errors)."""
    if record.dispersion != "linear" and (record.oversample, record.mask_interpolation) != ((1, 1), "linear"):
        raise UserError(f"{path}: dispersion {record.dispersion!r} is only defined for the native operator "
                        "(N = K = 1, mask_interpolation 'linear')")
    try:
        if record.oversample == (1, 1) and record.mask_interpolation == "linear":
            return CassiOperator(record.mask, record.bands, record.step, record.mismatch,
                                 dispersion=record.dispersion)
        return InstrumentOperator(record.mask, record.bands, record.step, record.mismatch, *record.oversample,
                                  record.mask_interpolation)
    except ValueError as err:
        raise UserError(f"{path}: {err}") from err
