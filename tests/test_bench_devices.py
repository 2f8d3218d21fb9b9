"""benchmarks/bench_devices.py: the GPU check's argument handling and its answer on a machine without CUDA."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from benchmarks.bench_devices import largest_difference
from conftest import REPO


def test_unknown_parts_are_refused_naming_them():
    run = subprocess.run([sys.executable, "-m", "benchmarks.bench_devices", "--parts", "calib,warp"], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "unknown part(s) warp" in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_says_so_and_times_nothing(tmp_path):
    out = tmp_path / "devices.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.bench_devices", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 0 and "no CUDA device" in run.stdout and not out.exists()


def test_largest_difference_compares_the_five_parameters():
    a = {"estimate": {"dx": 0.1, "dy": 0.2, "theta": 0.0, "a1": 2.0, "alpha": 0.0}}
    b = {"estimate": {"dx": 0.1, "dy": 0.25, "theta": 0.01, "a1": 2.0, "alpha": -0.03}}
    assert largest_difference(a, b) == pytest.approx(0.05)
    assert largest_difference(a, {"rc": 1}) is None
