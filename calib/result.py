"""What a calibration returns: the estimate, how it was reached, and whether to trust it."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from cassi.mismatch import PARAMETER_UNITS, Mismatch

STATUSES = ("ok", "ambiguous", "failed")
SOLVER_STAGE = " (solver)"      # the suffix of the stages an inner solver other than heldout decides


@dataclass
class StageRecord:
    """One stage of the pipeline: its best point, score and cost; ``trace`` holds per-step values."""

    name: str
    best: dict[str, float]
    score: float
    evaluations: int
    seconds: float
    cpu_seconds: float
    trace: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.name, "best": self.best, "score": self.score, "evaluations": self.evaluations,
                "seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "trace": self.trace}


@dataclass
class CalibrationResult:
    """Estimated instrument mismatch with its provenance.

    ``status`` is "ok", "ambiguous" (a number came out but should not be trusted: ``reasons`` says
    why, e.g. a flat landscape or an estimate at a range edge) or "failed" (no usable estimate).
    ``landscape`` holds 1-D score slices through the estimate; ``evaluations`` every score the beam
    search computed (stage, point, score), for the plots; ``checks`` the residuals of the chosen
    solver before / after calibration; ``tests`` the numbers behind the status (:mod:`calib.status`);
    ``code``: the binary code (H, W) the forward model read when the handed mask was a resampled copy of it
    (:mod:`calib.handed_mask`; the estimate is given for the handed mask), None when it read the handed mask.
    """

    estimate: Mismatch
    score: float
    nominal_score: float
    status: str
    reasons: list[str]
    history: list[StageRecord]
    timings: dict[str, float]
    settings: dict[str, Any]
    landscape: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    tests: dict[str, dict[str, float]] = field(default_factory=dict)
    code: Any = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def uncertainty(self) -> dict[str, float]:
        """One-sigma uncertainty of each parameter of the estimate, in its units: the criterion's noise, its
        prior sensitivity and, when another inner solver decided the estimate, its distance to the held-out
        criterion's own, in quadrature (:func:`calib.status.uncertainty_test`; not a bias the forward model's
        shortcomings leave); empty when the status tests did not run."""
        return dict(self.tests.get("uncertainty", {}).get("uncertainty", {}))

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate.to_dict(), "uncertainty": self.uncertainty,
                "units": dict(PARAMETER_UNITS), "status": self.status,
                "reasons": list(self.reasons), "status_tests": self.tests, "score": self.score,
                "nominal_score": self.nominal_score,
                "history": [h.to_dict() for h in self.history], "timings": self.timings,
                "landscape": self.landscape, "checks": self.checks, "settings": self.settings,
                "evaluations": self.evaluations}

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


class StageClock:
    """Wall and CPU seconds of named stages (CPU time is what other processes cannot inflate)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu

    def merge(self, other: "StageClock", suffix: str = "") -> None:
        """Add the stages of ``other``, their names extended by ``suffix``."""
        for name in other.wall:
            self.wall[name + suffix] = self.wall.get(name + suffix, 0.0) + other.wall[name]
            self.cpu[name + suffix] = self.cpu.get(name + suffix, 0.0) + other.cpu[name]

    def last(self, name: str) -> tuple[float, float]:
        return self.wall.get(name, 0.0), self.cpu.get(name, 0.0)

    def summary(self) -> dict[str, float]:
        out = {f"{k}_s": round(v, 3) for k, v in self.wall.items()}
        out.update({f"{k}_cpu_s": round(v, 3) for k, v in self.cpu.items()})
        out["total_s"] = round(sum(self.wall.values()), 3)
        out["total_cpu_s"] = round(sum(self.cpu.values()), 3)
        return out
