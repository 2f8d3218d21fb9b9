"""Bad input and faults (issue 15, issue 14 item 5): one clear line and exit code 2 before any work, physical
validity checks, and outputs written as one unit (nothing lost, nothing mixed, nothing half-written).

Every CLI case checks the exit code, that stderr is one ``error:`` line naming the file / key / shape /
option, and that no output was written. Inputs are 32 x 32 (64 x 64 where the size matters) files made here.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from safetensors.torch import load_file, save_file

import calibrate
from cassi import CassiOperator, Mismatch
from cassi.checks import check_instrument, check_measurement, check_mismatch, light_fraction
from cassi.errors import OutputConflict, UserError, cli_errors, one_line
from cassi.files import OutputFolder, umask_mode
from cassi.gap_tv import gap_tv
from cassi.operator_file import save_operator
from cli_checks import user_error
from data.io import load_cube, load_mask
from data.kaist import synthetic_mask
from data.synthetic import random_mask, synthetic_scene
from models import create_model, load_release
from models.release import ReleaseError, open_release, state_dict_sha256
from training.cli import AtomicCheckpointIO
from training.cli import main as train_main
from training.simulation import Instrument

eval_cli = importlib.import_module("eval")
REPO = Path(__file__).resolve().parents[1]
SIZE = 32
KAIST_NET = ["kaist", "--synthetic.count", "1", "--synthetic.size", str(SIZE), "--previews", "0"]   # no GAP-TV option
KAIST = [*KAIST_NET[:-2], "--gap.iterations", "2", *KAIST_NET[-2:]]


def ev(*argv) -> int:
    return eval_cli.main([str(a) for a in argv])


def cal(*argv):
    return calibrate.main([str(a) for a in argv])


def train(*argv):
    return train_main([str(a) for a in argv])


def nothing_written(folder: Path) -> bool:
    """No output and no staging folder next to it."""
    return not folder.exists() and not list(folder.parent.glob(f".{folder.name}.*"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Small valid inputs, and broken variants of them."""
    d = tmp_path_factory.mktemp("inputs")
    cube, _ = synthetic_scene(SIZE, SIZE, 28, seed=3)
    mask = random_mask(SIZE, SIZE, seed=2)
    np.savez(d / "cube.npz", cube=cube)
    np.savez(d / "negcube.npz", cube=-cube)
    np.savez(d / "cube300.npz", cube=cube * 300)
    np.savez(d / "uint16_300.npz", cube=(cube * 300).astype(np.uint16))
    np.savez(d / "cube8.npz", cube=(cube * 255).astype(np.uint8))
    scipy.io.savemat(d / "mask.mat", {"mask": mask})
    np.save(d / "mask255.npy", (mask * 255).astype(np.uint8))
    np.save(d / "zeromask.npy", np.zeros((SIZE, SIZE), np.float32))
    np.save(d / "mask16.npy", mask[:16, :16])
    y = CassiOperator(torch.from_numpy(mask))(torch.from_numpy(cube)[None])[0].numpy()
    np.savez(d / "y.npz", y=y)
    np.savez(d / "negy.npz", y=-y)
    (d / "afile").write_text("a regular file")
    # corrupt files: truncated, empty, random bytes (pickle-like), truncated v5 / v7.3 MATLAB
    raw = (d / "cube.npz").read_bytes()
    (d / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    np.save(d / "good.npy", mask)
    raw = (d / "good.npy").read_bytes()
    (d / "trunc.npy").write_bytes(raw[: len(raw) // 2])
    raw = (d / "mask.mat").read_bytes()
    (d / "trunc5.mat").write_bytes(raw[: len(raw) // 2])
    with h5py.File(d / "v73.mat", "w") as f:
        f.create_dataset("mask", data=mask.T)
    raw = (d / "v73.mat").read_bytes()
    (d / "trunc73.mat").write_bytes(raw[: len(raw) // 2])
    for name in ("empty.npz", "empty.npy", "empty.mat"):
        (d / name).write_bytes(b"")
    for name in ("random.npz", "random.npy", "random.mat"):
        (d / name).write_bytes(np.random.default_rng(0).bytes(4000))
    torch.save(create_model("mst_s").state_dict(), d / "mst_s.pth")
    return d


# ======================================================================================== 1. data loss
def test_export_force_never_deletes_its_input(files, tmp_path, capsys):
    """Issue: `eval.py export --force --out DIR` where DIR holds the --ckpt deleted the checkpoint."""
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "mst_s.pth").write_bytes((files / "mst_s.pth").read_bytes())
    assert ev("export", "--ckpt", folder / "mst_s.pth", "--model", "mst_s", "--mask", files / "mask.mat",
              "--out", tmp_path / "release") == 0
    (folder / "config.json").write_text("{}")                # even a folder that looks like a release
    user_error(capsys, lambda: ev("export", "--ckpt", folder / "mst_s.pth", "--model", "mst_s", "--mask",
                                  files / "mask.mat", "--force", "--out", folder),
               r"--force would delete the input .*mst_s.pth")
    assert (folder / "mst_s.pth").read_bytes() == (files / "mst_s.pth").read_bytes()
    user_error(capsys, lambda: ev("export", "--ckpt", tmp_path / "release", "--force", "--out", tmp_path / "release"),
               r"--force would delete the input .*release")
    assert load_release(tmp_path / "release") is not None


@pytest.mark.parametrize("call", [
    lambda f, out: cal("--meas", f / "y.npz", "--mask", f / "mask.mat", "--out", out),
    lambda f, out: cal("simulate", "--cube", f / "cube.npz", "--mask", f / "mask.mat", "--out", out / "y.npz"),
    lambda f, out: ev(*KAIST, "--out", out),
    lambda f, out: ev("real", "--data.root", f, "--out", out),
], ids=["calibrate", "simulate", "kaist", "real"])
def test_out_under_a_regular_file_fails_before_any_work(files, call, capsys):
    """Issue: a --out under a regular file failed with a traceback after the whole computation."""
    start = time.process_time()
    user_error(capsys, lambda: call(files, files / "afile" / "sub"), r"cannot write .*afile.* is a file")
    assert time.process_time() - start < 5


def test_summary_is_printed_before_a_file_write_fails(files, tmp_path, capsys, monkeypatch):
    """The estimate reaches the terminal even when writing the outputs fails (here: a full disk)."""
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("calib.outputs.save_operator", full_disk)         # what calibrate.py writes with
    with pytest.raises(OSError, match="No space"):
        cal("--meas", files / "y.npz", "--mask", files / "mask.mat", "--model-oversample", 1, 1, "--no-progress",
            "--out", tmp_path / "out")
    assert "estimate: dx=" in capsys.readouterr().out
    assert nothing_written(tmp_path / "out")


# ============================================================================= 2. outputs as one unit
def test_existing_out_needs_force_and_is_then_replaced_as_a_whole(tmp_path, capsys):
    """Issue: an existing --out was silently overwritten and stale previews stayed."""
    out = tmp_path / "run"
    assert ev(*KAIST[:-2], "--previews", "1", "--out", out) == 0
    assert (out / "previews" / "synthetic01.png").is_file()
    capsys.readouterr()                                      # that run's progress bar
    before = (out / "results.json").read_bytes()
    user_error(capsys, lambda: ev(*KAIST, "--out", out), r"--out .*run already exists and is not empty; pass --force")
    assert (out / "results.json").read_bytes() == before
    assert ev(*KAIST, "--synthetic.seed", 5, "--force", "--out", out) == 0
    assert not (out / "previews").exists()                   # the stale previews went with the old folder
    assert json.loads((out / "results.json").read_text())["data"]["description"].endswith("seed 5")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]   # no staging or old folder left
    capsys.readouterr()
    foreign = tmp_path / "mydata"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    user_error(capsys, lambda: ev(*KAIST, "--force", "--out", foreign), r"holds no results.json of an earlier run")
    assert (foreign / "notes.txt").read_text() == "precious"


def test_two_runs_finishing_on_the_same_out_do_not_mix(tmp_path):
    """The first run to finish takes --out; the second keeps its complete set elsewhere (exit 1)."""
    out = tmp_path / "out"
    first, second = OutputFolder(out, "results.json"), OutputFolder(out, "results.json")
    a, b = first.__enter__(), second.__enter__()             # both runs checked --out and started
    for folder, name in ((a, "A"), (b, "B")):
        (folder / "results.json").write_text(name)
        (folder / f"{name.lower()}.png").write_text(name)
    first.__exit__(None, None, None)                         # A finishes first and takes --out
    with pytest.raises(OutputConflict, match="outputs are in") as conflict:
        second.__exit__(None, None, None)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "results.json"]
    kept = Path(str(conflict.value).rsplit(" ", 1)[-1])
    assert sorted(p.name for p in kept.iterdir()) == ["b.png", "results.json"]
    assert (kept / "results.json").read_text() == "B"


def test_two_concurrent_cli_runs_leave_one_complete_set(files, tmp_path):
    """Two eval.py processes to the same --out: each ends refused (2), first (0) or kept aside (1); --out
    holds exactly one run's files."""
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, str(REPO / "eval.py"), *KAIST[:-2], "--previews", str(n),
                               "--synthetic.seed", str(n), "--out", str(out)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (0, 1)]
    codes = [p.wait(timeout=300) for p in procs]
    assert sorted(codes) in ([0, 1], [0, 2]), [p.stderr.read() for p in procs]
    results = json.loads((out / "results.json").read_text())
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == sorted(results["previews"])            # the PNGs are those of the run in results.json
    assert len(written) == 2 * int(results["data"]["description"].endswith("seed 1"))
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_the_previous_outputs_intact(files, tmp_path, sig):
    """Issue: SIGINT right after the JSON left a new JSON beside old PNGs."""
    out = tmp_path / "out"
    out.mkdir()
    previous = {"calibration.json": b'{"estimate": "previous"}', "landscape.png": b"old png"}
    for name, data in previous.items():
        (out / name).write_bytes(data)
    proc = subprocess.Popen([sys.executable, str(REPO / "calibrate.py"), "--meas", str(files / "y.npz"), "--mask",
                             str(files / "mask.mat"), "--no-progress", "--force", "--out", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)                                     # the staging folder exists: the work has begun
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("calibrate.py calibrate: interrupted")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_interrupt_inside_numbas_compiler_waits_until_it_returns(tmp_path):
    """Seen in CI: SIGTERM while numba compiled a kernel (llvmlite calls back into Python from native code, which
    swallows the interrupt and leaves LLVM half-built) ended in a RuntimeError traceback, an abort or a segfault
    instead of exit 130. The interrupt now waits until that code has returned. A stand-in compiler: code whose file
    lies in a folder named numba."""
    source = "def compile_step(kill):\n    kill()\n    end = time.time() + 0.3\n    while time.time() < end:\n" \
             "        pass\n    return 'compiled'\n"
    namespace = {"time": time}
    exec(compile(source, str(tmp_path / "numba" / "compiler.py"), "exec"), namespace)
    finished = []
    with pytest.raises(SystemExit) as stop:
        with cli_errors("prog"):
            finished.append(namespace["compile_step"](lambda: os.kill(os.getpid(), signal.SIGTERM)))
            time.sleep(5)                                  # the interrupt lands here, once the compiler returned
    assert stop.value.code == 130 and finished == ["compiled"]


def test_a_failure_after_a_swallowed_interrupt_exits_130(capsys):
    """After a signal a native callback swallowed, numba's compile failed ("no compiled object yet") and the run
    ended in that traceback (exit 1): whatever fails after a signal is the interrupt's doing. Without a signal
    the same error keeps its traceback."""
    with pytest.raises(SystemExit) as stop:
        with cli_errors("prog"):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            except KeyboardInterrupt:
                pass                                       # swallowed, as in a native callback
            raise RuntimeError("no compiled object yet")
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().startswith("prog: interrupted")
    with pytest.raises(RuntimeError, match="no compiled object"):
        with cli_errors("prog"):
            raise RuntimeError("no compiled object yet")


def test_a_swallowed_interrupt_still_exits_130_and_publishes_nothing(tmp_path, capsys):
    """Seen under load: Ctrl-C during numba's compilation raised inside a native callback, Python printed
    "Exception ignored" and the run went on to write its outputs and exit 0."""
    with pytest.raises(SystemExit) as stop:
        with cli_errors("prog"):
            with OutputFolder(tmp_path / "out", "x.json") as staging:
                (staging / "x.json").write_text("{}")
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(1)
                except KeyboardInterrupt:
                    pass                                   # swallowed, as in a native callback
    assert stop.value.code == 130
    assert "interrupted" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == []


def test_an_interrupt_while_force_replaces_the_outputs_waits_until_they_are_in_place(tmp_path, monkeypatch, capsys):
    """Was: Ctrl-C between --force's two renames left the earlier outputs in a hidden '.out.old-*' folder and removed
    the new ones (no outputs where the user looks). Now the renames finish first; the run still exits 130 and says
    where its outputs are."""
    from types import SimpleNamespace

    import cassi.files

    out = tmp_path / "out"
    out.mkdir()
    (out / "x.json").write_text('{"run": 1}')
    renames = []

    def rename_with_a_signal(src, dst):
        os.rename(src, dst)                                # the first try fails: out is not empty
        renames.append(Path(dst).parent.name)
        if Path(dst).parent.name.startswith(".out.old-"):
            os.kill(os.getpid(), signal.SIGINT)            # lands between --force's two renames

    monkeypatch.setattr(cassi.files, "os", SimpleNamespace(**{**vars(os), "rename": rename_with_a_signal}))
    with pytest.raises(SystemExit) as stop:
        with cli_errors("prog"):
            with OutputFolder(out, "x.json", force=True) as staging:
                (staging / "x.json").write_text('{"run": 2}')
    assert stop.value.code == 130 and renames[0].startswith(".out.old-") and len(renames) == 2
    assert (out / "x.json").read_text() == '{"run": 2}' and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert capsys.readouterr().err.strip() == f"prog: interrupted; this run's outputs were already written: {out}"


def test_an_interrupt_after_the_outputs_were_written_says_so(tmp_path, capsys):
    """Was: Ctrl-C after the outputs were renamed into place (while the summary was printed) said they were not
    written."""
    with pytest.raises(SystemExit) as stop:
        with cli_errors("prog"):
            with OutputFolder(tmp_path / "out", "x.json") as staging:
                (staging / "x.json").write_text("{}")
            raise KeyboardInterrupt
    assert stop.value.code == 130 and (tmp_path / "out" / "x.json").exists()
    assert capsys.readouterr().err.strip() == \
        f"prog: interrupted; this run's outputs were already written: {tmp_path / 'out'}"
    with pytest.raises(SystemExit):
        with cli_errors("prog"):                           # a new block forgets the last one's outputs
            raise KeyboardInterrupt
    assert "were not written" in capsys.readouterr().err


HALF_BUILT = """
import sys
sys.path.insert(0, {repo!r})
from cassi.errors import cli_errors

class PassManager:
    def __init__(self):
        raise KeyboardInterrupt("signal 2")         # Ctrl-C before the native handle is set
    def __del__(self):
        self._as_parameter_                          # llvmlite's dispose() then fails

def compile_kernel():
    manager = object.__new__(PassManager)
    manager.__init__()

with cli_errors("prog"):
    compile_kernel()
"""


def test_the_interrupted_line_is_the_last_even_when_the_interrupt_left_an_object_half_built(tmp_path):
    """CI, stop 19: Ctrl-C inside numba's compiler left an llvmlite pass manager half-built; its __del__
    error was printed after "interrupted", as the run's last line."""
    script = tmp_path / "half_built.py"
    script.write_text(HALF_BUILT.format(repo=str(REPO)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert "PassManager.__del__" in proc.stderr                # the object was freed inside the run
    assert proc.stderr.strip().splitlines()[-1].startswith("prog: interrupted"), proc.stderr


def test_output_files_have_the_usual_modes(files, tmp_path):
    """Issue: operator.npz and simulate outputs were written with mode 0600."""
    expected = umask_mode(0o666)
    assert cal("simulate", "--cube", files / "cube.npz", "--mask", files / "mask.mat", "--out", tmp_path / "y.npz")
    path = save_operator(tmp_path / "operator.npz", CassiOperator(torch.ones(4, 4)))
    for file in (tmp_path / "y.npz", path):
        assert file.stat().st_mode & 0o777 == expected, file
    with OutputFolder(tmp_path / "run", "results.json") as staging:
        (staging / "results.json").write_text("{}")
    assert (tmp_path / "run").stat().st_mode & 0o777 == umask_mode(0o777)


def test_force_replaces_any_kind_of_output_of_the_same_command(tmp_path):
    """calibrate.py writes calibration.json (joint) or calibrations.json (--separately): --force replaces
    either with the other; a folder holding neither is refused, naming both."""
    markers = ("calibration.json", "calibrations.json")
    (tmp_path / "separately").mkdir()
    (tmp_path / "separately" / "calibrations.json").write_text("{}")
    with OutputFolder(tmp_path / "separately", markers, force=True) as staging:
        (staging / "calibration.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "separately").iterdir()) == ["calibration.json"]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no calibration.json or calibrations.json of an earlier run"):
        OutputFolder(tmp_path / "foreign", markers, force=True)


def test_simulate_refuses_to_overwrite_without_force_or_to_replace_its_input(files, tmp_path, capsys):
    out = tmp_path / "y.npz"
    args = ["simulate", "--cube", files / "cube.npz", "--mask", files / "mask.mat"]
    assert cal(*args, "--out", out) == out
    user_error(capsys, lambda: cal(*args, "--out", out), r"y.npz already exists; pass --force")
    user_error(capsys, lambda: cal(*args, "--force", "--out", files / "cube.npz"), r"is the input .*cube.npz")
    assert np.load(files / "cube.npz")["cube"].shape == (28, SIZE, SIZE)


# ==================================================================== 3. silent wrong results, physics
SIM = ["simulate", "--cube", "{f}/cube.npz", "--mask", "{f}/mask.mat"]
PHYSICS_CASES = {
    "simulate dx=1e6 (mask off the detector)": ([*SIM, "--dx", "1e6"], r"moves the mask off the detector"),
    "simulate theta=90": ([*SIM, "--theta", "90"], r"\|theta\| = 90 deg exceeds 45"),
    "simulate alpha=-60": ([*SIM, "--alpha", "-60"], r"\|alpha\| = 60 deg exceeds 45"),
    "simulate a1=0": ([*SIM, "--a1", "0"], r"a1 = 0 means no dispersion"),
    "simulate read noise -1": ([*SIM, "--read-noise", "-1"], r"--read-noise: must be a finite number >= 0"),
    "simulate noise peak 0": ([*SIM, "--noise-peak", "0"], r"--noise-peak: must be a finite number > 0"),
    "simulate negative cube": (["simulate", "--cube", "{f}/negcube.npz", "--mask", "{f}/mask.mat"],
                               r"negcube.npz\['cube'\]: .* negative values"),
    "simulate cube max 300": (["simulate", "--cube", "{f}/cube300.npz", "--mask", "{f}/mask.mat"],
                              r"cube300.npz\['cube'\]: cannot tell the value scale"),
    "simulate uint16 cube max 300": (["simulate", "--cube", "{f}/uint16_300.npz", "--mask", "{f}/mask.mat"],
                                     r"uint16_300.npz\['cube'\]: cannot tell the value scale"),
    "simulate uint8 cube": (["simulate", "--cube", "{f}/cube8.npz", "--mask", "{f}/mask.mat"],
                            r"cube8.npz\['cube'\]: cannot tell the value scale.*rescale the file"),
    "simulate uint8 0/255 mask": (["simulate", "--cube", "{f}/cube.npz", "--mask", "{f}/mask255.npy"],
                                  r"mask255.npy: mask values go up to 255.*divide it by 255"),
    "calibrate all-negative measurement": (["--meas", "{f}/negy.npz", "--mask", "{f}/mask.mat"],
                                           r"negy.npz: no positive value"),
    "calibrate all-zero mask": (["--meas", "{f}/y.npz", "--mask", "{f}/zeromask.npy"],
                                r"zeromask.npy: the mask is zero everywhere"),
}


@pytest.mark.parametrize("argv,pattern", PHYSICS_CASES.values(), ids=PHYSICS_CASES.keys())
def test_calibrate_cli_refuses_impossible_input_before_any_work(files, tmp_path, capsys, argv, pattern):
    out = tmp_path / ("y.npz" if argv[0] == "simulate" else "out")
    start = time.process_time()
    user_error(capsys, lambda: cal(*[a.format(f=files) for a in argv], "--out", out), pattern)
    assert time.process_time() - start < 5 and nothing_written(out)


EVAL_CASES = {
    "mismatch dx=1e6": ([*KAIST, "--scenarios", "II", "--mismatch", "dx=1e6"], "moves the mask off the detector"),
    "mismatch theta=90": ([*KAIST, "--scenarios", "II", "--mismatch", "theta=90"], r"\|theta\| = 90 deg"),
    "mismatch a1=0": ([*KAIST, "--scenarios", "II", "--mismatch", "a1=0"], "a1 = 0 means no dispersion"),
    "noise.read -1": ([*KAIST, "--noise.read", "-1"], r"--noise.read: must be a finite number >= 0"),
    "limit 0": ([*KAIST, "--limit", "0"], r"--limit: must be a positive integer, got 0"),
    "limit -1": ([*KAIST, "--limit", "-1"], r"--limit: must be a positive integer, got -1"),
    "threads -1": (["--threads", "-1", *KAIST], r"--threads: must be a positive integer"),
    "negative ground truth": (["kaist", "--data.root", "{f}/negtruth"], r"scene01.mat\['img'\]: .* negative values"),
    "31-band operator file": ([*KAIST, "--scenarios", "II,III", "--operator", "{f}/op31.npz"],
                              r"op31.npz: the operator has 31 bands and step 2, the evaluation 28 bands"),
    "operator with another mask": ([*KAIST, "--scenarios", "II,III", "--operator", "{f}/opother.npz"],
                                   r"opother.npz: the operator's mask has the evaluation mask's shape \(32, 32\) "
                                   r"but other values"),
    "operator with array-valued dx": ([*KAIST, "--scenarios", "II,III", "--operator", "{f}/oparray.npz"],
                                      r"oparray.npz: key 'dx' must be a single float value, got .* shape \(2,\)"),
    "operator given a .mat": ([*KAIST, "--scenarios", "II,III", "--operator", "{f}/mask.mat"],
                              r"mask.mat: not an \.npz operator file written by calibrate.py \(an \.npz is a zip "
                              r"archive and this \.mat file is not one\)$"),
    "operator given a .json": ([*KAIST, "--scenarios", "II,III", "--operator", "{f}/dxnull.json"],
                               r"--operator .*dxnull.json: a calibration JSON, not an operator \.npz; pass it with "
                               r"--calibration .*dxnull.json$"),
    "calibration.json with dx null": ([*KAIST, "--scenarios", "II,III", "--calibration", "{f}/dxnull.json"],
                                      r"dxnull.json: mismatch parameter dx must be a number \(px\), got None"),
    "calibration.json with theta 90": ([*KAIST, "--scenarios", "II,III", "--calibration", "{f}/theta90.json"],
                                       r"scenario III estimate from .*theta90.json: \|theta\| = 90 deg"),
    "real all-zero capture": (["real", "--data.root", "{f}/real_zero"],
                              r"real_zero/scene1.mat\['meas_real'\]: no positive value"),
    "real sign-flipped capture": (["real", "--data.root", "{f}/real_flipped"],
                                  r"real_flipped/scene1.mat\['meas_real'\]: the measurement sums to -\d.* so it looks "
                                  r"sign-flipped"),
    "real scale 0": (["real", "--data.root", "{f}/real_ok", "--scale", "0"], r"--scale: must be a finite number > 0"),
    "real limit 0": (["real", "--data.root", "{f}/real_ok", "--limit", "0"], r"--limit: must be a positive integer"),
    "export NaN weights": (["export", "--ckpt", "{f}/nan.pth", "--model", "mst_s", "--mask", "{f}/mask.mat"],
                           r"1 tensor\(s\) hold NaN or Inf values"),
}


@pytest.fixture(scope="module")
def eval_files(files) -> Path:
    mask = torch.from_numpy(load_mask(files / "mask.mat"))
    (files / "negtruth" / "Truth").mkdir(parents=True)
    scipy.io.savemat(files / "negtruth" / "Truth" / "scene01.mat",
                     {"img": -np.load(files / "cube.npz")["cube"].transpose(1, 2, 0)})
    scipy.io.savemat(files / "negtruth" / "mask.mat", {"mask": mask.numpy()})
    synthetic = synthetic_mask(SIZE, SIZE, 0)                 # the mask of KAIST's synthetic scenes
    save_operator(files / "op31.npz", CassiOperator(synthetic, bands=31))
    save_operator(files / "opother.npz", CassiOperator(synthetic_mask(SIZE, SIZE, 5)))
    arrays = dict(np.load(files / "opother.npz"))
    np.savez(files / "oparray.npz", **{**arrays, "mask": synthetic.numpy(), "dx": np.array([1.0, 2.0])})
    (files / "dxnull.json").write_text(json.dumps({"estimate": {"dx": None, "dy": 0.1}}))
    (files / "theta90.json").write_text(json.dumps({"estimate": {"theta": 90.0}}))
    y_ok = np.load(files / "y.npz")["y"]
    flipped = -y_ok + 0.02 * y_ok.max() * np.random.default_rng(0).standard_normal(y_ok.shape, np.float32)
    for name, y in (("real_zero", np.zeros((SIZE, SIZE + 54), np.float32)), ("real_ok", y_ok),
                    ("real_flipped", flipped)):
        (files / name).mkdir()
        scipy.io.savemat(files / name / "mask.mat", {"mask": mask.numpy()})
        scipy.io.savemat(files / name / "scene1.mat", {"meas_real": y})
    state = create_model("mst_s").state_dict()
    state["mapping.weight"] = torch.full_like(state["mapping.weight"], float("nan"))
    torch.save(state, files / "nan.pth")
    return files


@pytest.mark.parametrize("argv,pattern", EVAL_CASES.values(), ids=EVAL_CASES.keys())
def test_eval_cli_refuses_impossible_input_before_any_work(eval_files, tmp_path, capsys, argv, pattern):
    out = tmp_path / "out"
    start = time.process_time()
    user_error(capsys, lambda: ev(*[a.format(f=eval_files) for a in argv], "--out", out), pattern)
    assert time.process_time() - start < 5 and nothing_written(out)


def test_physical_warnings_are_recorded_in_the_outputs(eval_files, tmp_path):
    """Possible but doubtful: a shift that moves most of the mask off the detector, large negative counts."""
    out = tmp_path / "kaist"
    assert ev(*KAIST, "--scenarios", "II", "--mismatch", "dx=20", "--out", out) == 0
    warnings = json.loads((out / "results.json").read_text())["warnings"]
    assert len(warnings) == 1 and "of the light through the mask reaches the detector" in warnings[0]
    assert "**warning**" in (out / "results.md").read_text()
    root = eval_files / "real_negative"
    root.mkdir()
    y = np.load(eval_files / "y.npz")["y"]
    scipy.io.savemat(root / "mask.mat", {"mask": load_mask(eval_files / "mask.mat")})
    scipy.io.savemat(root / "scene1.mat", {"meas_real": y - 0.1 * y.max()})     # a positive total still
    assert ev("real", "--data.root", root, "--gap.iterations", 2, "--no-previews", "--out", tmp_path / "real") == 0
    warnings = json.loads((tmp_path / "real" / "results.json").read_text())["warnings"]
    assert len(warnings) == 1 and "photon counts are not negative beyond read noise" in warnings[0]


def test_physical_checks_of_the_api():
    mask = torch.from_numpy(random_mask(SIZE, SIZE, seed=1))
    assert light_fraction(CassiOperator(mask)) == pytest.approx(1.0)
    check_mismatch(Mismatch(a1=-2.0))                       # a mirrored disperser is valid...
    assert check_instrument(CassiOperator(mask, mismatch=Mismatch(a1=-2.0))) == []   # ...and loses no light
    for bad, pattern in ((Mismatch(a1=0.0), "a1 = 0"), (Mismatch(theta=46.0), r"\|theta\|"),
                         (Mismatch(alpha=-90.0), r"\|alpha\|"), (Mismatch(dx=float("inf")), "not finite")):
        with pytest.raises(UserError, match=pattern):
            check_mismatch(bad)
    assert re.search(r"only 3\d % of the light", check_instrument(CassiOperator(mask, mismatch=Mismatch(dx=20.0)))[0])
    with pytest.raises(UserError, match="off the detector"):
        check_instrument(CassiOperator(mask, mismatch=Mismatch(dy=-40.0)))
    assert check_measurement(torch.rand(4, 4) - 0.01) == []  # read noise: small negative values are fine
    with pytest.raises(UserError, match="no positive value"):
        check_measurement(torch.zeros(4, 4))
    # sign-flipped (-y with read noise: a few pixels positive): was only the warning of large negative values
    y = torch.rand(SIZE, SIZE + 54, generator=torch.Generator().manual_seed(0)) * 3
    flipped = -y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    assert float(flipped.max()) > 0
    with pytest.raises(UserError, match=r"^scene1\.mat\['meas_real'\]: the measurement sums to -4\d\d\d \(values in "
                                        r"\[-3\.\d+, 0\.\d+\]\): photon counts add up to the light that reached the "
                                        r"detector, a positive total, so it looks sign-flipped \(-y\) or a too large "
                                        r"background was subtracted$"):
        check_measurement(flipped, "scene1.mat['meas_real']")


API_CASES = {
    "gap_tv with a 2-D y": (lambda f: gap_tv(torch.rand(SIZE, SIZE + 54), CassiOperator(torch.ones(SIZE, SIZE))),
                            r"measurement must be \(B, 32, 86\), got shape \(32, 86\) \(add a batch dimension"),
    "CassiOperator on a uint8 cube": (lambda f: CassiOperator(torch.ones(SIZE, SIZE))(
        torch.full((1, 28, SIZE, SIZE), 200, dtype=torch.uint8)), r"cube must be a floating-point tensor, got torch.uint8"),
    "create_model('mst_s', dim=0)": (lambda f: create_model("mst_s", dim=0),
                                     r"cannot build model 'mst_s' with \{'dim': 0\}: ZeroDivisionError"),
    "create_model('mst_s', foo=1)": (lambda f: create_model("mst_s", foo=1), r"unexpected keyword argument 'foo'"),
    "Mismatch.from_dict dx=None": (lambda f: Mismatch.from_dict({"dx": None}), r"dx must be a number \(px\), got None"),
    "training Instrument with a1=0": (lambda f: Instrument(mismatch={"a1": 0.0}), r"a1 = 0 means no dispersion"),
    "training Instrument with read noise -1": (lambda f: Instrument(noise={"read_noise": -1.0}),
                                               r"read noise must be a finite sigma >= 0, got -1"),
    "load_cube of a negative cube": (lambda f: load_cube(f / "negcube.npz"), r"negcube.npz\['cube'\]: .*negative values"),
    "load_mask of a 0/255 image": (lambda f: load_mask(f / "mask255.npy"), r"mask255.npy: mask values go up to 255"),
}


@pytest.mark.parametrize("call,pattern", API_CASES.values(), ids=API_CASES.keys())
def test_python_api_refuses_bad_input(files, call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(files)


def test_nan_weights_in_a_release_are_refused(files, tmp_path):
    """Issue: NaN weights passed export and load_release (here: a forged release with consistent hashes)."""
    out = tmp_path / "release"
    assert ev("export", "--ckpt", files / "mst_s.pth", "--model", "mst_s", "--mask", files / "mask.mat", "--out", out) == 0
    tensors = load_file(out / "model.safetensors")
    tensors["mapping.weight"] = torch.full_like(tensors["mapping.weight"], float("nan"))
    save_file(tensors, out / "model.safetensors")
    forge_release(out, lambda c: c["weights"].update(state_sha256=state_dict_sha256(tensors)))
    with pytest.raises(ReleaseError, match=r"model.safetensors: 1 tensor\(s\) hold NaN or Inf values"):
        load_release(out)


def forge_release(folder: Path, change) -> None:
    """Edit config.json and recompute SHA256SUMS, as a careful forger would."""
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                                               for p in sorted(folder.iterdir()) if p.name != "SHA256SUMS"))


# ============================================================================ 5. corrupt files
CORRUPT = {"truncated .npz": ("cube", "trunc.npz"), "empty .npz": ("cube", "empty.npz"),
           "random bytes .npz": ("cube", "random.npz"), "truncated .npy": ("mask", "trunc.npy"),
           "empty .npy": ("mask", "empty.npy"), "random bytes .npy": ("mask", "random.npy"),
           "truncated v5 .mat": ("mask", "trunc5.mat"), "empty .mat": ("mask", "empty.mat"),
           "random bytes .mat": ("mask", "random.mat"), "truncated v7.3 .mat": ("mask", "trunc73.mat")}


@pytest.mark.parametrize("role,name", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_files_are_one_line_naming_the_file(files, tmp_path, capsys, role, name):
    inputs = {"cube": files / "cube.npz", "mask": files / "mask.mat", role: files / name}
    line = user_error(capsys, lambda: cal("simulate", "--cube", inputs["cube"], "--mask", inputs["mask"],
                                          "--out", tmp_path / "y.npz"), rf"{name}: not a readable .* file")
    assert ("empty" in line) == name.startswith("empty")
    assert nothing_written(tmp_path / "y.npz")


def test_invalid_metrics_json_in_a_release_names_the_file(files, tmp_path):
    out = tmp_path / "release"
    assert ev("export", "--ckpt", files / "mst_s.pth", "--model", "mst_s", "--mask", files / "mask.mat", "--out", out) == 0
    (out / "metrics.json").write_text("{not json")
    forge_release(out, lambda c: c.update(metrics="metrics.json"))
    with pytest.raises(ReleaseError, match=r"metrics.json: not a readable JSON file"):
        load_release(out)


# ============================================================================ 6. misleading messages
def test_checkpoint_whose_training_mask_moved(files, tmp_path, capsys):
    """Issue: said "pass --mask FILE" even when --mask was passed (the mask was rebuilt before --mask was read)."""
    from training import ReconstructionModule
    module = ReconstructionModule(model_name="mst_s")
    np.save(tmp_path / "train_mask.npy", random_mask(SIZE, SIZE, seed=4))
    hparams = {"root": None, "crop": SIZE, "mask": str(tmp_path / "train_mask.npy"), "mask_key": "mask",
               "mask_crop": False, "mask_size": None, "seed": 3}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": hparams}, tmp_path / "last.ckpt")
    (tmp_path / "train_mask.npy").rename(tmp_path / "moved.npy")
    user_error(capsys, lambda: ev("export", "--ckpt", tmp_path / "last.ckpt", "--out", tmp_path / "a"),
               r"last.ckpt: cannot rebuild the training mask .*train_mask.npy.*: pass --mask FILE")
    user_error(capsys, lambda: ev(*KAIST_NET, "--ckpt", tmp_path / "last.ckpt", "--model", "mst_s", "--out",
                                  tmp_path / "b"), r"cannot rebuild the training mask.*pass --mask FILE")
    assert ev("export", "--ckpt", tmp_path / "last.ckpt", "--mask", tmp_path / "moved.npy", "--out",
              tmp_path / "release") == 0
    assert np.array_equal(open_release(tmp_path / "release").mask.numpy(), np.load(tmp_path / "moved.npy"))


def test_multi_line_messages_become_one_line():
    text = "state dict does not match MST:\n  missing keys: a, b\n  unexpected keys: c"
    assert one_line(ValueError(text)) == "state dict does not match MST: missing keys: a, b; unexpected keys: c"
    assert one_line(KeyError("unknown model 'x'")) == "unknown model 'x'"


# ================================================ issue 14 item 5: the same user errors in all three CLIs
@pytest.fixture(scope="module")
def train_files(files) -> Path:
    np.save(files / "mask40.npy", random_mask(40, 40, seed=1))
    (files / "mst" / "Truth").mkdir(parents=True)
    scipy.io.savemat(files / "mst" / "Truth" / "scene01.mat", {"img": np.load(files / "cube.npz")["cube"].transpose(1, 2, 0)})
    scipy.io.savemat(files / "mst" / "mask.mat", {"mask": load_mask(files / "mask.mat")})
    return files


SMOKE = ["fit", "--config", str(REPO / "configs" / "smoke" / "mst_s.yaml"), "--trainer.logger", "false"]
USER_ERRORS = {
    # missing folder
    "train missing data folder": ("train", [*SMOKE, "--data.root", "{f}/nowhere"], r"no such data folder: .*nowhere"),
    "eval missing data folder": ("eval", ["kaist", "--data.root", "{f}/nowhere"], r"nowhere.*Truth"),
    "eval missing release": ("eval", ["kaist", "--release", "{f}/nowhere"], r"no release folder or checkpoint file at .*nowhere"),
    "calibrate missing measurement": ("cal", ["--meas", "{f}/nowhere.npz", "--mask", "{f}/mask.mat"],
                                      r"no such file: .*nowhere.npz"),
    # wrong mask size
    "train wrong mask size": ("train", [*SMOKE, "--data.mask", "{f}/mask40.npy"],
                              r"mask40.npy has shape \(40, 40\); crop=64 needs exactly 64 x 64"),
    "eval wrong mask size": ("eval", ["kaist", "--data.root", "{f}/mst", "--mask", "{f}/mask40.npy"],
                             r"scene 'scene01' is \(32, 32\) pixels but the mask is \(40, 40\)"),
    "calibrate wrong mask size": ("cal", ["--meas", "{f}/y.npz", "--mask", "{f}/mask40.npy"],
                                  r"y.npz is \(32, 86\) but mask .*mask40.npy is \(40, 40\)"),
    # unknown model
    "train unknown model": ("train", [*SMOKE, "--model.init_args.model_name", "mst_xl"], r"unknown model 'mst_xl'"),
    "eval unknown model": ("eval", [*KAIST_NET, "--model", "mst_xl", "--ckpt", "{f}/mst_s.pth"], r"unknown model 'mst_xl'"),
    "eval GAP-TV option with a network": ("eval", [*KAIST, "--model", "mst_s", "--ckpt", "{f}/mst_s.pth"],
                                          r"--gap.iterations sets GAP-TV, and the method is the network of --ckpt"),
    "eval --device with GAP-TV": ("eval", [*KAIST, "--device", "cpu"],
                                  r"--device cpu places a network, and the method is GAP-TV"),
    "calibrate unknown solver": ("cal", ["--meas", "{f}/y.npz", "--mask", "{f}/mask.mat", "--solver", "mst_xl"],
                                 r"unknown solver 'mst_xl'; expected one of heldout, gap_tv, "),
    # bad option
    "train bad option": ("train", [*SMOKE, "--data.crop", "abc"], r'"data.crop": Expected a <class .int.>'),
    "train unknown option": ("train", [*SMOKE, "--bogus", "1"], r"unrecognized arguments: --bogus 1"),
    # argparse would read a prefix as the option it starts (--data.crop_top 2) and train
    "train abbreviated option": ("train", [*SMOKE, "--data.crop_to", "2"], r"unrecognized arguments: --data.crop_to 2"),
    "eval unknown option": ("eval", ["kaist", "--bogus", "1"], r"unrecognized arguments: --bogus 1"),
    "calibrate bad option": ("cal", ["--meas", "{f}/y.npz", "--mask", "{f}/mask.mat", "--bands", "x"],
                             r"--bands: 'x' is not an integer"),
    "train missing accelerator": ("train", [*SMOKE, "--trainer.accelerator", "cuda"], r"train.py: error: .*cuda|CUDA"),
    # a toolbox file given to train.py as a Lightning checkpoint
    "train --ckpt_path toolbox .pth": ("train", [*SMOKE, "--ckpt_path", "{f}/mst_s.pth"],
                                       r"mst_s.pth is not a Lightning checkpoint of train.py.*eval.py kaist"),
}
CLIS = {"train": train, "eval": ev, "cal": cal}


@pytest.mark.parametrize("cli,argv,pattern", USER_ERRORS.values(), ids=USER_ERRORS.keys())
def test_user_errors_are_one_line_and_exit_2_before_any_work(train_files, tmp_path, capsys, monkeypatch, cli, argv,
                                                             pattern):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has the accelerator")
    argv = [a.format(f=train_files) for a in argv]
    out = tmp_path / "out"
    argv += ["--trainer.default_root_dir", str(out)] if cli == "train" else ["--out", str(out)]
    monkeypatch.chdir(tmp_path)                               # anything written by accident would land here
    # Lightning logs a few info lines of its own to stderr before the error line
    user_error(capsys, lambda: CLIS[cli](*argv), pattern, only_line=cli != "train")
    assert nothing_written(out) and list(tmp_path.iterdir()) == []


def test_checkpoints_are_written_atomically(tmp_path):
    """train.py saves checkpoints through cassi.files.atomic_path: a failed save keeps the previous file."""
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, tmp_path / "last.ckpt")
    with pytest.raises(Exception):
        io.save_checkpoint({"step": lambda: None}, tmp_path / "last.ckpt")    # cannot be pickled
    assert int(torch.load(tmp_path / "last.ckpt", weights_only=True)["step"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == umask_mode(0o666)


def test_model_table_does_not_overwrite_without_force(tmp_path, capsys):
    (tmp_path / "table.md").write_text("earlier table")
    user_error(capsys, lambda: ev("models", "--models", "mst_s", "--size", 32, "--no-time", "--out",
                                  tmp_path / "table"), r"table.md already exists; pass --force")
    assert (tmp_path / "table.md").read_text() == "earlier table" and not (tmp_path / "table.json").exists()
