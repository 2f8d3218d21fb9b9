"""benchmarks/bench_calibrated_eval.py's summary line."""
from __future__ import annotations

from benchmarks.bench_calibrated_eval import recovery_line
from evaluation.scenarios import UNDEFINED, recovery_ratio


def test_an_undefined_recovery_is_printed_with_its_reason():
    """It crashed with a TypeError (formatting None) when IV - II was below the gap floor or negative."""
    ratio, why = recovery_ratio("psnr", 0.002, 0.003)
    assert ratio is None
    results = {"comparison": {"recovery_ratio": {"psnr": ratio}}, UNDEFINED: {"recovery_ratio": {"psnr": why}}}
    assert recovery_line(results) == f"recovery (III - II) / (IV - II) of the mean PSNR: undefined ({why})"
    ratio, _ = recovery_ratio("psnr", 1.0, 2.0)
    assert recovery_line({"comparison": {"recovery_ratio": {"psnr": ratio}}}).endswith(": 0.500")
