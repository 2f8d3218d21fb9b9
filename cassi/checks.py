"""Physical validity of user input: what the optics and the detector make impossible is an error, what
is possible but suspicious is a warning (to record in the output), never silence.

* Mismatch (:func:`check_mismatch`): finite; ``a1 != 0`` (a1 = 0 puts every band at the same place: no
  dispersion, nothing to decode; a negative a1 is a mirrored disperser and is valid); ``|theta|`` and
  ``|alpha|`` at most 45 degrees (beyond, the mask or the disperser is mounted a quarter turn off: the
  bands would run along the columns, which the detector layout (H, W + step*(L-1)) does not model --
  rotate the mask file instead).
* Instrument (:func:`check_instrument`): some light through the mask must reach the detector (a shift
  of 1e6 px leaves an all-zero measurement); less than half of it is a warning.
* Measurement (:func:`check_measurement`): finite, some positive value and a positive total (photon counts: a
  negative total is a sign-flipped measurement or a too large background subtracted); values below -5 % of the
  maximum are a warning (read noise makes small negative values, not large ones).
* Mask (:func:`check_mask`): finite, non-negative, not zero everywhere.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from cassi.errors import UserError
from cassi.mismatch import Mismatch
from cassi.operator import CassiOperator

MAX_ANGLE_DEG = 45.0
MIN_LIGHT_FRACTION = 0.5
NEGATIVE_WARNING_FRACTION = 0.05


def check_mismatch(mismatch: Mismatch, what: str = "mismatch") -> None:
    """Raise :class:`UserError` for parameters no instrument of this model can have (see module docstring)."""
    values = mismatch.to_dict()
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise UserError(f"{what}: parameter(s) {bad} are not finite: {values}")
    if values["a1"] == 0:
        raise UserError(f"{what}: a1 = 0 means no dispersion at all (every band lands on the same pixels); "
                        "the nominal value is 2 px/band, a negative value a mirrored disperser")
    for name in ("theta", "alpha"):
        if abs(values[name]) > MAX_ANGLE_DEG:
            raise UserError(f"{what}: |{name}| = {abs(values[name]):g} deg exceeds {MAX_ANGLE_DEG:g} deg: the "
                            f"{'mask' if name == 'theta' else 'disperser'} would be mounted a quarter turn off, "
                            "which this instrument model does not describe (rotate the mask file instead)")


def light_fraction(op: CassiOperator) -> float:
    """Share of the light through the (unwarped) mask that reaches the detector: ``sum(A 1) / (L sum(M))``.

    1 for the nominal instrument; less when the warp moves mask pixels out of the frame or the
    dispersion moves bands off the detector.
    """
    with torch.no_grad():
        total = float(op.mask.double().sum()) * op.bands
        if total <= 0:
            raise UserError("the mask is zero everywhere: no light passes it")
        ones = op.mask.new_ones(op.mask.shape[0], op.bands, op.height, op.width)
        return float(op(ones).double().sum()) / total


def check_instrument(op: CassiOperator, what: str = "mismatch") -> list[str]:
    """:func:`check_mismatch` of ``op.mismatch``, and the light that reaches the detector: none is an
    error, less than half a warning (returned)."""
    check_mismatch(op.mismatch, what)
    fraction = light_fraction(op)
    described = f"{what} {op.mismatch.to_dict()}"
    if fraction < 1e-6:
        raise UserError(f"{described} moves the mask off the detector: no light reaches it (the measurement "
                        f"would be all zeros for a {op.height}x{op.width} mask)")
    if fraction < MIN_LIGHT_FRACTION:
        return [f"{described}: only {100 * fraction:.0f} % of the light through the mask reaches the detector"]
    return []


def check_measurement(y: Tensor, where: str = "measurement") -> list[str]:
    """Raise for a measurement without light, with a total <= 0 (sign-flipped) or with NaN / Inf, naming it as
    ``where``; returns warnings (large negative values)."""
    y = torch.as_tensor(y)
    if not torch.isfinite(y).all():
        raise UserError(f"{where}: {int((~torch.isfinite(y)).sum())} values are NaN or Inf")
    top, low = float(y.max()), float(y.min())
    if top <= 0:
        raise UserError(f"{where}: no positive value (range [{low:.4g}, {top:.4g}]): a measurement counts "
                        "photons, so it cannot be all zeros or negative")
    total = float(y.double().sum())
    if total <= 0:
        raise UserError(f"{where}: the measurement sums to {total:.4g} (values in [{low:.4g}, {top:.4g}]): photon "
                        "counts add up to the light that reached the detector, a positive total, so it looks "
                        "sign-flipped (-y) or a too large background was subtracted")
    if low < -NEGATIVE_WARNING_FRACTION * top:
        return [f"{where}: values down to {low:.4g} ({100 * -low / top:.1f} % of the maximum {top:.4g}); photon "
                "counts are not negative beyond read noise (was a background subtracted?)"]
    return []


def check_mask(mask: Tensor, where: str = "mask") -> None:
    """Raise for a mask with NaN / Inf, negative values, or no open pixel."""
    mask = torch.as_tensor(mask)
    if not torch.isfinite(mask).all():
        raise UserError(f"{where}: {int((~torch.isfinite(mask)).sum())} values are NaN or Inf")
    if float(mask.min()) < 0:
        raise UserError(f"{where}: negative transmission (min {float(mask.min()):.4g})")
    if float(mask.max()) <= 0:
        raise UserError(f"{where}: the mask is zero everywhere: no light passes it")
