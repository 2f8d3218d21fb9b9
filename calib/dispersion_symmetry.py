"""The mirror test: is the a1 estimate one of two mirror-image minima about the grid-aligned slope a1 = step?

At a1 = step (alpha = 0) every band of the calibration model lands on whole detector columns; any other
slope splits a band over two placements (linear interpolation). A split voxel reaches two detector
pixels, so a held-out pixel's scene is partly seen through its fitted neighbour: the held-out criterion
(:mod:`calib.score`) rewards the split whatever its sign. On data made on the native grid at a1 = step
(the KAIST snapshots, the toolbox simulators) its a1 slice is then W-shaped: a cusp (local maximum) at
a1 = step and two minima of equal depth on either side (KAIST snapshot 01: 2.000 + 6.1 % +- 1.8 % above
the estimate 2.0121, the mirror 1.9879 + 0.65 % +- 0.90 %), and the refinement stops in one of them,
0.012 from the truth.

With a mismatch penalty symmetric about the true slope a_t and the split reward symmetric about
step, the score's a1 profile is symmetric about step only when a_t = step; a truth off step tilts it.
So the test compares three profile points -- the estimate's a1, its mirror image 2 step - a1 and step,
the other four parameters refined at each (dx trades against a1; :data:`PROFILE`) -- and when the mirror
scores the same as the estimate within the criterion's noise while step scores worse beyond it (the W,
not a flat profile), the estimate moves to the profile point at a1 = step: the only slope the symmetric
landscape points at. Otherwise the estimate is kept as it was. Scores are paired block by block
(:meth:`calib.score.HeldOutScore.block_scores`), as in :mod:`calib.status`. The criterion's minimum is
then not at the estimate, and the status tests say so (a1's tolerance test, its uncertainty).

Only on the native grid (N = K = 1), where the W was measured. The enlarged model (N = 4, K = 2) spreads
every band over its own dispersion already; run there too (a first version), the test never applied on
the 20 benchmark scenes, but on pseudo-real crop scene2_0 (truth a1 2.0169, estimate 2.0146) the mirror
scored only 2.0 standard errors worse: applying would have put a1 0.017 off.
"""
from __future__ import annotations

import torch
from torch import Tensor

from calib.forward_model import PARAMETER_NAMES
from calib.ranges import Ranges
from calib.refine import RefineSettings, refine
from calib.result import StageClock
from calib.score import HeldOutScore
from calib.status import relative_difference

A1 = PARAMETER_NAMES.index("a1")
# the other four parameters refined at a fixed a1 (dx trades against a1: compare the best point at each slope)
PROFILE = RefineSettings(stages=(("2M profile", ("dx", "dy", "theta", "alpha"), 3),), polish_rounds=0)


def profile(full: HeldOutScore, start: Tensor, ranges: Ranges, scales: Tensor) -> tuple[Tensor, int]:
    """``start`` (5,) with dx, dy, theta, alpha refined at its a1 (:data:`PROFILE`), and the score
    evaluations that took."""
    point, _, records = refine(full, start, ranges, scales, PROFILE, StageClock())
    return point, sum(r.evaluations for r in records)


def mirror_test(full: HeldOutScore, point: Tensor, step: int, ranges: Ranges, scales: Tensor, z: float,
                blocks: int) -> tuple[Tensor, dict]:
    """The estimate ``point`` (5,) moved to a1 = ``step`` when its a1 profile is symmetric about step (module
    docstring), else ``point`` unchanged; and the record for ``calibration.json``: the three profile points
    (the estimate's a1, its mirror image, step; the other parameters refined at each), their scores against
    the estimate's (relative, standard error), ``applied`` and the reason. ``full``: the criterion in its
    refinement setting; ``z``: standard errors a difference needs."""
    a1 = float(point[A1])
    mirror, aligned = point.clone(), point.clone()
    mirror[A1], aligned[A1] = 2 * step - a1, float(step)
    record = {"a1": a1, "mirror_a1": 2 * step - a1, "step": step, "z": z, "applied": False}
    model = (full.settings.spatial, full.settings.spectral)
    if model != (1, 1):
        return point, {**record, "reason": f"not run: the calibration model is N={model[0]}, K={model[1]}, not the "
                                           "native grid (N = K = 1) whose whole-column placements make the cusp"}
    if a1 == step:
        return point, {**record, "reason": "a1 is already the grid-aligned slope"}
    if not torch.equal(ranges.clamp(mirror), mirror):
        return point, {**record, "reason": f"the mirror image a1 = {2 * step - a1:.4g} is outside the search range"}
    profiles = [profile(full, p, ranges, scales) for p in (point, mirror, aligned)]
    (held, _), (mirror, _), (aligned, _) = profiles
    full.set_reference(held[None])
    record["profile"] = {name: dict(zip(PARAMETER_NAMES, p.tolist()))
                         for name, (p, _) in zip(("estimate", "mirror", "aligned"), profiles)}
    record["evaluations"] = sum(n for _, n in profiles) + 3
    parts = full.block_scores(torch.stack([held, mirror, aligned]), blocks)
    (mirror_rise, mirror_se), (aligned_rise, aligned_se) = (relative_difference(p, parts[0]) for p in parts[1:])
    record.update(mirror_rise=mirror_rise, mirror_standard_error=mirror_se,
                  aligned_rise=aligned_rise, aligned_standard_error=aligned_se)
    if mirror_rise > z * mirror_se:
        reason = (f"the mirror image a1 = {2 * step - a1:.4f} scores {100 * mirror_rise:+.2f} % +- "
                  f"{100 * mirror_se:.2f} %: the profile is not symmetric about a1 = {step}")
    elif aligned_rise <= z * aligned_se:
        reason = (f"a1 = {step} scores {100 * aligned_rise:+.2f} % +- {100 * aligned_se:.2f} %: no cusp between "
                  "the estimate and its mirror image")
    else:
        return aligned, {**record, "applied": True,
                         "reason": f"the a1 profile is symmetric about the grid-aligned a1 = {step}: the estimate "
                                   f"{a1:.4f} and its mirror image {2 * step - a1:.4f} score the same "
                                   f"({100 * mirror_rise:+.2f} % +- {100 * mirror_se:.2f} %), a1 = {step} between "
                                   f"them {100 * aligned_rise:+.2f} % +- {100 * aligned_se:.2f} % higher (the "
                                   "split placements' cusp); a1 set to it, the other parameters refined there"}
    return point, {**record, "reason": reason}
