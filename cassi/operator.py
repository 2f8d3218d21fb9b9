"""The differentiable single-disperser CASSI operator (nominal or mismatched), batched.

``y = sum_c place_c(M' * x_c)``: every band of the cube ``x`` (B, L, H, W) is modulated by the
(warped) coded mask ``M'`` and moved by its dispersion offset onto the detector (B, H, W + step*(L-1)).
Nominal (no mismatch): band c moves ``step * c`` columns right and the operator is the toolbox's
``sum(shift(mask3d * x))``. Mismatched: ``M'`` = :func:`cassi.warp.warp_mask` of the mask by
(dx, dy, theta) and band c moves by :func:`cassi.mismatch.dispersion_offsets` -- fractional offsets
use bilinear weights (differentiable in a1 and alpha) or, with ``dispersion="integer"``, rounded
offsets with a straight-through gradient.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from cassi.mismatch import Mismatch, dispersion_offsets
from cassi.shifts import shift_back
from cassi.translate import Term, bilinear_terms, pick, place
from cassi.warp import warp_mask

# How a model reads the mask between its pixels. "linear": the enlarged grid's (pinned) and the native
# grid's default -- a sharp pixelated mask shifted by a fraction of a pixel covers each detector pixel
# with area weights, which are bilinear. "cubic" (Keys; native grid only, calib.forward_model): for a mask
# that is itself a resampled image (a capture, or a mask handed over warped), whose bilinear re-reading is
# blurred by a fraction-dependent amount and pulls a fit towards integer shifts (README "Forward-model
# selection"). This operator reads bilinearly.
MASK_INTERPOLATIONS = ("linear", "cubic")

InputKind = Literal["H", "HM", "Y"]
MaskKind = Literal["Phi", "Phi_PhiPhiT", "Mask"]


def _round_ste(value: Tensor) -> Tensor:
    """Round to the nearest integer; the gradient passes straight through."""
    return value + (torch.round(value) - value).detach()


def _check_floating(name: str, tensor: Tensor) -> None:
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype} (integer data would "
                         "overflow or truncate: convert it, e.g. x.float() / 255 for 8-bit values)")


def check_tensor(name: str, value: object, shape: str) -> None:
    """Raise a TypeError naming ``name`` and the ``shape`` expected unless ``value`` is a torch Tensor (for a numpy
    array: how to convert it)."""
    if not isinstance(value, Tensor):
        kind = type(value)
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {kind.__module__}.{kind.__qualname__}"
                        + (" (convert a numpy array with torch.from_numpy(a), axes in that order)"
                           if kind.__module__ == "numpy" else ""))


def mask_tensor(mask: Tensor | np.ndarray) -> Tensor:
    """A coded mask as a floating-point tensor: a tensor as it is, a numpy array converted (sharing its memory where
    it can); integer or boolean data as float32. :class:`CassiOperator` and :func:`cassi.simulator.simulate_measurement`
    both take their mask through it."""
    mask = mask if isinstance(mask, Tensor) else torch.as_tensor(mask)
    return mask if mask.is_floating_point() else mask.float()


def check_finite(name: str, tensor: Tensor) -> None:
    """Raise a ValueError naming ``name`` if ``tensor`` holds NaN or Inf."""
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or Inf values")


class CassiOperator(nn.Module):
    """A = dispersion o mask; ``forward`` maps (B, L, H, W) -> (B, H, W + step*(L-1)), ``adjoint`` back.

    Args:
        mask: coded aperture, a tensor or numpy array (H, W) or one per sample (B, H, W); values as given (not
            binarised).
        bands: number of spectral bands L.
        step: nominal dispersion in pixels per band (the toolbox's 2).
        mismatch: warp and dispersion parameters; ``None`` is the nominal instrument (a1 = step). A
            :class:`Mismatch` left without ``a1`` gets a1 = ``step`` (:meth:`Mismatch.for_step`).
        dispersion: ``"linear"`` (bilinear sub-pixel offsets) or ``"integer"`` (rounded, straight-through).
    """

    def __init__(self, mask: Tensor | np.ndarray, bands: int = 28, step: int = 2, mismatch: Mismatch | None = None,
                 dispersion: Literal["linear", "integer"] = "linear") -> None:
        super().__init__()
        mask = mask_tensor(mask)
        if mask.dim() not in (2, 3) or min(mask.shape[-2:]) < 1:
            raise ValueError(f"mask must be (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
        check_finite("mask", mask)
        if bands < 1 or step < 0:
            raise ValueError(f"need bands >= 1 and step >= 0, got bands={bands}, step={step}")
        if dispersion not in ("linear", "integer"):
            raise ValueError(f"dispersion must be 'linear' or 'integer', got {dispersion!r}")
        # row-major: a MATLAB (column-major) mask made every band's multiply a strided gather
        self.register_buffer("mask", (mask if mask.dim() == 3 else mask.unsqueeze(0)).contiguous())
        self.bands, self.step, self.dispersion = bands, step, dispersion
        self.mismatch = (mismatch if mismatch is not None else Mismatch()).for_step(step)
        if not self.mismatch.requires_grad():
            self.mismatch.check_finite()
        self._terms: list[list[Term]] | None = None
        self._warped: Tensor | None = None

    # ----------------------------------------------------------------- geometry
    @property
    def height(self) -> int:
        return self.mask.shape[-2]

    @property
    def width(self) -> int:
        return self.mask.shape[-1]

    @property
    def measurement_width(self) -> int:
        return self.width + self.step * (self.bands - 1)

    @property
    def oversample(self) -> tuple[int, int]:
        """(N, K) of the enlarged-grid model this operator computes; (1, 1): the native grid."""
        return 1, 1

    @property
    def mask_interpolation(self) -> str:
        """How the operator reads the mask between its pixels (:data:`MASK_INTERPOLATIONS`): bilinear here."""
        return "linear"

    @property
    def is_nominal(self) -> bool:
        """True when the operator is exactly the toolbox's integer shift model."""
        m = self.mismatch
        return (not m.requires_grad() and m.to_dict() == Mismatch(a1=float(self.step)).to_dict())

    def warped_mask(self) -> Tensor:
        """The coded mask after the (dx, dy, theta) warp, (B or 1, H, W); cached like :meth:`band_terms`."""
        if self._warped is not None and self._warped.device == self.mask.device:
            return self._warped
        m = self.mismatch
        warped = warp_mask(self.mask, m.dx, m.dy, m.theta)
        if not self.mismatch.requires_grad():
            self._warped = warped
        return warped

    def offsets(self) -> tuple[Tensor, Tensor]:
        """(row, col) detector offsets of the L bands in pixels, float64 (L,) each."""
        positions = torch.arange(self.bands, dtype=torch.float64, device=self.mask.device)
        rows, cols = dispersion_offsets(positions, self.bands, self.step, self.mismatch.a1,
                                        self.mismatch.alpha)
        if self.dispersion == "integer":
            rows, cols = _round_ste(rows), _round_ste(cols)
        return rows, cols

    def band_terms(self) -> list[list[Term]]:
        """Per band, the integer offsets and bilinear weights of its dispersion offset.

        Cached when the mismatch needs no gradient (the operator's parameters are fixed at
        construction); recomputed on every call otherwise, so each graph gets its own.
        """
        if self._terms is not None:
            return self._terms
        rows, cols = self.offsets()
        terms = [bilinear_terms(rows[c], cols[c]) for c in range(self.bands)]
        if not self.mismatch.requires_grad():
            self._terms = terms
        return terms

    # --------------------------------------------------------------- operator
    def _check_cube(self, x: Tensor) -> None:
        shape = (self.bands, self.height, self.width)
        check_tensor("cube", x, f"(B, {self.bands}, {self.height}, {self.width})")
        if x.dim() != 4 or tuple(x.shape[1:]) != shape:
            hint = (" (add a batch dimension: x[None])" if tuple(x.shape) == shape else
                    " (a (B, H, W, L) cube? x.permute(0, 3, 1, 2))"
                    if x.dim() == 4 and tuple(x.shape[1:]) == (self.height, self.width, self.bands) else "")
            raise ValueError(f"cube must be (B, {self.bands}, {self.height}, {self.width}), "
                             f"got shape {tuple(x.shape)}{hint}")
        _check_floating("cube", x)
        self._check_batch(x.shape[0])

    def check_measurement(self, y: Tensor) -> None:
        """Raise a ValueError unless ``y`` is a floating-point (B, H, W + step*(L-1)) batch for this operator (a
        TypeError for anything but a tensor)."""
        check_tensor("measurement", y, f"(B, {self.height}, {self.measurement_width})")
        if y.dim() != 3 or tuple(y.shape[1:]) != (self.height, self.measurement_width):
            raise ValueError(f"measurement must be (B, {self.height}, {self.measurement_width}), "
                             f"got shape {tuple(y.shape)}"
                             + (" (add a batch dimension: y[None])" if y.dim() == 2 else ""))
        _check_floating("measurement", y)
        self._check_batch(y.shape[0])

    def _check_batch(self, batch: int) -> None:
        if self.mask.shape[0] not in (1, batch):
            raise ValueError(f"operator holds {self.mask.shape[0]} masks but the batch has {batch} samples")

    def forward(self, x: Tensor) -> Tensor:
        """Measurement ``y`` (B, H, W + step*(L-1)) of the cube ``x`` (B, L, H, W)."""
        self._check_cube(x)
        mask = self.warped_mask().to(x.dtype)
        y = x.new_zeros(x.shape[0], self.height, self.measurement_width)
        for c, terms in enumerate(self.band_terms()):
            place(y, x[:, c], terms, factor=mask)
        return y

    def back_project(self, y: Tensor) -> Tensor:
        """Per-band read-out of the detector without the mask, (B, L, H, W): the toolbox's ``shift_back``."""
        self.check_measurement(y)
        if self.is_nominal:
            return shift_back(y, self.bands, self.step, self.width)
        return torch.stack([pick(y, terms, self.height, self.width) for terms in self.band_terms()], dim=1)

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y`` (B, L, H, W) of a measurement (B, H, W + step*(L-1))."""
        self.check_measurement(y)
        mask = self.warped_mask().to(y.dtype)
        tracked = y.requires_grad or mask.requires_grad or self.mismatch.requires_grad()
        if torch.is_grad_enabled() and tracked:
            return torch.stack([pick(y, terms, self.height, self.width, factor=mask)
                                for terms in self.band_terms()], dim=1)
        out = y.new_empty(y.shape[0], self.bands, self.height, self.width)
        for c, terms in enumerate(self.band_terms()):  # straight into the cube: no per-band copies
            pick(y, terms, self.height, self.width, factor=mask, out=out[:, c])
        return out

    # -------------------------------------------------------- network inputs
    @property
    def mask3d(self) -> Tensor:
        """Warped mask repeated on the bands, (B or 1, L, H, W): the toolbox's ``Mask``."""
        return self.warped_mask().unsqueeze(1).expand(-1, self.bands, -1, -1)

    @property
    def phi(self) -> Tensor:
        """Per-band mask on the detector, (B or 1, L, H, Wm): the toolbox's shifted 3-D mask ``Phi``."""
        mask = self.warped_mask()
        canvas = mask.new_zeros(mask.shape[0], self.bands, self.height, self.measurement_width)
        for c, terms in enumerate(self.band_terms()):
            place(canvas[:, c], mask, terms)
        return canvas

    @property
    def phi_sum_sq(self) -> Tensor:
        """``sum_c Phi_c^2`` with zeros set to 1, (B or 1, H, Wm)."""
        s = (self.phi ** 2).sum(1)
        return torch.where(s == 0, torch.ones_like(s), s)

    def gram_row_sums(self) -> Tensor:
        """Row sums of ``A A^T`` with zeros set to 1, (B or 1, H, Wm).

        Equals ``phi_sum_sq`` for the nominal operator (where ``A A^T`` is diagonal); for sub-pixel
        operators it bounds ``A A^T`` (Gershgorin), so GAP's normalised step stays stable.
        """
        ones = self.mask.new_ones(self.mask.shape[0], self.height, self.measurement_width)
        s = self.forward(self.adjoint(ones))
        return torch.where(s == 0, torch.ones_like(s), s)

    def input_setting(self, y: Tensor, kind: InputKind = "H") -> Tensor:
        """Network input from a measurement, as the MST toolbox defines it.

        ``"Y"``: y / L * 2 (B, H, Wm); ``"H"``: back-projection of y / L * 2 (B, L, H, W);
        ``"HM"``: ``"H"`` times the 3-D mask.
        """
        self.check_measurement(y)
        check_finite("measurement", y)
        scaled = y / self.bands * 2
        if kind == "Y":
            return scaled
        if kind == "H":
            return self.back_project(scaled)
        if kind == "HM":
            return self.back_project(scaled) * self.mask3d.to(y.dtype)
        raise ValueError(f"unknown input setting {kind!r}; expected 'H', 'HM' or 'Y'")

    def mask_setting(self, kind: MaskKind = "Phi", batch: int = 1) -> Tensor | tuple[Tensor, Tensor]:
        """Mask input expanded to ``batch``: ``"Phi"`` (B, L, H, Wm), ``"Mask"`` (B, L, H, W), or
        ``"Phi_PhiPhiT"`` = (Phi, sum_c Phi^2 with zeros set to 1 (B, H, Wm))."""
        self._check_batch(batch)
        if kind == "Phi":
            return self.phi.expand(batch, -1, -1, -1)
        if kind == "Mask":
            return self.mask3d.expand(batch, -1, -1, -1)
        if kind == "Phi_PhiPhiT":
            phi = self.phi
            s = (phi ** 2).sum(1)
            s = torch.where(s == 0, torch.ones_like(s), s)
            return phi.expand(batch, -1, -1, -1), s.expand(batch, -1, -1)
        raise ValueError(f"unknown mask setting {kind!r}; expected 'Phi', 'Phi_PhiPhiT' or 'Mask'")
