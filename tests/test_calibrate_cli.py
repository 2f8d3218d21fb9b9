"""``calibrate.py simulate``: file formats, shapes, equality with the library, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

import calibrate
from cli_checks import user_error
from cassi import Mismatch
from cassi.noise import add_noise
from cassi.simulator import simulate_measurement
from data.io import MeasurementFile


def write_inputs(tmp_path, h=16, w=20, bands=28):
    rng = np.random.default_rng(0)
    cube = rng.random((bands, h, w)).astype(np.float32)
    mask = (rng.random((h, w)) > 0.5).astype(np.float32)
    np.savez(tmp_path / "cube.npz", cube=cube)
    scipy.io.savemat(tmp_path / "cube.mat", {"img": cube.transpose(1, 2, 0)})
    scipy.io.savemat(tmp_path / "mask.mat", {"mask": mask})
    np.save(tmp_path / "mask.npy", mask)
    return cube, mask


@pytest.mark.parametrize("cube_file,mask_file", [("cube.npz", "mask.mat"), ("cube.mat", "mask.npy")])
def test_simulate_writes_y_equal_to_the_library(tmp_path, cube_file, mask_file):
    cube, mask = write_inputs(tmp_path)
    out = tmp_path / "y.npz"
    calibrate.main(["simulate", "--cube", str(tmp_path / cube_file), "--mask", str(tmp_path / mask_file),
                    "--dx", "0.5", "--theta", "0.3", "--a1", "2.02", "--oversample", "2", "2",
                    "--noise-peak", "1e4", "--read-noise", "0.005", "--seed", "3", "--out", str(out)])
    y = np.load(out)["y"]
    assert y.shape == (16, 20 + 54)
    clean = simulate_measurement(torch.from_numpy(cube)[None], torch.from_numpy(mask),
                                 Mismatch(dx=0.5, theta=0.3, a1=2.02), spatial=2, spectral=2)
    expected = add_noise(clean, peak=1e4, read_noise=0.005, seed=3)[0].numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def fails(capsys, argv: list[str], pattern: str) -> None:
    user_error(capsys, lambda: calibrate.main(argv), pattern)


def test_simulate_errors_name_the_problem(tmp_path, capsys):
    write_inputs(tmp_path)
    scipy.io.savemat(tmp_path / "nomask.mat", {"other": np.ones((16, 20))})
    fails(capsys, ["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "nomask.mat"),
                   "--out", str(tmp_path / "y.npz")], "nomask.mat: key 'mask' not found")
    np.save(tmp_path / "small.npy", np.ones((8, 8), np.float32))
    fails(capsys, ["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "small.npy"),
                   "--out", str(tmp_path / "y.npz")], r"mask .*small.npy is \(8, 8\) but cube")
    fails(capsys, ["simulate", "--cube", str(tmp_path / "missing.npz"), "--mask", str(tmp_path / "mask.mat"),
                   "--out", str(tmp_path / "y.npz")], "missing.npz")
    assert not (tmp_path / "y.npz").exists()


@pytest.mark.parametrize("name", ["y.mat", "y"])
def test_simulate_refuses_an_out_that_is_not_npz(tmp_path, capsys, name):
    """A .npz archive written under another suffix is a file --meas cannot read ('not a readable .mat')."""
    write_inputs(tmp_path)
    fails(capsys, ["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "mask.mat"),
                   "--out", str(tmp_path / name)], rf"--out .*{name}: .*\.npz")
    assert not (tmp_path / name).exists()


def test_help_explains_every_option_and_states_its_default(capsys):
    """``calibrate.py COMMAND --help``: every option has a help text, and one with a default says which (options
    without one, e.g. --meas-key, say what happens when they are left out); the top-level help says where the
    commands' options are."""
    import argparse

    parser = calibrate.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            assert text, (command, action.option_strings)
            default = action.default
            if default in (None, False, []):
                continue
            if isinstance(default, (list, tuple)):      # as it is typed (was "[0.1, 0.1, 0.05, 0.01, 0.15]")
                assert "default" in text and " ".join(map(str, default)) in text, (command, action.option_strings, text)
            else:
                assert "default" in text and str(default) in text, (command, action.option_strings, text)
    with pytest.raises(SystemExit):
        calibrate.main(["--help"])
    assert "python calibrate.py COMMAND --help" in capsys.readouterr().out


def test_a_repeated_meas_adds_captures_instead_of_replacing_them():
    """``--meas a.mat --meas b.mat`` is two captures, as ``--meas a.mat b.mat`` is (argparse's default kept only the
    last, so one capture was calibrated silently)."""
    parser = calibrate.build_parser()
    for argv in (["--meas", "a.mat", "--meas", "b.mat", "c.mat"], ["--meas", "a.mat", "b.mat", "c.mat"]):
        assert parser.parse_args(["calibrate", *argv, "--mask", "m.mat"]).meas == ["a.mat", "b.mat", "c.mat"]


def test_threads_sets_torch_s_cpu_threads(tmp_path):
    """``--threads N`` on every command, as eval.py has it (calibrate.py had none: only OMP_NUM_THREADS limited a
    calibration on a shared machine); the numba kernels follow torch's count."""
    write_inputs(tmp_path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        calibrate.main(["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "mask.mat"),
                        "--threads", "1", "--out", str(tmp_path / "y.npz")])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    parser = calibrate.build_parser()
    assert parser.parse_args(["calibrate", "--meas", "y.npz", "--mask", "m.mat", "--threads", "2"]).threads == 2
    assert parser.parse_args(["demo", "--threads", "2"]).threads == 2


def test_a_folder_or_a_missing_key_says_what_is_expected(tmp_path, capsys):
    """--meas / --mask naming a folder say it is one (they said "no such file"); a missing key lists the keys the
    file has and names the option that picks one, which then reads it."""
    _, mask = write_inputs(tmp_path)
    out = ["--out", str(tmp_path / "out")]
    fails(capsys, ["--meas", str(tmp_path), "--mask", str(tmp_path / "mask.mat"), *out],
          rf"{tmp_path} is a folder; a file is expected")
    fails(capsys, ["--meas", str(tmp_path / "cube.npz"), "--mask", str(tmp_path), *out],
          rf"{tmp_path} is a folder; a file is expected")
    np.savez(tmp_path / "meas.npz", snapshot=np.ones((16, 74), np.float32), other=np.zeros(2))
    scipy.io.savemat(tmp_path / "phi.mat", {"phi": mask})
    fails(capsys, ["--meas", str(tmp_path / "meas.npz"), "--mask", str(tmp_path / "mask.mat"), *out],
          r"meas.npz: none of the keys \['y'\] found; keys present: \['other', 'snapshot'\] \(pick one with --meas-key")
    fails(capsys, ["--meas", str(tmp_path / "meas.npz"), "--mask", str(tmp_path / "phi.mat"), *out],
          r"phi.mat: key 'mask' not found; keys present: \['phi'\] \(pick one with --mask-key KEY\)")
    fails(capsys, ["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "phi.mat"),
                   "--out", str(tmp_path / "y.npz")], r"\(pick one with --mask-key KEY\)")
    calibrate.main(["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "phi.mat"),
                    "--mask-key", "phi", "--out", str(tmp_path / "y.npz")])
    assert np.load(tmp_path / "y.npz")["y"].shape == (16, 74)
    assert not (tmp_path / "out").exists()


def test_calibrate_uses_the_bands_and_step_the_npz_records_and_refuses_a_contradiction(tmp_path, capsys):
    """``simulate`` records bands and step, the KAIST snapshots step: calibrate uses them when --bands / --step are
    left out (it used 28 and 2 whatever the file said) and refuses an option or a second capture that contradicts
    them, naming the file, the key and both values."""
    import argparse

    from conftest import shared_path

    write_inputs(tmp_path)
    for step in (1, 2):
        calibrate.main(["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "mask.mat"),
                        "--step", str(step), "--out", str(tmp_path / f"y{step}.npz")])
    assert (int(np.load(tmp_path / "y1.npz")["bands"]), int(np.load(tmp_path / "y1.npz")["step"])) == (28, 1)
    capsys.readouterr()
    options = argparse.Namespace(meas=[str(tmp_path / "y1.npz")], bands=None, step=None)
    assert calibrate.instrument_settings(options, [MeasurementFile(p) for p in options.meas]) == (28, 1)
    assert f"step 1 as {tmp_path / 'y1.npz'} records it (key 'step')" in capsys.readouterr().out
    out = ["--mask", str(tmp_path / "mask.mat"), "--out", str(tmp_path / "out")]
    fails(capsys, ["--meas", str(tmp_path / "y1.npz"), "--step", "2", *out],
          r"--step 2 contradicts .*y1.npz, which records step = 1 \(key 'step'\)")
    fails(capsys, ["--meas", str(tmp_path / "y1.npz"), "--bands", "31", *out],
          r"--bands 31 contradicts .*y1.npz, which records bands = 28 \(key 'bands'\)")
    fails(capsys, ["--meas", str(tmp_path / "y1.npz"), str(tmp_path / "y2.npz"), *out],
          r"--meas: .*y2.npz records step = 2 \(key 'step'\) but .*y1.npz records 1")
    assert not (tmp_path / "out").exists()
    snapshot = str(shared_path("data", "kaist_meas", "scene01_snapshot.npz"))      # records step (int32), not bands
    options = argparse.Namespace(meas=[snapshot], bands=None, step=None)
    assert calibrate.instrument_settings(options, [MeasurementFile(snapshot)]) == (28, 2)
    fails(capsys, ["--meas", snapshot, "--step", "1", *out], r"--step 1 contradicts .*scene01_snapshot.npz, which "
          r"records step = 2")


def test_fewer_bands_than_the_calibration_needs_are_one_line_before_any_work(tmp_path, capsys):
    """--bands 3 (a measurement of that width) ended with 'spectral basis size must be in [1, 3], got 6' from inside
    the search, --bands 1 with a ZeroDivisionError traceback (exit 1)."""
    _, mask = write_inputs(tmp_path)
    for bands in (1, 3):
        np.save(tmp_path / "y.npy", np.random.default_rng(0).random((16, 20 + 2 * (bands - 1))).astype(np.float32))
        fails(capsys, ["--meas", str(tmp_path / "y.npy"), "--mask", str(tmp_path / "mask.mat"), "--bands", str(bands),
                       "--out", str(tmp_path / "out"), "--no-progress"],
              rf"error: {bands} spectral band\(s\): the calibration needs at least 6")
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


class Reached(Exception):
    """Raised by a stand-in for the calibration: every input has been read by then."""


def test_each_meas_file_is_read_once(tmp_path, monkeypatch):
    """calibrate reads each --meas file once for all it holds (the recorded step and bands, the snapshot); it read
    each twice, once for the recorded whole numbers and once for the measurement."""
    import calib
    import data.io

    write_inputs(tmp_path)
    for seed in (1, 2):
        calibrate.main(["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "mask.mat"),
                        "--noise-peak", "1e4", "--seed", str(seed), "--out", str(tmp_path / f"y{seed}.npz")])
    reads, read = [], data.io._read_arrays
    monkeypatch.setattr(data.io, "_read_arrays", lambda path: reads.append(path.name) or read(path))
    handed = {}

    def stand_in(y, mask, **options):
        handed.update(y=y, mask=mask, **options)
        raise Reached

    monkeypatch.setattr(calib, "calibrate", stand_in)
    with pytest.raises(Reached):
        calibrate.main(["--meas", str(tmp_path / "y1.npz"), str(tmp_path / "y2.npz"), "--mask",
                        str(tmp_path / "mask.mat"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert sorted(reads) == ["mask.mat", "y1.npz", "y2.npz"], reads
    assert (handed["bands"], handed["step"]) == (28, 2)
    for i, name in enumerate(("y1.npz", "y2.npz")):
        np.testing.assert_array_equal(handed["y"][i].numpy(), np.load(tmp_path / name)["y"])


def test_the_mask_a_meas_file_holds_is_used_without_mask_and_noted_when_mask_differs(tmp_path, monkeypatch, capsys):
    """A --meas .npz holding its mask (as the KAIST snapshots do, key 'mask') needs no --mask: calibrate uses it and
    says so (it refused: "--mask is required", the file's mask ignored); calibration.json settings.mask_source and
    mask.path name it. With --mask too, a differing file mask is a one-line note and --mask is used, as handed;
    no mask anywhere, or captures holding different ones, is an error naming the key or both files."""
    import json

    import calib

    _, mask = write_inputs(tmp_path)
    calibrate.main(["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "mask.mat"),
                    "--dx", "0.3", "--noise-peak", "1e4", "--out", str(tmp_path / "y.npz")])
    y = np.load(tmp_path / "y.npz")["y"]
    snapshot, other = tmp_path / "snapshot.npz", tmp_path / "other.npz"
    np.savez(snapshot, y=y, mask=mask, step=np.int32(2))                       # the KAIST snapshots' keys
    np.savez(other, y=y * 1.01, mask=1 - mask, step=np.int32(2))
    quick = ["--model-oversample", "1", "1", "--no-noise-correction", "--no-progress", "--threads", "1"]
    files = calibrate.main(["--meas", str(snapshot), "--out", str(tmp_path / "own"), *quick])
    assert f"mask {snapshot}['mask'], as the --meas file holds it (no --mask given)" in capsys.readouterr().out
    content = json.loads(files["json"].read_text())
    assert content["settings"]["mask_source"] == {"option": "--meas", "path": str(snapshot.resolve()), "key": "mask"}
    assert content["mask"]["path"] == str(snapshot.resolve()) and content["mask"]["shape"] == [16, 20]

    handed = {}

    def stand_in(y, mask, **options):
        handed["mask"] = mask
        raise Reached

    monkeypatch.setattr(calib, "calibrate", stand_in)
    with pytest.raises(Reached):
        calibrate.main(["--meas", str(other), "--mask", str(tmp_path / "mask.mat"), "--out", str(tmp_path / "x")])
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and f"{other}['mask'] holds another mask than --mask" in notes[0], notes
    assert "320 pixels differ" in notes[0] and "calibrating with --mask, as handed" in notes[0]
    np.testing.assert_array_equal(handed["mask"].numpy(), mask)
    with pytest.raises(Reached):                                      # the same mask: nothing to note
        calibrate.main(["--meas", str(snapshot), "--mask", str(tmp_path / "mask.mat"), "--out", str(tmp_path / "x")])
    assert "note:" not in capsys.readouterr().out
    cube = tmp_path / "cube3d.npz"                       # an array under 'mask' that is no mask: --mask decides
    np.savez(cube, y=y, mask=np.ones((2, 16, 20), np.float32))
    with pytest.raises(Reached):
        calibrate.main(["--meas", str(cube), "--mask", str(tmp_path / "mask.mat"), "--out", str(tmp_path / "x")])
    assert (f"note: {cube}['mask']: expected a 2-D mask, got shape (2, 16, 20): not read as a mask; calibrating with "
            "--mask, as handed") in capsys.readouterr().out
    np.save(tmp_path / "small.npy", np.ones((8, 8), np.float32))        # the file's shape first, as the note says
    with pytest.raises(SystemExit):
        calibrate.main(["--meas", str(snapshot), "--mask", str(tmp_path / "small.npy"), "--out", str(tmp_path / "x")])
    assert "holds another mask than --mask " + f"{tmp_path / 'small.npy'} (shape (16, 20) vs (8, 8))" in (
        capsys.readouterr().out)
    twin, bare = tmp_path / "twin.npz", tmp_path / "bare.npz"
    np.savez(twin, y=y * 0.99, mask=mask, step=np.int32(2))
    np.savez(bare, y=y * 0.98)
    with pytest.raises(Reached):          # several captures: the mask they share, and how many hold it
        calibrate.main(["--meas", str(snapshot), str(twin), str(bare), "--out", str(tmp_path / "x")])
    assert (f"mask {snapshot}['mask'], as the --meas file holds it (no --mask given; the same in the 2 of 3 --meas "
            "files holding one)") in capsys.readouterr().out
    np.testing.assert_array_equal(handed["mask"].numpy(), mask)
    fails(capsys, ["--meas", str(tmp_path / "y.npz"), "--out", str(tmp_path / "x")],
          r"--mask is needed: no --meas file holds a mask under key 'mask'")
    fails(capsys, ["--meas", str(snapshot), str(other), "--out", str(tmp_path / "x")],
          r"--meas: .*other.npz\['mask'\] and .*snapshot.npz\['mask'\] hold different masks .*name it with --mask")


@pytest.mark.parametrize("out", [".", ""])
def test_an_out_that_is_the_current_folder_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, out):
    """``--out .`` in an empty folder ran the whole calibration, then ended with 'OSError: [Errno 16] Device or
    resource busy: '..tmp-…' -> '.'' (a traceback, exit 1) and the outputs were lost (cassi.files.OutputFolder)."""
    import calib

    write_inputs(tmp_path)
    calibrate.main(["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "mask.mat"),
                    "--out", str(tmp_path / "y.npz")])
    capsys.readouterr()
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    monkeypatch.setattr(calib, "calibrate", lambda *args, **kwargs: pytest.fail("the calibration ran"))
    fails(capsys, ["--meas", str(tmp_path / "y.npz"), "--mask", str(tmp_path / "mask.mat"), "--out", out,
                   "--no-progress"], r"error: --out \. is the current folder: name a folder for the outputs "
                                     r"\(e\.g\. --out out\)$")
    assert list((tmp_path / "run").iterdir()) == []


def test_simulate_refuses_an_out_it_cannot_write_before_simulating(tmp_path, monkeypatch, capsys):
    """``chattr +i`` (root may write anywhere chmod forbids): simulate ran, then failed writing."""
    import shutil
    import subprocess

    import cassi.simulator

    write_inputs(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(locked)]).returncode:
        pytest.skip("chattr +i is not available here")
    monkeypatch.setattr(cassi.simulator, "simulate_measurement", lambda *a, **k: pytest.fail("simulated"))
    try:
        fails(capsys, ["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "mask.mat"),
                       "--out", str(locked / "y.npz")],
              rf"error: output {locked / 'y.npz'} cannot be written: no permission to write in {locked}$")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_simulate_without_a1_disperses_at_the_step(tmp_path, capsys):
    """``--step 3`` without ``--a1`` dispersed at 2 px/band (the explicit default a1 2.0, not the nominal slope) and
    recorded a1 = 2; an a1 given (2.0 included) is kept."""
    cube, mask = write_inputs(tmp_path)
    for a1, expected in ((None, 3.0), ("2.0", 2.0)):
        out = tmp_path / f"y{a1}.npz"
        calibrate.main(["simulate", "--cube", str(tmp_path / "cube.npz"), "--mask", str(tmp_path / "mask.mat"),
                        "--step", "3", "--out", str(out), *(["--a1", a1] if a1 else [])])
        assert f"'a1': {expected}" in capsys.readouterr().out
        saved = np.load(out)
        assert saved["mismatch"][3] == expected and saved["step"] == 3
        clean = simulate_measurement(torch.from_numpy(cube)[None], torch.from_numpy(mask), Mismatch(a1=expected),
                                     step=3)
        np.testing.assert_allclose(saved["y"], clean[0].numpy(), rtol=1e-6, atol=1e-6)
    help_text = calibrate.build_parser()._subparsers._group_actions[0].choices["simulate"].format_help()
    assert "(default: the --step, nominal)" in " ".join(help_text.split())
