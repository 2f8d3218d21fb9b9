"""Algorithm 2: staged gradient refinement through the differentiable operator and unrolled solver.

The loss is the held-out score (:mod:`calib.score`), a sum of squared held-out prediction errors.
Plain gradient steps crawl along the landscape's soft valley (dx trades against a1 and alpha: a mask
shift looks like a spectral shift of the scene, a slope change like a spectral stretch), so each step
is a Levenberg-Marquardt step: the gradient is preconditioned by the Gauss-Newton matrix J^T J of the
held-out errors, J from one batched forward-difference evaluation (0.05 pixel units). Units: 1 =
about one pixel of detector displacement (:func:`calib.ranges.pixel_scales`). Before each step the
score's warm starts move to the current point (they make the short solves accurate nearby). The step
is accepted only if it lowers the score: the full step is tried first, then shorter ones (one
batched call).

The gradient of a step is ``2 J^T e`` from the same differences (``gradient="differences"``, the
default), or the exact local derivative by autograd through the calibration forward model and the
unrolled, checkpointed conjugate-gradient solver (``gradient="autograd"``). The score is rough below
~1e-4 px (each of the millions of bilinear mask samples has a kink where its source coordinate
crosses a pixel edge): near the optimum the local derivative says little about the slope at the
scale of a step. Measured on pseudo-KAIST scene01 at the start of stage 2A: autograd d/d(dy) =
-6.5e-3, differences over 0.05 px -2.1e-5 (scene03, float64: central differences over 1e-5, 1e-4,
1e-3, 2e-2 px give -2.8e-4, 9.9e-5, 1.4e-4, 2.1e-4; autograd -4.3e-4). Steps built on the autograd
gradient were often rejected, which ends a stage, and which scenes landed in tolerance then hung on
float rounding (7 to 9 of 10 for the same code at different rounding); with the differences every
step is a consistent Levenberg-Marquardt step of the model whose J^T J it uses, and no backward pass
through the solver is needed.

Stages (the method's 2A/2B/2C): (dx, dy, theta), then (a1, alpha), then all five jointly (up to 5
steps; a stage ends once a step moves no parameter by more than 0.01 pixel units), then one round
of coordinate polishing at +-0.1 pixel units (2D): near the optimum the score is flat to ~1e-4 and
the Gauss-Newton model (forward differences 0.05 px apart) stops improving it, while parabolas
through +-0.1 still do (pseudo-KAIST scene06: a1 error +0.0106 -> +0.0046).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from calib.forward_model import PARAMETER_NAMES, params_to_mismatch
from calib.ranges import Ranges
from calib.result import StageClock, StageRecord
from calib.score import HeldOutScore
from calib.search import Evaluations, polish

DEFAULT_STAGES = (("2A dx-dy-theta", ("dx", "dy", "theta"), 1),
                  ("2B a1-alpha", ("a1", "alpha"), 1),
                  ("2C joint", PARAMETER_NAMES, 5))


@dataclass(frozen=True)
class RefineSettings:
    """Stages (name, parameter names, steps) and the step controls (pixel units)."""

    stages: tuple[tuple[str, tuple[str, ...], int], ...] = DEFAULT_STAGES
    difference: float = 0.05          # finite-difference step of the Jacobian
    gradient: str = "differences"     # "differences": 2 J^T e; "autograd": through the unrolled solver
    trust: float = 1.0                # largest move of one parameter per step
    damping: float = 1e-3             # Levenberg-Marquardt damping, relative to max diag(J^T J)
    backtrack: tuple[float, ...] = (0.5, 0.2)   # shorter steps tried when the full step does not lower the score
    tolerance: float = 0.01           # a stage ends early once a step moves no parameter further than this
    polish_step: float = 0.1          # last, a coordinate polish (calib.search.polish) from +-this step
    polish_rounds: int = 1            # ... for this many rounds (0: none)


def refine(score: HeldOutScore, start: Tensor, ranges: Ranges, scales: Tensor, settings: RefineSettings,
           clock: StageClock, progress: bool = False) -> tuple[Tensor, float, list[StageRecord]]:
    """Refine ``start`` (5,); returns (point, its score, stage records). The point stays in ``ranges``."""
    point = ranges.clamp(start.to(torch.float64))
    records = []
    value = float("nan")
    for name, names, steps in settings.stages:
        free = [PARAMETER_NAMES.index(n) for n in names]
        trace = []
        with clock.stage(name):
            for _ in tqdm(range(steps), desc=name, unit="step", disable=not progress, leave=False):
                before = point
                point, value, entry = gauss_newton_step(score, point, free, ranges, scales, settings)
                trace.append(entry)
                if float(((point - before) / scales).abs().max()) < settings.tolerance:
                    break
        wall, cpu = clock.last(name)
        evaluations = sum(e["evaluations"] for e in trace)
        records.append(StageRecord(name, params_to_mismatch(point).to_dict(), value, evaluations, wall, cpu, trace))
    if settings.polish_rounds:
        name = "2D polish"
        with clock.stage(name):
            evaluate = Evaluations(score)
            evaluate.rebase(point)
            point, value, trace = polish(evaluate, point, ranges, settings.polish_step * scales,
                                         settings.polish_rounds, name)
        wall, cpu = clock.last(name)
        records.append(StageRecord(name, params_to_mismatch(point).to_dict(), value, len(evaluate.cache), wall, cpu,
                                   trace))
    return point, value, records


def _embed(move: Tensor, free: list[int]) -> Tensor:
    """A move of the ``free`` parameters as a full (5,) vector."""
    full = torch.zeros(5, dtype=torch.float64)
    full[free] = move.to(torch.float64)
    return full


def difference_errors(score: HeldOutScore, point: Tensor, free: list[int], scales: Tensor, h: float) -> Tensor:
    """Held-out errors (1 + len(free), N) at ``point`` (5,) and at the forward-difference probes ``point + h
    * scales[i] e_i`` for ``i`` in ``free`` (``h`` in pixel units), one batched call, with the warm starts
    moved to ``point`` first; ``(errors[1:] - errors[:1]) / h`` is the Jacobian in pixel units."""
    score.set_reference(point[None])
    probes = point.repeat(len(free) + 1, 1)
    for k, i in enumerate(free):
        probes[k + 1, i] += h * scales[i]
    return score.residuals(probes)


def gauss_newton_step(score: HeldOutScore, point: Tensor, free: list[int], ranges: Ranges, scales: Tensor,
                      settings: RefineSettings) -> tuple[Tensor, float, dict]:
    """One damped Gauss-Newton step on the parameters ``free``; returns (point, score, trace entry)."""
    if settings.gradient not in ("differences", "autograd"):
        raise ValueError(f"refinement gradient must be 'differences' or 'autograd', got {settings.gradient!r}")
    scale = scales[free]
    h = settings.difference
    errors = difference_errors(score, point, free, scales, h)
    jac = (errors[1:] - errors[:1]) / h                                  # (k, N), pixel units
    differences = 2 * jac @ errors[0]
    grad = differences if settings.gradient == "differences" else _autograd_gradient(score, point, free, scale)
    value = start_value = float((errors[0] ** 2).sum())
    start = point
    gn = 2 * jac @ jac.T
    gn = gn + settings.damping * gn.diagonal().max() * torch.eye(len(free), dtype=gn.dtype)
    move = -torch.linalg.solve(gn.to(torch.float64), grad.to(torch.float64))
    move = move * min(1.0, settings.trust / float(move.abs().max().clamp_min(1e-12)))
    full_step = ranges.clamp(point + _embed(move * scale, free))
    tried = {"1": float(score(full_step[None])[0])}
    evaluations = 1 + len(free) + 1
    if tried["1"] < value:
        point, value = full_step, tried["1"]
    else:
        trials = ranges.clamp(torch.stack([point + f * _embed(move * scale, free) for f in settings.backtrack]))
        values = score(trials)
        tried.update({f"{f:g}": float(v) for f, v in zip(settings.backtrack, values)})
        evaluations += len(trials)
        best = int(torch.argmin(values))
        if float(values[best]) < value:
            point, value = trials[best].clone(), float(values[best])
    names = [PARAMETER_NAMES[i] for i in free]
    entry = {"start": params_to_mismatch(start).to_dict(), "score": start_value,
             "gradient": dict(zip(names, grad.tolist())), "gradient_source": settings.gradient,
             "gradient_differences": dict(zip(names, differences.tolist())),
             "move": dict(zip(names, (move * scale).tolist())),
             "line_search": tried, "evaluations": evaluations}
    entry["accepted"] = params_to_mismatch(point).to_dict()
    return point, value, entry


def _autograd_gradient(score: HeldOutScore, point: Tensor, free: list[int], scale: Tensor) -> Tensor:
    """d score / d params[free] (pixel units) by autograd through the operator and the unrolled solver."""
    p = point.clone().requires_grad_(True)
    return torch.autograd.grad(score.loss(p[None]), p)[0][free] * scale
