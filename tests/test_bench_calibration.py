"""``benchmarks.bench_calibration``'s scenario-III calibrator meets the scenarios' ``Calibrator`` protocol: its
III-model goes through the forward model each scene's calibration chose (``python -m benchmarks.bench_calibration``
stopped at its first scene with ``AttributeError: 'TimedCalibrator' object has no attribute
'mask_interpolation'``)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

import benchmarks.bench_calibration as bench
from cassi import Mismatch
from evaluation.scenarios import _scene_model


def test_timed_calibrator_records_each_scenes_forward_model(monkeypatch):
    chosen = {"scene_a": ([1, 1], "linear"), "scene_b": ([4, 2], "linear")}

    def fake_calibrate(y, mask, **kwargs):
        oversample, reading = chosen[fake_calibrate.scene]
        return SimpleNamespace(estimate=Mismatch(dx=torch.tensor(0.5), dy=0.0, theta=0.0, a1=2.0, alpha=0.0),
                               settings={"oversample": oversample, "mask_interpolation": reading}, code=None)

    monkeypatch.setattr(bench, "calibrate", fake_calibrate)
    calibrator = bench.TimedCalibrator(cli=False)
    y, mask = torch.zeros(1, 8, 62), torch.ones(8, 8)
    for scene in chosen:
        fake_calibrate.scene = scene
        estimate = calibrator(y, mask, scene)
        assert estimate.dx == 0.5 and isinstance(estimate.dx, float)
    for scene, (oversample, reading) in chosen.items():
        assert _scene_model(calibrator, scene) == {"oversample": oversample, "mask_interpolation": reading}
    assert calibrator.model_frames == {}
