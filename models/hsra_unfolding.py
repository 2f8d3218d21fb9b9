"""HSRA-DUM: physics-consistent deep unfolding with an HSRA prior per stage (Han, ICML poster).

Each stage k = 1..K alternates (poster, "data fidelity update" / "prior update")

    X^k = Z^(k-1) - mu_k A^T (A Z^(k-1) - Y)        gradient step on 1/2 ||A X - Y||^2
    Z^k = f_k(X^k)                                   HSRA prior of stage k (own weights)

with a learnable scalar step ``mu_k`` per stage. ``A`` / ``A^T`` are the given operator's own
``forward`` / ``adjoint``: the network never rebuilds them from mask tensors, so the same weights run
with the nominal or a mismatched (sub-pixel warped, non-integer dispersion) operator.

Readings of the poster:
* ``Z^0`` is the toolbox's "H" input, the operator's back-projection of ``y / L * 2``: it is on the
  cube's scale (A^T y is ~L/2 times larger for a 50 % mask) and, unlike a zero start, makes the
  first gradient step already informative.
* ``mu_k`` starts at ``1 / L``: for mask values in [0, 1], ``||A^T A|| <= L``, so the first steps are
  non-expansive before training.
* The prior sees only ``X^k`` (``Z = f(X)`` as written), not the mask; its size is HSRA-M's layout,
  which puts the stage count at 256 x 256 near the poster's 37.39 / 49.82 GFLOPs (12.46 per stage).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from models.hsra import HSRA, HSRA_SIZES
from models.registry import register_model
from models.sizes import SizeRule

if TYPE_CHECKING:  # the operator is only passed through, never built here
    from cassi.operator import CassiOperator


class HSRAUnfolding(nn.Module):
    """``stages`` unfolded (gradient step, HSRA prior) pairs; forward returns every stage's estimate.

    Args:
        stages: number of stages K.
        bands: spectral bands L.
        prior_size: key of :data:`models.hsra.HSRA_SIZES` for the per-stage priors.
        prior_kwargs: overrides of the prior's constructor arguments (e.g. ``window``).
    """

    def __init__(self, stages: int = 3, bands: int = 28, prior_size: str = "m",
                 prior_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if stages < 1:
            raise ValueError(f"HSRA-DUM needs at least one stage, got stages={stages}")
        if prior_size not in HSRA_SIZES:
            raise ValueError(f"unknown HSRA prior size {prior_size!r}; expected one of {sorted(HSRA_SIZES)}")
        config = {**HSRA_SIZES[prior_size], **(prior_kwargs or {}), "bands": bands, "mask_aware": False}
        self.bands = bands
        self.priors = nn.ModuleList(HSRA(**config) for _ in range(stages))
        self.step_sizes = nn.Parameter(torch.full((stages,), 1.0 / bands))

    @property
    def size_rule(self) -> SizeRule:
        """The priors' rule (the gradient steps take any size)."""
        return self.priors[0].size_rule

    def data_step(self, z: Tensor, y: Tensor, op: CassiOperator, stage: int) -> Tensor:
        """``X = Z - mu_stage A^T(A Z - Y)``: (B, L, H, W) from the estimate ``z`` and measurement ``y``."""
        return z - self.step_sizes[stage] * op.adjoint(op(z) - y)

    def forward(self, y: Tensor, op: CassiOperator) -> list[Tensor]:
        """Stage estimates ``[Z^1, ..., Z^K]``, each (B, L, H, W), from ``y`` (B, H, W + step*(L-1)).

        ``op`` is the :class:`cassi.CassiOperator` that produced ``y`` (nominal or mismatched).
        """
        if op.bands != self.bands:
            raise ValueError(f"operator has {op.bands} bands but this HSRA-DUM was built for {self.bands}")
        z = op.input_setting(y, "H")
        estimates = []
        for stage, prior in enumerate(self.priors):
            z = prior(self.data_step(z, y, op, stage))
            estimates.append(z)
        return estimates

    def prepare_inputs(self, y: Tensor, op: CassiOperator) -> dict[str, Any]:
        """The forward needs A and A^T themselves, so it takes the operator, not tensors derived from it."""
        return {"y": y, "op": op}

    def reconstruction(self, output: list[Tensor]) -> Tensor:
        """The last stage's estimate (B, L, H, W)."""
        return output[-1]


@register_model("hsra_dum_3stg")
def hsra_dum_3stg(**kwargs) -> HSRAUnfolding:
    """HSRA-DUM with 3 stages: ~37.9 GFLOPs at 256 x 256 (poster 37.39)."""
    return HSRAUnfolding(**{"stages": 3, **kwargs})


@register_model("hsra_dum_4stg")
def hsra_dum_4stg(**kwargs) -> HSRAUnfolding:
    """HSRA-DUM with 4 stages: ~50.6 GFLOPs at 256 x 256 (poster 49.82)."""
    return HSRAUnfolding(**{"stages": 4, **kwargs})
