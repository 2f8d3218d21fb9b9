"""Several captures of one instrument (issue 12 §2): ``calibrate.py --meas a b ...`` fits one instrument
to all of them, ``--separately`` one per capture in one process; bad lists end as clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import calibrate
from calib import calibrate as calibrate_captures
from cassi import Mismatch
from cassi.errors import UserError
from cli_checks import user_error
from test_calib_pipeline import QUICK, measure

TRUTH = Mismatch(dx=0.7, dy=-0.4, theta=0.3, a1=2.02, alpha=0.3)
# two 40 px captures: loose bounds, as in test_calib_cli (small masks pin theta and the dx-a1 valley less)
TOLERANCE = {"dx": 0.3, "dy": 0.2, "theta": 0.5, "a1": 0.025, "alpha": 0.6}
SIZE = 40


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """Two scenes through one drifted instrument (N=4, K=2 simulator, noise), saved as a.npz and b.npz."""
    folder = tmp_path_factory.mktemp("joint")
    a, mask = measure(SIZE, TRUTH, seed=0)
    b, _ = measure(SIZE, TRUTH, mask=mask, seed=7)
    np.save(folder / "mask.npy", mask.numpy())
    for name, y in (("a", a), ("b", b)):
        np.savez(folder / f"{name}.npz", y=y.numpy())
    return folder


def test_joint_fit_writes_one_instrument_for_all_captures(captures, tmp_path, capsys):
    files = calibrate.main(["--meas", str(captures / "a.npz"), str(captures / "b.npz"), "--mask",
                            str(captures / "mask.npy"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert "2 captures jointly" in capsys.readouterr().out
    content = json.loads(files["json"].read_text())
    assert content["measurements"] == [str(captures / "a.npz"), str(captures / "b.npz")]
    assert content["settings"]["captures"] == 2
    errors = {k: v - getattr(TRUTH, k) for k, v in content["estimate"].items()}
    assert all(abs(errors[k]) <= TOLERANCE[k] for k in TOLERANCE), errors
    assert content["score"] < content["nominal_score"]
    assert set(content["status_tests"]["captures"]) == {"0", "1"}
    own = [row["score"] for row in content["status_tests"]["captures"].values()]   # each capture's own error:
    assert sum(own) / 2 == pytest.approx(content["status_tests"]["code"]["score"], rel=1e-6)  # the joint one, their mean
    assert not any(reason.startswith("capture") for reason in content["reasons"]), content["reasons"]
    record = content["status_tests"]["uncertainty"]     # the noise term: per component or per capture, the larger
    assert all(record["standard_error"][k] == max(record["standard_error_by_component"][k],
                                                  record["standard_error_by_capture"][k]) for k in TOLERANCE)
    for key in ("operator", "landscape", "stages"):
        assert files[key].is_file()


def test_separately_writes_one_result_per_capture(captures, tmp_path):
    out = tmp_path / "out"
    files = calibrate.main(["--meas", str(captures / "a.npz"), str(captures / "b.npz"), "--mask",
                            str(captures / "mask.npy"), "--out", str(out), "--separately", "--no-progress"])
    summary = json.loads((out / "calibrations.json").read_text())["calibrations"]
    assert [row["folder"] for row in summary] == ["a", "b"]
    for row in summary:
        content = json.loads((out / row["folder"] / "calibration.json").read_text())
        assert content["measurements"] == [row["measurement"]] and content["settings"]["captures"] == 1
        assert content["estimate"] == row["estimate"] and files[row["folder"]]["operator"].is_file()


def test_captures_of_two_instruments_are_ambiguous():
    """Two captures whose instruments differ by 3 px in dx and 1 px in dy: no single estimate explains
    both, and the per-capture test says which capture pulls elsewhere."""
    a, mask = measure(48, Mismatch(dx=1.5, dy=0.5), seed=0)
    b, _ = measure(48, Mismatch(dx=-1.5, dy=-0.5), mask=mask, seed=5)
    result = calibrate_captures(torch.stack([a, b]), mask, progress=False, solver_check=False, **QUICK)
    assert result.status == "ambiguous"
    assert any(r.startswith("capture") and "prefers another instrument" in r for r in result.reasons), result.reasons


def test_bad_capture_lists_name_the_file(captures, tmp_path, capsys):
    mask = ["--mask", str(captures / "mask.npy")]
    out = tmp_path / "out"

    def fails(meas, pattern, *extra):
        user_error(capsys, lambda: calibrate.main(["--meas", *map(str, meas), *mask, "--out", str(out), *extra]),
                   pattern)

    np.save(tmp_path / "narrow.npy", np.ones((SIZE, SIZE + 40), np.float32))
    fails([captures / "a.npz", tmp_path / "narrow.npy"], r"different sizes.*narrow.npy \(40, 80\)")
    np.save(tmp_path / "narrow2.npy", np.ones((SIZE, SIZE + 40), np.float32))
    fails([tmp_path / "narrow.npy", tmp_path / "narrow2.npy"], r"narrow.npy is \(40, 80\) but mask .*mask.npy")
    np.savez(tmp_path / "dark.npz", y=np.zeros((SIZE, SIZE + 54), np.float32))
    fails([captures / "a.npz", tmp_path / "dark.npz"], r"dark.npz: no positive value")
    fails([captures / "a.npz", captures / "a.npz"], "the same file twice")
    (tmp_path / "other").mkdir()
    np.savez(tmp_path / "other" / "a.npz", y=np.load(captures / "a.npz")["y"])
    fails([captures / "a.npz", tmp_path / "other" / "a.npz"], "share a stem", "--separately")
    assert not out.exists()


def test_a_solver_other_than_heldout_refuses_several_captures(captures):
    ys = torch.stack([torch.as_tensor(np.load(captures / f"{name}.npz")["y"]) for name in "ab"])
    mask = torch.as_tensor(np.load(captures / "mask.npy"))
    with pytest.raises(UserError, match="--solver gap_tv calibrates from one capture"):
        calibrate_captures(ys, mask, solver="gap_tv", progress=False)


def test_a_misspelt_solver_with_several_captures_is_said_as_misspelt(captures):
    """Was: '--solver heldot calibrates from one capture; ... jointly with the held-out criterion only', the joint
    refusal for a name that is no solver at all."""
    ys = torch.stack([torch.as_tensor(np.load(captures / f"{name}.npz")["y"]) for name in "ab"])
    mask = torch.as_tensor(np.load(captures / "mask.npy"))
    with pytest.raises(UserError, match=r"unknown solver 'heldot'; .*\(did you mean heldout\?\)"):
        calibrate_captures(ys, mask, solver="heldot", progress=False)


def test_a_network_solver_with_several_joint_captures_is_refused_without_loading_it(captures, tmp_path, capsys,
                                                                                    monkeypatch):
    """calibrate.py --meas a b --solver NET (no --separately) is refused as the library refuses it, before the weights
    are read (5a9a234 loaded them, and printed their mask warning, first)."""
    import calib.solvers
    from models import create_model

    loads = []
    monkeypatch.setattr(calib.solvers, "load_solver", lambda *args, **kwargs: loads.append(args))
    torch.save(create_model("mst_s").state_dict(), tmp_path / "mst_s.pth")
    user_error(capsys, lambda: calibrate.main(["--meas", str(captures / "a.npz"), str(captures / "b.npz"), "--mask",
                                               str(captures / "mask.npy"), "--solver", "mst_s", "--ckpt",
                                               str(tmp_path / "mst_s.pth"), "--out", str(tmp_path / "out"),
                                               "--no-progress"]),
               "--solver mst_s calibrates from one capture", only_line=False)
    assert loads == [] and not (tmp_path / "out").exists()


def test_separately_with_one_capture_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    user_error(capsys, lambda: calibrate.main(["--meas", str(tmp_path / "a.npz"), "--mask", str(tmp_path / "m.npy"),
                                               "--out", str(out), "--separately"]),
               r"--separately needs two or more --meas \(got one, .*a\.npz\)")
    assert not out.exists()
