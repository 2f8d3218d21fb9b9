"""Entry points start fast (no heavy imports for --help) and refuse a device they do not have."""
from __future__ import annotations

import os
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


def test_training_imports_neither_the_calibration_pipeline_nor_numba():
    loaded = _loaded_after("import training.cli")
    assert not {"numba", "calib.pipeline", "calib.kernels", "cassi.gap_tv", "timm"} & loaded


def test_networks_do_not_import_timm():
    """timm's import loads its model zoo, huggingface_hub and wandb (~1 s): the networks use their own pieces."""
    loaded = _loaded_after("import models.mst, models.s2_transformer, models.crsdun, models.hsra, models.bisrnet, "
                           "models.hsra_unfolding; models.create_model('mst_s')")
    assert not {"timm", "huggingface_hub", "wandb"} & loaded


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


def test_a_cuda_device_computes_in_full_float32(monkeypatch):
    """check_device("cuda") turns TF32 off (cuDNN's default TF32 convolutions moved BiSRNet's PSNR on a GPU); a CPU
    device leaves the flags alone. CUDA is faked: the flags are plain settings on a CPU build too."""
    from cassi.devices import check_device

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        check_device("cpu")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        assert check_device("cuda").type == "cuda"
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_strict_float32_changes_only_a_cuda_device():
    """What train.py test / predict call with the trainer's device, so that on a GPU they give eval.py's table: TF32
    off there; on the CPU nothing changes."""
    from cassi.devices import strict_float32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        strict_float32(torch.device("cpu"))
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        strict_float32(torch.device("cuda", 0))
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


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


# ------------------------------------------------------------------------------------ train.py --help
HELP_REQUESTS = (["--help"], ["fit", "--help"], ["validate", "-h"], ["test", "--help"], ["predict", "--help"])


def _lightningcli_help(argv: list[str], capsys) -> str:
    """What LightningCLI itself prints for ``train.py ARGV`` (no stored text involved)."""
    from unittest import mock

    from training.cli import main

    with mock.patch.object(sys, "argv", ["train.py"]), pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code in (0, None)
    return capsys.readouterr().out


def test_train_help_describes_this_project(capsys):
    """Was: 'Lightning Trainer command line tool'."""
    text = " ".join(_lightningcli_help(["--help"], capsys).split())
    assert "Train CASSI reconstruction networks" in text and "configs/smoke/" in text
    assert "Lightning Trainer command line tool" not in text


def test_train_help_answers_from_the_store_without_lightning_and_equals_lightningcli(tmp_path):
    """A fresh ``train.py fit --help`` stores LightningCLI's text; the next one prints it without importing
    Lightning or torch, byte for byte what LightningCLI printed. (Compared between the two fresh processes, not
    with this one, where test modules may have defined callback classes that LightningCLI would list.)"""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "100"}
    command = [sys.executable, "-X", "importtime", "train.py", "fit", "--help"]
    first, second = (subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
                     for _ in range(2))
    assert "pytorch_lightning" in first.stderr                      # built by LightningCLI
    imported = {line.split("|")[-1].strip() for line in second.stderr.splitlines() if "|" in line}
    assert not {"torch", "pytorch_lightning", "jsonargparse", "numpy", "training.cli"} & imported
    assert first.stdout == second.stdout
    assert "--trainer.max_epochs" in second.stdout and "--data.crop" in second.stdout


def test_stored_help_of_every_subcommand_is_lightningclis(tmp_path, monkeypatch, capsys):
    from training.cli import main
    from training.help_cache import print_help

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["train.py"])
    for argv in HELP_REQUESTS:
        expected = _lightningcli_help(argv, capsys)
        with pytest.raises(SystemExit):
            print_help(argv, lambda: main(argv))                       # built and stored
        assert capsys.readouterr().out == expected
        print_help(argv, lambda: pytest.fail("LightningCLI ran"))      # served from the store
        assert capsys.readouterr().out == expected, argv


def test_stored_help_is_rebuilt_when_what_made_it_changes(tmp_path, monkeypatch, capsys):
    """A changed module file, terminal width, ``PL_*`` variable or installed distribution makes the stored
    text stale; a help that failed is not stored."""
    from training.help_cache import print_help

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "100")
    source = tmp_path / "help_source_module.py"
    source.write_text("TEXT = 'first'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import help_source_module
    monkeypatch.setitem(sys.modules, "help_source_module", help_source_module)
    builds = []

    def build():
        import importlib
        builds.append(importlib.reload(help_source_module).TEXT)
        print(builds[-1])
        raise SystemExit(0)

    def request(argv=("fit", "--help")) -> str:
        try:
            print_help(list(argv), build)
        except SystemExit:
            pass
        return capsys.readouterr().out

    assert request() == "first\n" and request() == "first\n" and builds == ["first"]
    source.write_text("TEXT = 'second, longer'\n")
    assert request() == "second, longer\n" and request() == "second, longer\n" and len(builds) == 2
    monkeypatch.setenv("COLUMNS", "120")
    request()
    monkeypatch.setenv("PL_FIT__TRAINER__MAX_EPOCHS", "3")
    request()
    (tmp_path / "newpackage-1.0.dist-info").mkdir()
    request()
    assert request() == "second, longer\n" and len(builds) == 5

    def failing():
        print("usage: ...")
        raise SystemExit(2)

    for _ in range(2):
        with pytest.raises(SystemExit):
            print_help(["nosuchcommand", "--help"], failing)
    assert capsys.readouterr().out == "usage: ...\nusage: ...\n"


def test_only_bare_help_requests_are_served_from_the_store():
    from training.help_cache import is_help_request

    assert all(is_help_request(argv) for argv in HELP_REQUESTS)
    for argv in ([], ["fit"], ["fit", "--config", "c.yaml", "--help"], ["--config", "--help"],
                 ["fit", "--model.help", "ReconstructionModule"], ["-c", "c.yaml", "--help"]):
        assert not is_help_request(argv), argv
