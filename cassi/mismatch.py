"""The instrument's mismatch parameters and the dispersion model they define."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import torch
from torch import Tensor

PARAMETER_UNITS = {"dx": "px", "dy": "px", "theta": "deg", "a1": "px/band", "alpha": "deg"}


class _DefaultA1(float):
    """The a1 of a :class:`Mismatch` that was not given one: 2.0, the toolbox's step, marked so that
    :meth:`Mismatch.for_step` tells it from an a1 given as 2.0."""

    __slots__ = ()


@dataclass
class Mismatch:
    """Mask shift ``dx`` (px, right), ``dy`` (px, down), rotation ``theta`` (deg, counter-clockwise),
    dispersion slope ``a1`` (px per band; the nominal value equals the operator's step) and
    dispersion-axis angle ``alpha`` (deg). Fields are floats or 0-d tensors (which may require grad).
    An ``a1`` left out reads 2.0 (the toolbox's step); :class:`cassi.CassiOperator`,
    :func:`cassi.simulator.simulate_measurement` and the calibration model
    (``calib.forward_model.EnlargedGridOperator``) replace it by their ``step`` (:meth:`for_step`).
    """

    dx: float | Tensor = 0.0
    dy: float | Tensor = 0.0
    theta: float | Tensor = 0.0
    a1: float | Tensor = _DefaultA1(2.0)
    alpha: float | Tensor = 0.0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Mismatch":
        """Build from a mapping with (a subset of) the five names; unknown names are an error."""
        unknown = set(values) - set(PARAMETER_UNITS)
        if unknown:
            raise ValueError(f"unknown mismatch parameter(s) {sorted(unknown)}; "
                             f"expected {sorted(PARAMETER_UNITS)}")
        return cls(**{name: _number(name, value) for name, value in values.items()})

    def for_step(self, step: float) -> "Mismatch":
        """This mismatch as an instrument of nominal dispersion ``step`` (px/band) uses it: an ``a1`` left out
        becomes ``step``, the nominal slope; an ``a1`` given (2.0 included) is kept. ``self`` when nothing changes."""
        if isinstance(self.a1, _DefaultA1) and float(step) != float(self.a1):
            return replace(self, a1=float(step))
        return self

    def to_dict(self) -> dict[str, float]:
        """Plain floats, for JSON."""
        return {k: float(v) for k, v in asdict(self).items()}

    def text(self) -> str:
        """``dx=..., dy=..., theta=..., a1=..., alpha=...`` to 4 decimals, as the terminal and figures show it."""
        return ", ".join(f"{k}={v:.4f}" for k, v in self.to_dict().items())

    def requires_grad(self) -> bool:
        return any(isinstance(getattr(self, f.name), Tensor) and getattr(self, f.name).requires_grad
                   for f in fields(self))

    def check_finite(self) -> None:
        for name, value in self.to_dict().items():
            if not math.isfinite(value):
                raise ValueError(f"mismatch parameter {name} is not finite: {value}")


def _number(name: str, value: Any) -> float:
    """``value`` as a float: a number or a 0-d array / tensor (not a bool, string, None or sequence)."""
    try:
        if isinstance(value, (bool, str, bytes)) or getattr(value, "shape", ()) != ():
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"mismatch parameter {name} must be a number ({PARAMETER_UNITS[name]}), "
                         f"got {value!r}") from None


def _scalar(value: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=like.dtype).reshape(())
    return torch.tensor(float(value), device=like.device, dtype=like.dtype)


def dispersion_offsets(positions: Tensor, bands: int, step: float, a1: float | Tensor,
                       alpha_deg: float | Tensor) -> tuple[Tensor, Tensor]:
    """(row, col) offsets in pixels of spectral positions ``positions`` (band units, float64 (K,)).

    ``d(p) = a1 * (p - (L-1)/2)``; position p lands at ``(-d sin(alpha), d cos(alpha) + step (L-1)/2)``.
    With ``a1 == step`` and ``alpha == 0`` band c lands exactly at ``(0, step * c)``.
    """
    a1 = _scalar(a1, positions)
    alpha = _scalar(alpha_deg, positions) * (math.pi / 180.0)
    d = a1 * (positions - (bands - 1) / 2)
    return -d * torch.sin(alpha), d * torch.cos(alpha) + step * (bands - 1) / 2
