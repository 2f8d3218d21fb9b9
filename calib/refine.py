"""Algorithm 2: staged gradient refinement through the differentiable operator and unrolled solver.

The loss is the held-out score (:class:`calib.score.HeldOutScore.loss`): the calibration forward
model is differentiable in all five parameters and the reconstruction inside the score is an
unrolled, checkpointed conjugate-gradient solve, so autograd gives the exact gradient of the blind
criterion. Each stage runs L-BFGS (strong-Wolfe line search) on a subset of the parameters, in units
where 1 moves some detector sample by about one pixel (:func:`calib.ranges.pixel_scales`), so one
step length suits every parameter. Stages, as the method describes (its 2A/2B/2C, with the
dispersion pair in place of the paper's dx-alone stage, since dx and dy are found by the search):
(dx, dy, theta), then (a1, alpha) together with dy (alpha tilts band rows, which trades off against
dy when the scene's light is not spectrally symmetric), then all five jointly.
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

DEFAULT_STAGES = (("2A dx-dy-theta", ("dx", "dy", "theta")),
                  ("2B a1-alpha-dy", ("a1", "alpha", "dy")),
                  ("2C joint", PARAMETER_NAMES))


@dataclass(frozen=True)
class RefineSettings:
    """Stages (name, parameter names) and the L-BFGS budget per stage (loss evaluations)."""

    stages: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_STAGES
    evaluations: int = 6


def refine(score: HeldOutScore, start: Tensor, ranges: Ranges, scales: Tensor, settings: RefineSettings,
           clock: StageClock, progress: bool = False) -> tuple[Tensor, float, list[StageRecord]]:
    """Refine ``start`` (5,) by minimising ``score.loss``; returns (point, score, stage records).

    The point is kept inside ``ranges``; a stage that does not lower the score keeps its start.
    """
    point = ranges.clamp(start.to(torch.float64))
    records = []
    for name, names in settings.stages:
        with clock.stage(name):
            score.set_reference(point[None])
            best = float(score(point[None])[0])
            point, best, trace = _stage(score, point, best, [PARAMETER_NAMES.index(n) for n in names],
                                        ranges, scales, settings, name, progress)
        wall, cpu = clock.last(name)
        records.append(StageRecord(name, params_to_mismatch(point).to_dict(), best, len(trace), wall, cpu, trace))
    return point, best, records


def _stage(score: HeldOutScore, start: Tensor, start_score: float, free: list[int], ranges: Ranges,
           scales: Tensor, settings: RefineSettings, name: str, progress: bool
           ) -> tuple[Tensor, float, list[dict]]:
    u = torch.zeros(len(free), dtype=torch.float64, requires_grad=True)
    scale = scales[free]
    trace: list[dict] = []
    bar = tqdm(total=settings.evaluations, desc=name, unit="eval", disable=not progress, leave=False)

    def point_of(u: Tensor) -> Tensor:
        p = start.clone()
        p = p.index_put((torch.tensor(free),), start[free] + u * scale)
        return ranges.clamp(p)

    def closure() -> Tensor:
        optimiser.zero_grad()
        p = point_of(u)
        loss = score.loss(p[None]) / start_score
        loss.backward()
        trace.append({"loss": float(loss.detach()) * start_score, "point": params_to_mismatch(p).to_dict()})
        bar.update(1)
        return loss

    optimiser = torch.optim.LBFGS([u], lr=1.0, max_iter=settings.evaluations, max_eval=settings.evaluations,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, history_size=10,
                                  line_search_fn="strong_wolfe")
    optimiser.step(closure)
    bar.close()
    if not trace:
        return start, start_score, trace
    best = min(range(len(trace)), key=lambda i: trace[i]["loss"])
    if trace[best]["loss"] >= start_score:
        return start, start_score, trace
    return (torch.tensor([trace[best]["point"][n] for n in PARAMETER_NAMES], dtype=torch.float64),
            trace[best]["loss"], trace)
