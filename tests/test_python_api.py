"""The Python API as README's "Python API" shows it: numpy inputs get errors that say what to pass."""
from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
import torch

from cassi import CassiOperator
from cassi.gap_tv import gap_tv
from cassi.metrics import kaist_metrics, psnr
from cassi.simulator import simulate_measurement
from conftest import REPO, SHARED, shared_path


@pytest.fixture
def op() -> CassiOperator:
    return CassiOperator(np.ones((8, 6), dtype=np.float32), bands=4, step=2)   # a numpy mask is taken as it is


def test_numpy_inputs_are_refused_naming_the_tensor_to_pass(op):
    cube, y = np.zeros((1, 4, 8, 6), dtype=np.float32), np.zeros((1, 8, 6 + 2 * 3), dtype=np.float32)
    calls = {"CassiOperator.forward": lambda: op(cube), "CassiOperator.adjoint": lambda: op.adjoint(y),
             "CassiOperator.input_setting": lambda: op.input_setting(y), "gap_tv": lambda: gap_tv(y, op),
             "simulate_measurement": lambda: simulate_measurement(cube, torch.ones(8, 6)),
             "psnr": lambda: psnr(cube, cube), "kaist_metrics": lambda: kaist_metrics(cube[0], cube[0])}
    for name, call in calls.items():
        with pytest.raises(TypeError, match=r"must be a torch\.Tensor \(.*got numpy\.ndarray.*torch\.from_numpy"):
            call()
        print(name, "refused")


def test_simulate_measurement_takes_a_numpy_mask_as_the_operator_does():
    """CassiOperator took a numpy mask, simulate_measurement refused the same array with a TypeError."""
    mask = np.random.default_rng(0).random((8, 6)) > 0.5                    # boolean numpy, as a file may hold
    cube = torch.rand(1, 4, 8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = CassiOperator(mask, bands=4, step=2)(cube)
    assert torch.equal(simulate_measurement(cube, mask), expected)
    assert torch.equal(simulate_measurement(cube, torch.from_numpy(mask).double()), expected)
    oversampled = simulate_measurement(cube, mask, spatial=2, spectral=2)
    assert torch.equal(oversampled, simulate_measurement(cube, torch.from_numpy(mask).float(), spatial=2, spectral=2))


def test_from_cassi_import_gap_tv_is_the_module_as_the_readme_says():
    """cassi exports no function under a submodule's name: once ``cassi.gap_tv`` is imported the attribute is the
    module, so an exported function would depend on import order (benchmarks/bench_startup.py reads the module)."""
    import cassi
    import cassi.gap_tv as module
    from cassi import gap_tv as imported

    assert imported is module and callable(module.gap_tv) and not set(cassi.__all__) & {"gap_tv", "metrics"}


def test_cube_shape_errors_say_how_to_fix_the_axes(op):
    cube = torch.zeros(4, 8, 6)
    with pytest.raises(ValueError, match=r"got shape \(4, 8, 6\) \(add a batch dimension: x\[None\]\)"):
        op(cube)
    with pytest.raises(ValueError, match=r"\(a \(B, H, W, L\) cube\? x\.permute\(0, 3, 1, 2\)\)"):
        op(cube.permute(1, 2, 0)[None])
    assert op(cube[None]).shape == (1, 8, 6 + 2 * 3)


def readme_python_api_example() -> str:
    """The ```python block of README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Python API\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.search(r"\n```python\n(.*?)\n```\n", section, re.S).group(1)


def test_the_readme_python_api_example_runs_as_written(tmp_path, monkeypatch):
    for part in ("data/kaist/mask.mat", "weights/bisrnet_simulation.pth", "data/kaist_meas/scene01_snapshot.npz"):
        shared_path(*part.split("/"))
    code = readme_python_api_example()
    assert code.count('"../shared/') == 3, "the example reads the KAIST mask, a snapshot and the weights"
    monkeypatch.chdir(tmp_path)          # its calibrate.py outputs go to ./cal
    namespace: dict = {}
    exec(compile(code.replace('"../shared/', f'"{SHARED}/'), "README.md (Python API)", "exec"), namespace)
    assert tuple(namespace["y"].shape) == (1, 64, 64 + 2 * 27)
    assert isinstance(namespace["calibrated"], CassiOperator) and (tmp_path / "cal" / "calibration.json").is_file()
    assert tuple(namespace["cube_kaist"].shape) == (1, 28, 256, 256)


@pytest.mark.parametrize("package, name", [("cassi", "CassiOperator"), ("calib", "calibrate"),
                                           ("data", "load_mask"), ("training", "CassiModule")])
def test_dir_lists_a_packages_exports_before_they_load(package, name):
    """A notebook's tab completion and help() read dir(): the lazily loaded names were missing from it."""
    module = importlib.import_module(package)
    assert name in dir(module) and name in module.__all__ and "__doc__" in dir(module)
