"""Mismatch scenarios: how much a drifted instrument costs, and how much calibration recovers.

For every scene x with coded aperture M and an injected mismatch xi:

* **I ideal**: y = A_nominal x; reconstruct with A_nominal.
* **II mismatched**: y' = the high-fidelity simulator (``cassi.simulator``, N x spatial, K x spectral
  oversampling) of the instrument with mismatch xi; reconstruct with A_nominal.
* **III calibrated**: xi_hat estimated from y' and M alone (``calib.calibrate``, or an estimate read from
  a file); reconstruct y' with A(xi_hat).
* **IV oracle**: reconstruct y' with A(xi), the true mismatch (the simulator's discretisation error remains).

Reported: Delta_deg = I - II, Delta_cal = III - II, recovery ratio (III - II) / (IV - II) for every metric,
and the parameter errors xi_hat - xi. The same detector noise (if any) is added to y and y'.
The plain KAIST protocol is scenario I alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from torch import Tensor

from cassi import CassiOperator, Mismatch, PARAMETER_UNITS
from cassi.gap_tv import compile_tv_kernel
from cassi.simulator import simulate_measurement
from data.kaist import Scene
from evaluation.protocol import METRICS, Noise, mean_row, result_row, timed

SCENARIOS = {"I": "ideal: nominal measurement, nominal operator",
             "II": "mismatched: measured with the mismatch (high-fidelity simulator), nominal operator",
             "III": "calibrated: mismatched measurement, operator estimated from the measurement",
             "IV": "oracle: mismatched measurement, operator with the true mismatch"}
DEFAULT_MISMATCH = Mismatch(dx=1.0, dy=0.5, theta=0.3, a1=2.02, alpha=0.2)


class Calibrator(Protocol):
    """Estimate the instrument's mismatch from one measurement (1, H, Wm) and the nominal mask (H, W)."""

    description: dict[str, Any]

    def __call__(self, y: Tensor, mask: Tensor) -> Mismatch: ...


@dataclass
class FixedEstimate:
    """A mismatch estimated beforehand (``calibrate.py`` output), used for every scene."""

    estimate: Mismatch
    description: dict[str, Any] = field(default_factory=dict)

    def __call__(self, y: Tensor, mask: Tensor) -> Mismatch:
        return self.estimate


@dataclass
class ScenarioSetup:
    """Which scenarios to run and how the mismatched instrument is simulated."""

    scenarios: tuple[str, ...] = ("I",)
    mismatch: Mismatch = field(default_factory=lambda: Mismatch(**DEFAULT_MISMATCH.to_dict()))
    oversample: tuple[int, int] = (4, 2)
    noise: Noise = field(default_factory=Noise)
    step: int = 2

    def __post_init__(self) -> None:
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown or not self.scenarios:
            raise ValueError(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
        self.scenarios = tuple(s for s in SCENARIOS if s in self.scenarios)   # canonical order I..IV

    @property
    def needs_mismatch(self) -> bool:
        return any(s != "I" for s in self.scenarios)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scenarios": list(self.scenarios), "noise": self.noise.describe(), "step": self.step}
        if self.needs_mismatch:
            out.update(mismatch=self.mismatch.to_dict(), units=PARAMETER_UNITS,
                       oversample={"spatial": self.oversample[0], "spectral": self.oversample[1]})
        return out


OnResult = Callable[[str, Scene, Tensor, dict[str, Any]], None]


def run_scenarios(scenes: list[Scene], mask: Tensor, method: Callable[[Tensor, CassiOperator], Tensor],
                  setup: ScenarioSetup, calibrator: Calibrator | None = None,
                  on_result: OnResult | None = None) -> dict[str, Any]:
    """Reconstruct every scene in every scenario of ``setup``; returns per-scenario rows, means and comparisons.

    ``on_result(scenario, scene, prediction (L, H, W), row)`` is called after each reconstruction.
    """
    if "III" in setup.scenarios and calibrator is None:
        raise ValueError("scenario III needs a calibration: calib.calibrate, --calibration FILE or --operator FILE")
    bands = scenes[0].cube.shape[0]
    nominal = CassiOperator(mask, bands, setup.step)
    oracle = CassiOperator(mask, bands, setup.step, setup.mismatch)
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in setup.scenarios}
    calibration: list[dict[str, Any]] = []
    compile_tv_kernel()
    for index, scene in enumerate(scenes):
        x = scene.cube[None]
        ideal = setup.noise.apply(nominal(x), index) if "I" in setup.scenarios else None
        drifted = None
        if setup.needs_mismatch:
            drifted = setup.noise.apply(
                simulate_measurement(x, mask, setup.mismatch, setup.step, *setup.oversample), index)
        for scenario in setup.scenarios:
            y = ideal if scenario == "I" else drifted
            if scenario == "III":
                start = time.perf_counter()
                estimate = calibrator(y, mask)
                calibration.append(_parameter_row(scene.name, estimate, setup.mismatch,
                                                  time.perf_counter() - start))
                op = CassiOperator(mask, bands, setup.step, estimate)
            else:
                op = oracle if scenario == "IV" else nominal
            pred, seconds = timed(method, y, op)
            row = result_row(scene.name, pred[0], scene.cube, seconds)
            rows[scenario].append(row)
            if on_result is not None:
                on_result(scenario, scene, pred[0], row)
    return summarize(rows, calibration, calibrator)


def _parameter_row(name: str, estimate: Mismatch, truth: Mismatch, seconds: float) -> dict[str, Any]:
    est, true = estimate.to_dict(), truth.to_dict()
    return {"name": name, "estimate": est, "error": {k: est[k] - true[k] for k in est}, "seconds": seconds}


def _ratio(num: float, den: float) -> float | None:
    return num / den if abs(den) > 1e-12 else None


def summarize(rows: dict[str, list[dict[str, Any]]], calibration: list[dict[str, Any]],
              calibrator: Calibrator | None) -> dict[str, Any]:
    """Per-scenario tables and means, Delta_deg, Delta_cal, recovery ratio and parameter errors."""
    means = {s: mean_row(r) for s, r in rows.items()}
    out: dict[str, Any] = {"scenarios": {s: {"description": SCENARIOS[s], "scenes": rows[s], "mean": means[s]}
                                         for s in rows}}
    comparison: dict[str, Any] = {}
    if "I" in means and "II" in means:
        comparison["delta_deg"] = {m: means["I"][m] - means["II"][m] for m in METRICS}
    if "III" in means and "II" in means:
        comparison["delta_cal"] = {m: means["III"][m] - means["II"][m] for m in METRICS}
    if {"II", "III", "IV"} <= set(means):
        comparison["recovery_ratio"] = {m: _ratio(means["III"][m] - means["II"][m], means["IV"][m] - means["II"][m])
                                        for m in METRICS}
    if comparison:
        out["comparison"] = comparison
    if calibration:
        names = calibration[0]["error"].keys()
        out["calibration"] = {
            "method": calibrator.description if calibrator is not None else {},
            "scenes": calibration,
            "mean_abs_error": {k: sum(abs(c["error"][k]) for c in calibration) / len(calibration) for k in names},
        }
    return out
