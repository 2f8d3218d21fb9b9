"""cassi.files: atomic writes (exact name, no temp left, the old file kept when writing fails), output folders
checked before any work."""
import re
import shutil
import subprocess

import numpy as np
import pytest

from cassi.errors import UserError
from cassi.files import OutputFolder, check_output_file, save_npz, umask_mode, write_json
from data.io import load_cube


def test_save_npz_writes_exact_name_and_leaves_no_temp(tmp_path):
    cube = np.random.default_rng(6).random((28, 4, 4)).astype(np.float32)
    target = tmp_path / "out" / "recon.npz"
    save_npz(target, cube=cube, step=np.int32(2))
    save_npz(target, cube=cube * 0.5)  # overwrite in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["recon.npz"]
    np.testing.assert_array_equal(load_cube(target), cube * 0.5)
    save_npz(tmp_path / "plain", compress=False, y=cube[0])
    assert (tmp_path / "plain").is_file() and not (tmp_path / "plain.npz").exists()
    assert (tmp_path / "plain").stat().st_mode & 0o777 == umask_mode(0o666)


class _Unconvertible:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("cannot convert")


def test_failed_writes_keep_the_old_file(tmp_path):
    target = tmp_path / "keep.npz"
    save_npz(target, y=np.ones(3))
    with pytest.raises(RuntimeError, match="cannot convert"):
        save_npz(target, a=np.zeros(2), y=_Unconvertible())
    np.testing.assert_array_equal(np.load(target)["y"], np.ones(3))
    write_json(tmp_path / "r.json", {"a": float("nan")})
    with pytest.raises(TypeError):
        write_json(tmp_path / "r.json", {"a": object()})
    assert (tmp_path / "r.json").read_text() == '{\n  "a": null\n}\n'      # strict JSON, old content kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz", "r.json"]


# ------------------------------------------------------------------------------------------ output folders
def write_folder(out, **kwargs):
    """One run of a command writing ``calibration.json`` into ``--out out``; returns the folder it took."""
    folder = OutputFolder(out, "calibration.json", **kwargs)
    with folder as staging:
        (staging / "calibration.json").write_text("{}")
    return folder.path


@pytest.mark.parametrize("out,shown,where", [(".", ".", "is"), ("", ".", "is"), ("sub/..", "sub/..", "is"),
                                              ("..", "..", "holds")])
def test_an_out_that_is_or_holds_the_current_folder_is_refused_before_any_work(tmp_path, monkeypatch, out, shown,
                                                                              where):
    """``--out .`` (or ``''``) in an empty folder made the staging folder inside it and ended, after all the work,
    with 'OSError: [Errno 16] Device or resource busy: '..tmp-…' -> '.'' and the outputs lost."""
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    if out == "sub/..":
        (tmp_path / "run" / "sub").mkdir()
    with pytest.raises(UserError, match=rf"^--out {re.escape(shown)} {where} the current folder: name a folder for "
                                        r"the outputs \(e\.g\. --out out\)$"):
        write_folder(out)
    assert [p.name for p in (tmp_path / "run").iterdir()] == (["sub"] if out == "sub/.." else [])


def test_relative_outs_beside_or_above_the_current_folder_are_written(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    for out, where in (("./a", tmp_path / "run" / "a"), ("b/", tmp_path / "run" / "b"), ("../c", tmp_path / "c")):
        write_folder(out)
        assert sorted(p.name for p in where.iterdir()) == ["calibration.json"], out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "run"]          # no staging folder left
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["a", "b"]


@pytest.fixture
def immutable(tmp_path):
    """A folder nobody may write in, root included (``chattr +i``; chmod does not stop root); the flag is removed
    afterwards."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_an_out_that_cannot_be_written_is_named_before_any_work(immutable):
    """It said '[Errno 1] Operation not permitted: '/…/.out.tmp-xxxx'', naming the hidden staging folder, once the
    run was over; a single output file (``calibrate.py simulate --out``) was found out only after simulating."""
    for out in (immutable / "out", immutable / "new" / "out"):
        with pytest.raises(UserError, match=rf"^--out {re.escape(str(out))} cannot be written: no permission to "
                                            rf"write in {re.escape(str(immutable))}$"):
            OutputFolder(out, "calibration.json")
    with pytest.raises(UserError, match=rf"^output {re.escape(str(immutable / 'y.npz'))} cannot be written"):
        check_output_file(immutable / "y.npz")
    assert list(immutable.iterdir()) == []


def test_an_out_that_becomes_unwritable_during_the_run_is_named_as_given(tmp_path):
    folder = OutputFolder(tmp_path / "locked" / "out", "calibration.json")
    (tmp_path / "locked").mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(tmp_path / "locked")]).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(UserError, match=rf"^--out {re.escape(str(folder.path))} cannot be written: Operation "
                                            "not permitted$"):
            with folder:
                pass
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "locked")], check=True)
