"""How uncertain a calibration estimate is: a sandwich (robust) standard error per parameter under the blind
criterion's own noise, from the held-out errors split into the components the status already uses, and
the criterion's prior sensitivity.

At the estimate the score ``S = sum_i e_i^2`` (held-out errors ``e``, :class:`calib.score.HeldOutScore`)
is minimal. Another draw of the measurement noise and of the scene content the prior misses would move
each component's gradient ``g_b = sum_{i in b} J_i^T e_i`` (component ``b``: capture x stripe x fold x
column block, :meth:`calib.score.HeldOutScore.block_ids`; ``J`` the errors' Jacobian in pixel units),
and the minimum by ``-H^-1 sum_b g_b`` with ``H = J J^T`` (Gauss-Newton). With the components taken as
independent, ``Cov = H^-1 (n Cov_b(g_b)) H^-1`` (``n`` components, ``Cov_b`` their sample covariance):
the estimate's scatter under the criterion's own noise, what the status's paired block differences
measure for score differences. It does not see a bias that every component shares.

One such bias is the criterion's prior: the spatial smoothness weight decides how much of the scene
the held-out pixels' prediction can explain, and where the soft dx-a1-alpha valley bottoms out. The
*prior sensitivity* is how far the minimum moves when that weight is halved or doubled: the
Gauss-Newton offset ``-H^-1 J e`` of each variant at the estimate, less the plain criterion's own, root
mean square over the variants (:func:`gauss_newton_offset`). The uncertainty reported is the two in
quadrature (:func:`calib.status.uncertainty_test`; for an estimate another inner solver decided, with a
third: its distance to the held-out criterion's own estimate; for a criterion with a network's learned
spectral directions, with the Gauss-Newton offset of the same criterion with the DCT cosines, less its
own). Measured on the benchmark's 20 scenes (README "Uncertainty"): the true error lay within 2 standard errors for 73 of 100 parameters with the
noise alone, within 2 combined uncertainties for 85.
A forward model that lacks something is a bias neither sees: it shows as estimates of several captures
that disagree by more than their uncertainties. For a joint fit of M captures the components of one capture
share that bias, and the per-component sandwich, taking components as independent, misses it: the noise
term is then the larger of it and the same sandwich with whole captures as the units (:func:`capture_standard_errors`).
"""
from __future__ import annotations

import torch
from torch import Tensor


def sandwich_standard_errors(errors: Tensor, jacobian: Tensor, components: Tensor, scales: Tensor) -> Tensor:
    """Standard errors (P,) of the parameters, in their units. ``errors`` (N,): held-out errors at the
    estimate; ``jacobian`` (P, N): their derivatives in pixel units (one row per parameter); ``components``
    (N,): component index of each error; ``scales`` (P,): parameter units per pixel unit. A parameter the
    errors do not constrain (a singular Gauss-Newton matrix) gets ``inf``."""
    errors, jacobian = errors.to(torch.float64), jacobian.to(torch.float64)
    count = int(components.max()) + 1
    gradients = torch.zeros(count, jacobian.shape[0], dtype=torch.float64).index_add_(
        0, components, (jacobian * errors).T)                                  # (n, P): g_b
    centred = gradients - gradients.mean(0)
    spread = count / (count - 1) * centred.T @ centred                          # n Cov_b(g_b)
    hessian = jacobian @ jacobian.T
    try:
        inverse = torch.linalg.inv(hessian)
    except torch.linalg.LinAlgError:
        return torch.full((jacobian.shape[0],), float("inf"), dtype=torch.float64)
    variance = (inverse @ spread @ inverse).diagonal().clamp_min(0)
    return variance.sqrt() * scales.to(torch.float64)


def capture_standard_errors(errors: Tensor, jacobian: Tensor, components: Tensor, captures: int, scales: Tensor
                            ) -> Tensor:
    """:func:`sandwich_standard_errors` with whole captures as the independent units (the cluster-robust
    sandwich): ``components`` (N,) numbered capture first, an equal count per capture
    (:meth:`calib.score.HeldOutScore.block_ids`), ``captures`` >= 2. Captures that pull a joint estimate
    different ways (a bias shared within each, which the per-component sandwich misses) widen it. With few
    captures it is noisy (M - 1 degrees of freedom, and at most M - 1 directions)."""
    count = int(components.max()) + 1
    if captures < 2 or count % captures:
        raise ValueError(f"a sandwich over captures needs at least 2 captures with an equal number of the {count} "
                         f"components each, got {captures} captures")
    per_capture = count // captures
    return sandwich_standard_errors(errors, jacobian, components // per_capture, scales)


def gauss_newton_offset(errors: Tensor, jacobian: Tensor, scales: Tensor) -> Tensor:
    """Where the Gauss-Newton model of ``sum errors^2`` puts its minimum, relative to the point the errors
    (N,) and their Jacobian (P, N, pixel units) were taken at: (P,) in the parameters' units."""
    errors, jacobian = errors.to(torch.float64), jacobian.to(torch.float64)
    try:
        move = -torch.linalg.solve(jacobian @ jacobian.T, jacobian @ errors)
    except torch.linalg.LinAlgError:
        return torch.full((jacobian.shape[0],), float("inf"), dtype=torch.float64)
    return move * scales.to(torch.float64)


def prior_sensitivity(variant_offsets: list[Tensor], offset: Tensor) -> Tensor:
    """Root mean square over the criterion's prior variants of their Gauss-Newton offsets (P,) less the
    plain criterion's ``offset`` (P,)."""
    return torch.stack([o - offset for o in variant_offsets]).pow(2).mean(0).sqrt()
