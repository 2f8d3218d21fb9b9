"""The Python API as README's "Python API" shows it: numpy inputs get errors that say what to pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cassi import CassiOperator
from cassi.gap_tv import gap_tv
from cassi.metrics import kaist_metrics, psnr
from cassi.simulator import simulate_measurement


@pytest.fixture
def op() -> CassiOperator:
    return CassiOperator(np.ones((8, 6), dtype=np.float32), bands=4, step=2)   # a numpy mask is taken as it is


def test_numpy_inputs_are_refused_naming_the_tensor_to_pass(op):
    cube = np.zeros((1, 4, 8, 6), dtype=np.float32)
    calls = {"CassiOperator.forward": lambda: op(cube), "CassiOperator.adjoint": lambda: op.adjoint(cube[:, 0]),
             "gap_tv": lambda: gap_tv(cube[:, 0, :, :], op),
             "simulate_measurement": lambda: simulate_measurement(cube, torch.ones(8, 6)),
             "psnr": lambda: psnr(cube, cube), "kaist_metrics": lambda: kaist_metrics(cube[0], cube[0])}
    for name, call in calls.items():
        with pytest.raises(TypeError, match=r"must be a torch\.Tensor \(.*got numpy\.ndarray.*torch\.from_numpy"):
            call()
        print(name, "refused")


def test_cube_shape_errors_say_how_to_fix_the_axes(op):
    cube = torch.zeros(4, 8, 6)
    with pytest.raises(ValueError, match=r"got shape \(4, 8, 6\) \(add a batch dimension: x\[None\]\)"):
        op(cube)
    with pytest.raises(ValueError, match=r"\(a \(B, H, W, L\) cube\? x\.permute\(0, 3, 1, 2\)\)"):
        op(cube.permute(1, 2, 0)[None])
    assert op(cube[None]).shape == (1, 8, 6 + 2 * 3)
