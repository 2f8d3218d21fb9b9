"""Algorithm 1: hierarchical beam search over (dy, theta), dx, then (a1, alpha), and polishing.

All candidates of a stage are scored in one batched call of the blind score. The order follows the
landscapes: dy (and theta, which tilts the mask rows) has a sharp, non-convex valley about 1 px wide,
so it is gridded first at half-pixel steps (on a coarse dx grid: 2.5 px, a dx 2 px off can hide the
dy valley); dx (along the dispersion) has a broad single basin over the whole range, so a 1-D grid
per beam finds it; a1 and alpha matter below a pixel and are gridded last. Polishing is a batched
coordinate descent: every parameter is probed at +-h at once, moved to its parabola vertex, and h
is halved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from calib.forward_model import params_to_mismatch
from calib.ranges import Ranges
from calib.result import StageClock, StageRecord
from calib.score import HeldOutScore

DX, DY, THETA, A1, ALPHA = range(5)


@dataclass(frozen=True)
class SearchSettings:
    """Grid steps (px, deg, px/band) and beam counts of Algorithm 1."""

    beams: int = 3
    coarse_dx_step: float = 2.5
    dy_step: float = 0.5
    theta_step: float = 0.5
    dx_step: float = 0.5
    a1_points: int = 5
    alpha_points: int = 5
    polish_rounds: int = 2
    polish_start: tuple[float, float, float, float, float] = (0.25, 0.25, 0.1, 0.01, 0.25)
    batch: int = 32


class Evaluations:
    """Batched, cached calls of a :class:`calib.score.HeldOutScore`; keeps every (params, score)."""

    def __init__(self, score: HeldOutScore, batch: int = 32, progress: bool = False) -> None:
        self.score, self.batch, self.progress = score, batch, progress
        self.cache: dict[tuple[float, ...], float] = {}
        self.log: list[tuple[str, list[float], float]] = []

    def rebase(self, point: Tensor) -> None:
        """Move the score's warm-start reference to ``point`` (5,); cached values no longer apply."""
        self.score.set_reference(point[None])
        self.cache.clear()

    def __call__(self, points: Tensor, stage: str = "") -> Tensor:
        keys = [tuple(round(float(v), 6) for v in p) for p in points]
        todo = sorted({k for k in keys if k not in self.cache})
        if todo:
            chunks = torch.tensor(todo, dtype=torch.float64).split(self.batch)
            bar = tqdm(total=len(todo), desc=stage or "score", unit="cand", disable=not self.progress or len(todo) < 8,
                       leave=False)
            for chunk in chunks:
                for key, value in zip(chunk.tolist(), self.score(chunk).tolist()):
                    key = tuple(round(v, 6) for v in key)
                    self.cache[key] = value
                    self.log.append((stage, list(key), value))
                bar.update(len(chunk))
            bar.close()
        return torch.tensor([self.cache[k] for k in keys], dtype=torch.float64)


def _grid(values: list[Tensor]) -> Tensor:
    return torch.stack(torch.meshgrid(*values, indexing="ij"), -1).reshape(-1, len(values))


def _axis(lo: float, hi: float, step: float) -> Tensor:
    """Points from lo to hi at ``step``, centred in the interval."""
    n = int((hi - lo) // step) + 1
    start = (lo + hi) / 2 - step * (n - 1) / 2
    return start + step * torch.arange(n, dtype=torch.float64)


def _distinct_best(points: Tensor, scores: Tensor, count: int, radius: Tensor) -> list[int]:
    """Indices of the ``count`` best points, none within ``radius`` (per axis) of a better one."""
    chosen: list[int] = []
    for i in torch.argsort(scores).tolist():
        if all(((points[i] - points[j]).abs() > radius).any() for j in chosen):
            chosen.append(i)
        if len(chosen) == count:
            break
    return chosen


def _record(name: str, clock: StageClock, points: Tensor, scores: Tensor, evaluations: int,
            trace: list | None = None) -> StageRecord:
    best = int(torch.argmin(scores))
    wall, cpu = clock.last(name)
    return StageRecord(name, params_to_mismatch(points[best]).to_dict(), float(scores[best]), evaluations,
                       wall, cpu, trace or [])


def polish(evaluate: Evaluations, start: Tensor, ranges: Ranges, steps: Tensor, rounds: int,
           stage: str = "polish") -> tuple[Tensor, float, list[dict]]:
    """Batched coordinate descent from ``start`` (5,); returns (point, score, per-round trace)."""
    point = ranges.clamp(start)
    best = float(evaluate(point[None], stage)[0])
    trace = []
    h = steps.clone()
    for r in range(rounds):
        if r > 0:
            evaluate.rebase(point)
            best = float(evaluate(point[None], stage)[0])
        probes = point.repeat(10, 1)
        for i in range(5):
            probes[2 * i, i] -= h[i]
            probes[2 * i + 1, i] += h[i]
        probes = ranges.clamp(probes)
        s = evaluate(probes, stage).view(5, 2)
        moved = point.clone()
        for i in range(5):
            lo, hi = float(s[i, 0]), float(s[i, 1])
            curv = lo + hi - 2 * best
            if curv > 0:
                moved[i] = point[i] + h[i] * (lo - hi) / (2 * curv)
            else:
                moved[i] = probes[2 * i + (0 if lo < hi else 1), i]
        moved = ranges.clamp(moved)
        new = float(evaluate(moved[None], stage)[0])
        candidates = torch.cat([moved[None], probes, point[None]])
        values = torch.cat([torch.tensor([new]), s.reshape(-1), torch.tensor([best])])
        k = int(torch.argmin(values))
        point, best = candidates[k].clone(), float(values[k])
        trace.append({"round": r, "step": h.tolist(), "score": best,
                      "point": params_to_mismatch(point).to_dict()})
        h = h / 2
    return point, best, trace


def polish_stage(evaluate: Evaluations, start: Tensor, ranges: Ranges, settings: SearchSettings, clock: StageClock,
                 name: str = "1e polish") -> tuple[Tensor, StageRecord]:
    """Algorithm 1's last stage: coordinate descent from ``start`` (5,) with ``evaluate`` re-centred there.
    Returns (point (5,), stage record)."""
    with clock.stage(name):
        evaluate.rebase(start)
        before = len(evaluate.cache)
        point, value, trace = polish(evaluate, start, ranges, torch.tensor(settings.polish_start, dtype=torch.float64),
                                     settings.polish_rounds, name)
    return point, _record(name, clock, point[None], torch.tensor([value]), len(evaluate.cache) - before, trace)


def beam_search(evaluate: Evaluations, ranges: Ranges, settings: SearchSettings, clock: StageClock,
                progress: bool = False) -> tuple[Tensor, list[StageRecord], dict]:
    """Algorithm 1. Returns (best point (5,), stage records, diagnostics for the status check)."""
    centre = ranges.centre()
    records: list[StageRecord] = []
    s = settings

    name = "1a coarse dy-theta"
    with clock.stage(name):
        dx = _axis(*ranges.dx, s.coarse_dx_step)
        dy = _axis(*ranges.dy, s.dy_step)
        theta = _axis(*ranges.theta, s.theta_step)
        pts = centre.repeat(len(dx) * len(dy) * len(theta), 1)
        pts[:, [DX, DY, THETA]] = _grid([dx, dy, theta])
        scores = evaluate(pts, name)
        radius = torch.tensor([math.inf, s.dy_step, s.theta_step, 0.0, 0.0], dtype=torch.float64) * 1.01
        beams = pts[_distinct_best(pts, scores, s.beams, radius)]     # distinct in (dy, theta); dx is re-gridded
    records.append(_record(name, clock, pts, scores, len(pts)))
    coarse_scores = scores.sort().values

    name = "1b coarse dx"
    with clock.stage(name):
        evaluate.rebase(beams[0])
        dx = _axis(*ranges.dx, s.dx_step)
        pts = torch.cat([b.repeat(len(dx), 1) for b in beams])
        pts[:, DX] = dx.repeat(len(beams))
        scores = evaluate(pts, name)
        radius = torch.tensor([s.dx_step, s.dy_step, s.theta_step, 0.0, 0.0], dtype=torch.float64) * 1.01
        order = _distinct_best(pts, scores, s.beams, radius)
        beams, beam_scores = pts[order], scores[order]
    records.append(_record(name, clock, pts, scores, len(pts)))

    name = "1c fine dx-dy-theta"
    with clock.stage(name):
        evaluate.rebase(beams[0])
        offsets = _grid([torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64) * s.dx_step,
                         torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64) * s.dy_step,
                         torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64) * s.theta_step])
        pts = torch.cat([b.repeat(len(offsets), 1) for b in beams])
        pts[:, :3] += offsets.repeat(len(beams), 1)
        pts = ranges.clamp(pts)
        scores = evaluate(pts, name)
        order = _distinct_best(pts, scores, 2, radius)
        beams = pts[order]
    records.append(_record(name, clock, pts, scores, len(pts)))

    name = "1d dispersion a1-alpha"
    with clock.stage(name):
        evaluate.rebase(beams[0])
        a1 = torch.linspace(*ranges.a1, s.a1_points, dtype=torch.float64)
        alpha = torch.linspace(*ranges.alpha, s.alpha_points, dtype=torch.float64)
        grid = _grid([a1, alpha])
        pts = torch.cat([b.repeat(len(grid), 1) for b in beams])
        pts[:, [A1, ALPHA]] = grid.repeat(len(beams), 1)
        scores = evaluate(pts, name)
        start = pts[int(torch.argmin(scores))]
    records.append(_record(name, clock, pts, scores, len(pts)))

    point, record = polish_stage(evaluate, start, ranges, settings, clock)
    records.append(record)
    diagnostics = {"coarse_best_scores": coarse_scores[:5].tolist(), "beams": beams.tolist(),
                   "beam_scores": beam_scores.tolist()}
    return point, records, diagnostics

