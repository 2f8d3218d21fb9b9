"""Entry points start fast (no heavy imports for --help) and refuse a device they do not have."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"import sys; {code}; print(' '.join(sorted(sys.modules)))"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("entry", ["calibrate", "eval"])
def test_help_needs_neither_torch_nor_the_project(entry):
    loaded = _loaded_after(f"import {entry}; {entry}.build_parser().format_help()")
    assert not {"torch", "numpy", "numba", "calib", "cassi.operator", "evaluation", "data"} & loaded


def test_file_readers_do_not_import_lightning():
    loaded = _loaded_after("import data.io, data.synthetic")
    assert not {"pytorch_lightning", "lightning", "lightning_fabric"} & loaded


def test_gap_tv_evaluation_does_not_load_the_networks():
    """The architectures (and timm) load on the registry's first lookup, not with ``models.release``."""
    loaded = _loaded_after("import evaluation.kaist, evaluation.real, evaluation.calibration, calib.solvers")
    assert not {"timm", "models.mst", "models.bisrnet", "pytorch_lightning"} & loaded
    import models
    assert {"mst_s", "bisrnet", "s2_transformer", "hsra_s", "crsdun_3stg", "hsra_dum_3stg"} <= set(models.list_models())


def test_data_package_still_exports_the_datamodule():
    import data
    assert data.CassiDataModule.__name__ == "CassiDataModule"
    with pytest.raises(AttributeError):
        data.no_such_name


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tpu"])
def test_calibrate_refuses_a_missing_device_before_any_work(tmp_path, device):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "calibrate.py", "--meas", str(tmp_path / "missing.npz"), "--mask",
                          str(tmp_path / "missing.mat"), "--out", str(out), "--device", device],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calibrate.py calibrate: error: --device"), run.stderr
    assert device in lines[0]
    assert "missing" not in run.stderr                      # refused before the files were read
    assert not out.exists()


def test_check_solver_reports_the_gap_tv_residual(tmp_path, capsys):
    import json

    import numpy as np

    import calibrate
    from cassi import Mismatch
    from cassi.simulator import simulate_measurement
    from data.synthetic import random_mask, synthetic_scene

    cube, _ = synthetic_scene(32, 32, 28, seed=1)
    mask = random_mask(32, 32, seed=2)
    y = simulate_measurement(torch.from_numpy(cube)[None], torch.from_numpy(mask), Mismatch(dx=0.4), 2, 4, 2)
    np.savez(tmp_path / "y.npz", y=y[0].numpy())
    np.save(tmp_path / "mask.npy", mask)
    files = calibrate.main(["--meas", str(tmp_path / "y.npz"), "--mask", str(tmp_path / "mask.npy"), "--out",
                            str(tmp_path / "out"), "--check-solver", "--device", "cpu", "--no-progress"])
    assert "gap_tv fit residual" in capsys.readouterr().out
    checks = json.loads(files["json"].read_text())["checks"]
    assert checks["solver"] == "gap_tv" and 0 < checks["residual_nominal"] < 1


NUMBA_MODULES = ("calib.kernels", "cassi.gap_tv")
FIRST_CALL = """
import numba, torch
from calib import kernels
from calib.placement import PlacementIndex
kernels.place(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), PlacementIndex([0, 1], [0, 1], [0, 2]), 6)
stats = [f.stats for f in vars(kernels).values() if isinstance(f, numba.core.dispatcher.Dispatcher)]
print(sum(sum(s.cache_hits.values()) for s in stats), sum(sum(s.cache_misses.values()) for s in stats))
"""


def test_numba_kernels_are_cached_on_disk_between_runs():
    """Every numba kernel called from Python is compiled with cache=True, and a fresh process loads the
    placement kernel from numba's on-disk cache instead of compiling it (numba reports a cache hit)."""
    import importlib

    import numba

    kernels = [f for name in NUMBA_MODULES for f in vars(importlib.import_module(name)).values()
               if isinstance(f, numba.core.dispatcher.Dispatcher) and f.targetoptions.get("inline") != "always"]
    assert len(kernels) >= 10 and all(f.stats.cache_path is not None for f in kernels), \
        [f.__name__ for f in kernels if f.stats.cache_path is None]
    for _ in range(2):                                     # the first run may compile and write the cache
        out = subprocess.run([sys.executable, "-c", FIRST_CALL], cwd=REPO, capture_output=True, text=True, check=True)
    hits, misses = (int(v) for v in out.stdout.split())
    assert hits >= 1 and misses == 0, out.stdout
