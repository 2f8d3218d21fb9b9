"""The calibration's GPU path, run without a GPU.

On a CUDA device every placement sum of the calibration forward model runs as torch ops
(``calib.placement``, backend "torch"); on the CPU the numba kernels do. ``CASSI_PLACEMENT_BACKEND=torch``
makes the CPU take the torch path too, so the whole of ``calib.calibrate`` -- search and model
selection, refinement, status tests, the instrument operator of the solver check -- runs the code a
GPU runs, here with the numba placement kernels made to fail if called. The meta device (shapes, no
values) checks that the instrument operator keeps its tensors on the device it is moved to.
"""
from __future__ import annotations

import pytest
import torch

from calib import calibrate, kernels
from calib.instrument import InstrumentOperator
from calib.placement import BACKEND_VARIABLE, default_backend
from calib.search import SearchSettings
from cassi import Mismatch
from data.synthetic import random_mask
from test_calib_pipeline import measure
from test_calib_status import NEAR, QUICK, TRUTH

# the torch ops on the CPU are ~40x slower than the numba kernels: a small search (42 + 18 candidates)
SMALL = {**QUICK, "ranges": NEAR, "search": SearchSettings(beams=2, a1_points=3, alpha_points=3, polish_rounds=1),
         "solver_check": True}

NUMBA_KERNELS = ("place", "pick", "mask_products", "effective_masks", "subspace_normal", "subspace_cg")


def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch placement ops on the CPU; any call of a numba placement kernel fails."""
    monkeypatch.setenv(BACKEND_VARIABLE, "torch")

    def refuse(*args, **kwargs):
        raise AssertionError("a numba placement kernel ran on the torch path")

    for name in NUMBA_KERNELS:
        monkeypatch.setattr(kernels, name, refuse)


def test_the_environment_chooses_the_cpu_backend(monkeypatch):
    assert default_backend("cpu") == "numba" and default_backend("cuda") == "torch"
    monkeypatch.setenv(BACKEND_VARIABLE, "torch")
    assert default_backend("cpu") == "torch"
    monkeypatch.setenv(BACKEND_VARIABLE, "gpu")
    with pytest.raises(ValueError, match=f"{BACKEND_VARIABLE}='gpu'"):
        default_backend("cpu")


def test_the_whole_calibration_on_the_torch_path_gives_the_numba_estimate(monkeypatch):
    y, mask = measure(48, TRUTH)
    cpu = calibrate(y, mask, **SMALL)
    with monkeypatch.context() as patch:
        torch_path(patch)
        gpu_code = calibrate(y, mask, **SMALL)
    assert gpu_code.settings["device"] == "cpu"
    assert gpu_code.status == cpu.status, (gpu_code.reasons, cpu.reasons)
    for name, value in cpu.estimate.to_dict().items():     # px, deg, px/band (the benchmark's tolerances: 0.01-0.15)
        assert abs(gpu_code.estimate.to_dict()[name] - value) < 2e-3, (name, gpu_code.estimate, cpu.estimate)
    assert abs(cpu.estimate.dx - TRUTH.dx) < 0.3 and abs(cpu.estimate.dy - TRUTH.dy) < 0.3
    assert gpu_code.score == pytest.approx(cpu.score, rel=1e-3)
    for key in ("residual_nominal", "residual_calibrated"):
        assert gpu_code.checks[key] == pytest.approx(cpu.checks[key], rel=1e-3)
    for name, test in cpu.tests.items():
        for key, value in test.items():
            assert gpu_code.tests[name][key] == pytest.approx(value, rel=1e-2, abs=1e-4), (name, key)


def _instrument_outputs(op: InstrumentOperator, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    return [op(x), op.adjoint(y), op.phi, op.mask3d, op.back_project(y)]


def test_the_instrument_operator_on_the_torch_path_equals_the_numba_path(monkeypatch):
    mask = torch.from_numpy(random_mask(12, 10, seed=3)).double()
    drift = Mismatch(dx=0.3, dy=-0.2, theta=0.4, a1=2.02, alpha=0.5)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 28, 12, 10, generator=gen, dtype=torch.float64)
    y = torch.rand(1, 12, 10 + 54, generator=gen, dtype=torch.float64)
    expected = _instrument_outputs(InstrumentOperator(mask, mismatch=drift, spatial=2, spectral=2), x, y)
    with monkeypatch.context() as patch:
        torch_path(patch)
        got = _instrument_outputs(InstrumentOperator(mask, mismatch=drift, spatial=2, spectral=2), x, y)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_instrument_operator_follows_its_device():
    """Built on the CPU, moved with ``.to``: models, read-out and planes are rebuilt on the new device
    (the meta device stands in for a GPU: mixing its tensors with CPU tensors fails)."""
    op = InstrumentOperator(torch.from_numpy(random_mask(12, 10, seed=3)), mismatch=Mismatch(dx=0.3, alpha=0.5),
                            spatial=2, spectral=1)
    op.phi, op.mask3d                                               # cached on the CPU first
    op = op.to("meta")
    x, y = torch.zeros(2, 28, 12, 10, device="meta"), torch.zeros(2, 12, 10 + 54, device="meta")
    shapes = [(2, 12, 64), (2, 28, 12, 10), (1, 28, 12, 64), (1, 28, 12, 10), (2, 28, 12, 10)]
    for out, shape in zip(_instrument_outputs(op, x, y), shapes):
        assert out.device.type == "meta" and tuple(out.shape) == shape
