"""eval.py kaist / real / models: reports and their schema, scenarios, the MST folder layout, bad input.

Small on purpose: 32-64 px scenes, 1-2 scenes, a handful of GAP-TV iterations.
"""
from __future__ import annotations

import csv
import importlib
import json
import math
import shutil
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import scipy.io
import torch

from cassi import CassiOperator, Mismatch
from cassi.kaist_table import mean_row
from cassi.metrics import kaist_metrics
from cassi.operator_file import save_operator
from data.kaist import synthetic_mask, synthetic_scenes
from evaluation.protocol import METRICS
from evaluation.reconstructors import GapTV
from evaluation.reports import calibration_summary
from evaluation.scenarios import FixedEstimate, ScenarioSetup, run_scenarios, summarize

eval_cli = importlib.import_module("eval")
PNG = b"\x89PNG\r\n\x1a\n"
FAST_GAP = ["--gap.iterations", "8"]
XI = Mismatch(dx=1.0, dy=0.5, theta=0.3, a1=2.02, alpha=0.2)


def run_cli(*argv: str) -> int:
    return eval_cli.main([str(a) for a in argv])


def read_results(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


# ----------------------------------------------------------------------------------- kaist protocol
def test_kaist_synthetic_gap_tv_writes_every_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)               # the progress bar, as on a terminal
    out = tmp_path / "run"
    assert run_cli("kaist", "--synthetic.count", 2, "--synthetic.size", 32, *FAST_GAP, "--out", out) == 0
    results = read_results(out)
    assert [s["name"] for s in results["scenes"]] == ["synthetic01", "synthetic02"]
    for scene in results["scenes"]:
        assert set(scene) == {"name", "psnr", "ssim", "sam", "ergas", "seconds"}
        assert all(isinstance(scene[k], float) and math.isfinite(scene[k]) for k in (*METRICS, "seconds"))
        assert scene["psnr"] > 15.0 and 0.0 < scene["ssim"] < 1.0 and scene["seconds"] > 0
    for key in (*METRICS, "seconds"):
        assert results["mean"][key] == pytest.approx(np.mean([s[key] for s in results["scenes"]]))
    assert results["method"]["name"] == "gap_tv" and results["method"]["kwargs"]["iterations"] == 8
    assert results["data"]["mask"]["shape"] == [32, 32] and len(results["data"]["mask"]["sha256"]) == 64

    markdown = (out / "results.md").read_text()
    assert "| scene | PSNR (dB) | SSIM | SAM (deg) | ERGAS | seconds |" in markdown
    assert "synthetic02" in markdown and "| mean |" in markdown
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["name"] for r in rows] == ["synthetic01", "synthetic02", "mean"]
    assert float(rows[0]["psnr"]) == pytest.approx(results["scenes"][0]["psnr"])

    assert sorted(results["previews"]) == sorted(
        f"previews/synthetic0{i}{suffix}.png" for i in (1, 2) for suffix in ("", "_spectra"))
    for preview in results["previews"]:
        assert (out / preview).read_bytes()[:8] == PNG
    assert not list(out.rglob(".*.tmp")), "temporary files left behind"
    captured = capsys.readouterr()
    assert "mean" in captured.out and "synthetic02" in captured.out
    assert "kaist: 100%" in captured.err and "2/2" in captured.err         # the per-scene progress bar


def test_scene_metrics_rank_a_better_reconstruction_higher():
    cube = synthetic_scenes(1, 32, 32)[0].cube
    close, far = cube + 0.01, cube + 0.1
    good, bad = kaist_metrics(close, cube), kaist_metrics(far, cube)
    assert good["psnr"] > bad["psnr"] and good["ssim"] > bad["ssim"] and good["ergas"] < bad["ergas"]
    assert kaist_metrics(cube, cube)["sam"] == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(mean_row([])["psnr"])


# ----------------------------------------------------------------------------------------- scenarios
def scenario_run(scenarios, calibrator=None, oversample=(1, 1)):
    scenes = synthetic_scenes(1, 32, 32, seed=3)
    mask = synthetic_mask(32, 32)
    setup = ScenarioSetup(scenarios, XI, oversample)
    return run_scenarios(scenes, mask, GapTV(iterations=10), setup, calibrator), mask


def test_recovery_ratio_is_undefined_where_the_true_operator_does_not_beat_the_drifted_one():
    """A ratio of two losses (III and IV both below II) would read as a recovery: PSNR II 18.89, III 17.78,
    IV 18.51 gave 2.9 in the calibration demo. Per metric: PSNR / SSIM higher-better, SAM / ERGAS lower-better."""
    def rows(psnr: float, sam: float) -> list[dict]:
        return [{"name": "s", "psnr": psnr, "ssim": 0.5, "sam": sam, "ergas": 10.0, "seconds": 0.0}]
    ratio = summarize({"II": rows(18.89, 10.0), "III": rows(17.78, 9.0), "IV": rows(18.51, 8.0)},
                      [], None)["comparison"]["recovery_ratio"]
    assert ratio["psnr"] is None and ratio["ssim"] is None and ratio["ergas"] is None   # no gain, or none possible
    assert ratio["sam"] == pytest.approx(0.5)                                             # lower SAM is the gain
    ratio = summarize({"II": rows(18.0, 10.0), "III": rows(19.5, 10.5), "IV": rows(20.0, 11.0)},
                      [], None)["comparison"]["recovery_ratio"]
    assert ratio["psnr"] == pytest.approx(0.75) and ratio["sam"] is None


def test_recovery_ratio_is_undefined_over_a_gap_within_the_tables_precision(tmp_path):
    """An almost untrained network gave IV - II = 0.003 dB and printed recovery_ratio psnr +2.318: a ratio over a
    gap below ten steps of the KAIST table's precision is None, with the gap and the floor in results.json and
    results.md; a real gap keeps its ratio."""
    from evaluation.reports import write_reports

    def rows(psnr: float, ssim: float) -> list[dict]:
        return [{"name": "s", "psnr": psnr, "ssim": ssim, "sam": 10.0, "ergas": 10.0, "seconds": 0.0}]
    out = summarize({"II": rows(12.000, 0.3000), "III": rows(12.007, 0.3004), "IV": rows(12.003, 0.3001)},
                    [], None)
    assert out["comparison"]["recovery_ratio"]["psnr"] is None and out["comparison"]["recovery_ratio"]["ssim"] is None
    why = out["recovery_undefined"]["recovery_ratio"]
    assert "IV - II psnr = +0.003" in why["psnr"] and "below 0.1" in why["psnr"] and "below 0.001" in why["ssim"]
    assert "no better than II" in why["sam"]
    write_reports({"method": {"name": "m"}, "data": {"description": "d", "mask": {"shape": [4, 4], "sha256": "0"}},
                   **out}, tmp_path)
    assert "recovery_ratio psnr undefined ('-'): IV - II psnr = +0.003" in (tmp_path / "results.md").read_text()
    real = summarize({"II": rows(12.0, 0.30), "III": rows(12.15, 0.31), "IV": rows(12.2, 0.32)}, [], None)
    assert real["comparison"]["recovery_ratio"]["psnr"] == pytest.approx(0.75)
    assert real["comparison"]["recovery_ratio"]["ssim"] == pytest.approx(0.5)


def test_scenarios_degrade_with_mismatch_and_recover_with_the_true_operator():
    """N = K = 1: the simulator is the operator itself, so the oracle must beat the nominal reconstruction."""
    truth = FixedEstimate(Mismatch(**XI.to_dict()), {"source": "test: the true mismatch"})
    results, _ = scenario_run(("IV", "I", "III", "II"), truth)
    assert list(results["scenarios"]) == ["I", "II", "III", "IV"]
    means = {s: b["mean"] for s, b in results["scenarios"].items()}
    comparison = results["comparison"]
    assert comparison["delta_deg"]["psnr"] == pytest.approx(means["I"]["psnr"] - means["II"]["psnr"])
    assert comparison["delta_deg"]["psnr"] > 1.0                     # the mismatch hurts
    assert means["IV"]["psnr"] > means["II"]["psnr"] + 1.0          # knowing it helps
    assert results["scenarios"]["III"]["scenes"][0]["psnr"] == results["scenarios"]["IV"]["scenes"][0]["psnr"]
    assert comparison["recovery_ratio"]["psnr"] == pytest.approx(1.0)
    assert comparison["delta_cal"]["psnr"] == pytest.approx(means["III"]["psnr"] - means["II"]["psnr"])
    errors = results["calibration"]["scenes"][0]["error"]
    assert set(errors) == {"dx", "dy", "theta", "a1", "alpha"} and all(v == 0 for v in errors.values())


def test_scenarios_run_with_a_network_on_each_scenarios_operator(tmp_path):
    """Scenarios work with any network: its mask inputs come from the scenario's operator (II nominal,
    III the estimate, IV the truth), so the estimate equal to the truth reproduces IV exactly."""
    from models import create_model

    torch.manual_seed(0)
    torch.save(create_model("mst_s").state_dict(), tmp_path / "mst_s.pth")
    truth = ",".join(f"{k}={v}" for k, v in XI.to_dict().items())
    save_operator(tmp_path / "op.npz", CassiOperator(synthetic_mask(64, 64), mismatch=XI))
    out = tmp_path / "out"
    assert run_cli("kaist", "--model", "mst_s", "--ckpt", tmp_path / "mst_s.pth", "--synthetic.count", 1,
                   "--synthetic.size", 64, "--scenarios", "I,II,III,IV", "--mismatch", truth,
                   "--operator", tmp_path / "op.npz", "--previews", 0, "--out", out) == 0
    results = read_results(out)
    scenes = {s: b["scenes"][0] for s, b in results["scenarios"].items()}
    # toolbox weights record no training mask: on the built-in random mask that is said
    assert [w for w in results["warnings"] if "record no training mask" in w and "random binary" in w]
    assert all(math.isfinite(scenes[s]["psnr"]) for s in ("I", "II", "III", "IV"))
    assert scenes["III"]["psnr"] == pytest.approx(scenes["IV"]["psnr"], abs=1e-9)
    assert scenes["IV"]["psnr"] != pytest.approx(scenes["II"]["psnr"], abs=1e-6)   # the operator reaches the net


def test_scenario_iii_reports_parameter_errors_of_a_wrong_estimate():
    wrong = FixedEstimate(Mismatch(dx=0.5, dy=0.5, theta=0.3, a1=2.02, alpha=0.2))
    results, _ = scenario_run(("II", "III"), wrong)
    calibration = results["calibration"]
    assert calibration["scenes"][0]["error"]["dx"] == pytest.approx(-0.5)
    assert calibration["mean_abs_error"]["dx"] == pytest.approx(0.5)
    assert calibration["scenes"][0]["outside_tolerance"] == ["dx"] and "status" not in calibration["scenes"][0]
    assert calibration_summary(results) == ("scenario III: 1 scene, one calibration for all; within tolerance of the "
                                            "simulated drift 0/1")
    assert "recovery_ratio" not in results["comparison"]            # needs IV


def test_scenario_iii_without_a_calibration_is_refused():
    with pytest.raises(ValueError, match="scenario III needs a calibration"):
        scenario_run(("II", "III"))
    with pytest.raises(ValueError, match="unknown scenario"):
        ScenarioSetup(("I", "V"))


def test_scenarios_cli_with_operator_file_and_oversampled_simulator(tmp_path, capsys):
    mask = synthetic_mask(32, 32)
    save_operator(tmp_path / "operator.npz", CassiOperator(mask, mismatch=XI), status="ok")
    out = tmp_path / "run"
    assert run_cli("kaist", "--synthetic.count", 1, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III",
                   "--operator", tmp_path / "operator.npz", "--previews", 0, "--out", tmp_path / "default") == 0
    printed = capsys.readouterr().out       # the drift II-IV simulate is said, and that it is the default
    assert ("scenarios II-IV simulate the instrument drifted by dx=1, dy=0.5, theta=0.3, a1=2.02, alpha=0.2 (the "
            "default drift; set it with --mismatch; scenario III applies the saved calibration") in printed
    assert run_cli("kaist", "--synthetic.count", 1, "--synthetic.size", 32, *FAST_GAP,
                   "--scenarios", "I,II,III,IV", "--mismatch", "dx=1,dy=0.5,theta=0.3,a1=2.02,alpha=0.2",
                   "--oversample", 2, 1, "--operator", tmp_path / "operator.npz", "--previews", 1,
                   "--out", out) == 0
    results = read_results(out)
    assert results["setup"]["oversample"] == {"spatial": 2, "spectral": 1}
    assert results["setup"]["mismatch"] == XI.to_dict()
    assert results["primary_scenario"] == "I" and results["scenes"] == results["scenarios"]["I"]["scenes"]
    assert set(results["comparison"]) == {"delta_deg", "delta_cal", "recovery_ratio", "gap_i_iv"}   # a native file
    assert results["calibration"]["method"]["source"] == "operator file"
    assert (out / "previews" / "III_synthetic01.png").is_file()
    markdown = (out / "results.md").read_text()
    assert "Delta_cal = III - II" in markdown and "recovery (III - II) / (IV - II)" in markdown
    scenarios = {r["scenario"] for r in csv.DictReader((out / "results.csv").open())}
    assert scenarios == {"I", "II", "III", "IV"}


def test_scenarios_reconstruct_through_the_calibration_model_too(tmp_path):
    """An operator file of the N=2, K=1 model: Ih-IV are reconstructed through the native operator and
    through that model; the I - IV gap splits into instrument + drift + model error."""
    from calib.instrument import InstrumentOperator

    mask = synthetic_mask(32, 32)
    save_operator(tmp_path / "operator.npz", InstrumentOperator(mask, mismatch=XI, spatial=2, spectral=1))
    out = tmp_path / "run"
    assert run_cli("kaist", "--synthetic.count", 1, "--synthetic.size", 32, *FAST_GAP,
                   "--scenarios", "I,Ih,II,III,IV", "--mismatch", ",".join(f"{k}={v}" for k, v in XI.to_dict().items()),
                   "--oversample", 2, 1, "--operator", tmp_path / "operator.npz", "--previews", 0, "--out", out) == 0
    results = read_results(out)
    assert list(results["scenarios"]) == ["I", "Ih", "Ih-model", "II", "II-model", "III", "III-model", "IV", "IV-model"]
    assert results["model"] == {"spatial": 2, "spectral": 1,
                                "mask_interpolation": {"III": "linear", "Ih, II, IV": "linear"}}
    scene = {k: b["scenes"][0]["psnr"] for k, b in results["scenarios"].items()}
    assert scene["III-model"] == pytest.approx(scene["IV-model"], abs=1e-9)     # the file holds the truth
    assert scene["Ih-model"] != pytest.approx(scene["Ih"], abs=1e-3)            # another operator was used
    c = {k: v["psnr"] for k, v in results["comparison"].items() if v["psnr"] is not None}
    assert c["gap_i_iv"] == pytest.approx(c["instrument"] + c["drift"] + c["model_error"])
    assert c["model_error"] == pytest.approx(scene["IV-model"] - scene["IV"])
    assert c["recovery_ratio_model"] == pytest.approx(1.0)
    assert "model error = IV-model - IV" in (out / "results.md").read_text()
    # the progress bar's total counts the "-model" reconstructions too (it counted scenarios only)
    setup = ScenarioSetup(scenarios=("I", "Ih", "II", "III", "IV"), mismatch=XI, oversample=(2, 1))
    assert setup.reconstructions(FixedEstimate(XI)) == sum(len(b["scenes"]) for b in results["scenarios"].values()) == 9
    assert ScenarioSetup(scenarios=("I", "II"), oversample=(1, 1)).reconstructions(None) == 2


def test_scenario_iii_model_reads_the_mask_as_the_calibration_chose(tmp_path):
    """calibration.json settings.mask_interpolation "cubic" (native grid): III-model is reconstructed through
    the cubic model at the estimate, the oracle IV-model through the bilinear one (the instrument's own
    reading); a bad reading is a clear error (per-scene readings may differ: the next test)."""
    from calib.instrument import instrument_operator
    from cassi.simulator import simulate_measurement
    from evaluation.calibration import from_calibration_json

    settings = {"oversample": [1, 1], "mask_interpolation": "cubic"}
    (tmp_path / "cal.json").write_text(json.dumps({"estimate": XI.to_dict(), "settings": settings}))
    calibrated = from_calibration_json(tmp_path / "cal.json")
    assert (calibrated.oversample, calibrated.mask_interpolation) == ((1, 1), "cubic")
    results, mask = scenario_run(("II", "III", "IV"), calibrated)
    assert results["model"]["mask_interpolation"] == {"III": "cubic", "Ih, II, IV": "linear"}
    scene = synthetic_scenes(1, 32, 32, seed=3)[0]                 # scenario_run's scene and N = K = 1 simulator
    y = simulate_measurement(scene.cube[None], mask, XI, 2, 1, 1)
    cubic = GapTV(iterations=10)(y, instrument_operator(mask, 28, 2, XI, (1, 1), "cubic"))
    psnr = {k: b["scenes"][0]["psnr"] for k, b in results["scenarios"].items()}
    assert psnr["III-model"] == pytest.approx(kaist_metrics(cubic[0], scene.cube)["psnr"], abs=1e-6)
    assert psnr["IV-model"] == pytest.approx(psnr["IV"], abs=1e-9) and psnr["III-model"] != pytest.approx(psnr["IV"])
    (tmp_path / "bad.json").write_text(json.dumps({"estimate": XI.to_dict(), "settings": {
        "oversample": [4, 2], "mask_interpolation": "cubic"}}))
    with pytest.raises(ValueError, match="bad.json: settings.mask_interpolation"):
        from_calibration_json(tmp_path / "bad.json")


def write_scene_calibrations(folder, made) -> None:
    """calibrate.py's per-scene layout: folder/<scene>/calibration.json (with operator.npz) for scene -> (estimate,
    oversample [N, K], mask reading)."""
    from calib.instrument import instrument_operator

    for name, (estimate, oversample, reading) in made.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "calibration.json").write_text(json.dumps(
            {"estimate": estimate.to_dict(), "status": "ok", "reasons": [],
             "settings": {"oversample": oversample, "mask_interpolation": reading}}))
        save_operator(folder / name / "operator.npz",
                      instrument_operator(synthetic_mask(32, 32), 28, 2, estimate, tuple(oversample), reading), "ok")


def test_per_scene_calibrations_with_different_forward_models_each_reconstruct_through_their_own(tmp_path, capsys):
    """Issue: eval.py kaist --calibration DIR (calibrate.py once per scene, --forward-model auto) refused per-scene
    calibrations whose forward models differed. Each scene's III-model now goes through its own model (N, K and mask
    reading), recorded per scene with the file it was read from; a scene without a calibration is an error naming
    the scene and the file expected in DIR."""
    from calib.instrument import instrument_operator
    from cassi.simulator import simulate_measurement

    made = {"synthetic01": (XI, [1, 1], "cubic"), "synthetic02": (XI, [2, 1], "linear")}
    write_scene_calibrations(tmp_path / "cal", made)
    out = tmp_path / "run"
    assert run_cli("kaist", "--synthetic.count", 2, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III",
                   "--mismatch", ",".join(f"{k}={v}" for k, v in XI.to_dict().items()), "--oversample", 1, 1,
                   "--calibration", tmp_path / "cal", "--previews", 0, "--out", out) == 0
    results = read_results(out)
    scenes, mask = synthetic_scenes(2, 32, 32), synthetic_mask(32, 32)
    for index, (name, (estimate, oversample, reading)) in enumerate(made.items()):
        y = simulate_measurement(scenes[index].cube[None], mask, XI, 2, 1, 1)
        own = GapTV(iterations=8)(y, instrument_operator(mask, 28, 2, estimate, tuple(oversample), reading))
        assert results["scenarios"]["III-model"]["scenes"][index]["psnr"] == pytest.approx(
            kaist_metrics(own[0], scenes[index].cube)["psnr"], abs=1e-6)
        row = results["calibration"]["scenes"][index]
        assert row["forward_model"] == {"oversample": oversample, "mask_interpolation": reading}
        assert row["seconds"] is None       # a saved calibration: its time is calibrate.py's (it showed ~0.00 s)
        assert results["calibration"]["method"]["files"][name] == str(tmp_path / "cal" / name / "calibration.json")
    assert "each scene's calibration" in results["model"]["III"]
    for key in ("III", "III-model"):            # it said 'operator estimated from the measurement', as a live one
        assert results["scenarios"][key]["description"].startswith(
            "calibrated: mismatched measurement, operator from a saved calibration (calibrate.py's estimate")
    markdown = (out / "results.md").read_text()
    assert "| synthetic01 | ok | N=1, K=1, cubic |" in markdown
    assert "| synthetic02 | ok | N=2, K=1, linear |" in markdown
    assert [line for line in markdown.splitlines() if line.startswith("| synthetic01 | ok |")][0].endswith("| - |")
    capsys.readouterr()
    assert run_cli("kaist", "--synthetic.count", 3, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III",
                   "--calibration", tmp_path / "cal", "--out", tmp_path / "run3") == 2
    assert (f"no calibration for scene(s) synthetic03 in {tmp_path / 'cal'} (expected "
            f"{tmp_path / 'cal' / 'synthetic03' / 'calibration.json'} or "
            f"{tmp_path / 'cal' / 'synthetic03_snapshot' / 'calibration.json'};") in capsys.readouterr().err


def test_per_scene_calibration_folders_named_after_the_kaist_snapshot_files_match_their_scenes(tmp_path):
    """calibrate.py --separately --meas .../scene01_snapshot.npz .../scene02_snapshot.npz --out DIR wrote
    DIR/scene01_snapshot/, which eval.py kaist --calibration DIR did not match to scene01 (the user had to rename):
    the KAIST snapshots' suffix is understood; two folders of one scene are an error naming both."""
    from cassi.errors import UserError
    from evaluation.calibration import from_calibration_json, read_calibration_json
    write_scene_calibrations(tmp_path / "cal", {"scene01_snapshot": (XI, [1, 1], "linear"),
                                                "scene02": (XI, [1, 1], "linear")})
    contents = read_calibration_json(tmp_path / "cal")
    assert sorted(contents) == ["scene01", "scene02"]
    assert contents["scene01"][1] == str(tmp_path / "cal" / "scene01_snapshot" / "calibration.json")
    with pytest.raises(UserError, match=r"no calibration for scene\(s\) scene03 .*calibrated scenes: scene01 "
                                        r"\(scene01_snapshot/\), scene02\)"):
        from_calibration_json(tmp_path / "cal").require(["scene03"])
    write_scene_calibrations(tmp_path / "cal", {"scene02_snapshot": (XI, [1, 1], "linear")})
    with pytest.raises(UserError, match="two calibrations of scene scene02: .*scene02/calibration.json and "
                                        ".*scene02_snapshot/calibration.json"):
        read_calibration_json(tmp_path / "cal")


def test_calibrations_given_as_an_operator_point_to_calibration(tmp_path):
    """eval.py kaist --operator calibration.json said only 'not an .npz operator file'; --operator DIR of per-scene
    calibrations 'is a folder, not an operator file': both point to --calibration (and to the operator.npz beside a
    calibration.json)."""
    from cassi.errors import UserError
    from evaluation.calibration import read_saved

    write_scene_calibrations(tmp_path / "cal", {"synthetic01": (XI, [1, 1], "linear")})
    with pytest.raises(UserError, match=rf"--operator {tmp_path / 'cal'}: a folder of per-scene calibrations "
                                        rf"\(<scene>/calibration.json\), not an operator .npz; pass it with "
                                        rf"--calibration {tmp_path / 'cal'}$"):
        read_saved(str(tmp_path / "cal"), None)
    one = tmp_path / "cal" / "synthetic01" / "calibration.json"
    with pytest.raises(UserError, match=rf"a calibration JSON, not an operator .npz; pass it with --calibration {one} "
                                        rf"\(or its operator file, --operator {one.parent / 'operator.npz'}\)$"):
        read_saved(str(one), None)


def test_operator_file_with_another_mask_is_refused(tmp_path, capsys):
    other = torch.ones(32, 32)
    save_operator(tmp_path / "operator.npz", CassiOperator(other, mismatch=XI))
    assert run_cli("kaist", "--synthetic.count", 1, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III",
                   "--operator", tmp_path / "operator.npz", "--out", tmp_path / "run") == 2
    assert "is not the evaluation mask" in capsys.readouterr().err


def test_scenario_iii_with_calib_calibrate(tmp_path):
    """calib.calibrate with calibrate.py's defaults: on a native-grid simulator (--oversample 1 1) the data choose
    the native model and a1 is close (the named N=4, K=2 model put it 0.05 px/band off)."""
    out = tmp_path / "run"
    assert run_cli("kaist", "--synthetic.count", 1, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III",
                   "--oversample", 1, 1, "--previews", 0, "--out", out) == 0
    calibration = read_results(out)["calibration"]
    assert calibration["method"]["source"] == "calib.calibrate"
    assert all(math.isfinite(v) for v in calibration["scenes"][0]["estimate"].values())
    status = calibration["method"]["calibration_status"]["synthetic01"]
    assert status["status"] in ("ok", "ambiguous", "failed") and calibration["scenes"][0]["status"] == status["status"]
    assert sum(calibration["summary"]["status"].values()) == 1
    assert calibration["scenes"][0]["forward_model"]["oversample"] == [1, 1]
    assert abs(calibration["scenes"][0]["error"]["a1"]) < 0.01


def test_scenario_iii_calibrated_per_scene_reports_each_status_and_the_truth(tmp_path, capsys, monkeypatch):
    """Without --operator / --calibration every scene is calibrated by calib.calibrate (here a stand-in: scene 1
    exact and "ok", scene 2 theta 0.2 deg off and "ambiguous"): each estimate, its error against the drift scenario
    II simulated, its status and reasons and the forward model it chose reach stdout (a one-line summary),
    results.json and results.md."""
    from calib.instrument import instrument_operator
    from calib.result import CalibrationResult
    from cassi.simulator import simulate_measurement
    from cassi.tolerance import CALIBRATION_TOLERANCE
    from evaluation.calibration import make_calibrator

    made = [(XI, "ok", [], [1, 1], "cubic"),
            (Mismatch(**{**XI.to_dict(), "theta": 0.5}), "ambiguous", ["theta not pinned"], [2, 1], "linear")]

    def calibrate(y, mask, **options):
        estimate, status, reasons, oversample, reading = made[len(calls)]
        calls.append(options)
        settings = {"oversample": oversample, "mask_interpolation": reading}
        return CalibrationResult(estimate, 0.0, 0.0, status, reasons, [], {}, settings)

    calls = []
    monkeypatch.setattr("calib.calibrate", calibrate)
    out = tmp_path / "run"
    assert run_cli("kaist", "--synthetic.count", 2, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III",
                   "--oversample", 1, 1, "--previews", 0, "--out", out) == 0
    summary = ("scenario III: 2 scenes calibrated: ok 1, ambiguous 1, failed 0; within tolerance of the simulated "
               "drift 1/2")
    ambiguous = "scenario III calibration status (synthetic02): ambiguous\n  - theta not pinned\n"
    printed = capsys.readouterr().out
    assert f"{summary}\n" in printed and ambiguous in printed and "calibration status (synthetic01): ok\n" in printed
    calibration = read_results(out)["calibration"]
    assert calibration["truth"] == XI.to_dict() and "scenario II simulated" in calibration["truth_source"]
    assert calibration["tolerance"] == CALIBRATION_TOLERANCE
    assert calibration["method"]["calibration_status"] == {"synthetic01": {"status": "ok", "reasons": []},
                                                           "synthetic02": {"status": "ambiguous",
                                                                           "reasons": ["theta not pinned"]}}
    second = calibration["scenes"][1]
    assert (second["status"], second["reasons"], second["outside_tolerance"]) == ("ambiguous", ["theta not pinned"],
                                                                                  ["theta"])
    assert second["estimate"]["theta"] == pytest.approx(0.5) and second["error"]["theta"] == pytest.approx(0.2)
    assert calibration["summary"] == {"scenes": 2, "compared": 2, "within_tolerance": 1, "not_reconstructed": [],
                                      "status": {"ok": 1, "ambiguous": 1, "failed": 0}}
    markdown = (out / "results.md").read_text()
    assert f"- {summary}\n" in markdown and f"- {ambiguous}" in markdown
    assert "| truth (simulated) |  |  | 1.0000 | 0.5000 | 0.3000 | 2.0200 | 0.2000 |  |  |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| synthetic02 | ambiguous |"))
    assert row.startswith("| synthetic02 | ambiguous | N=2, K=1, linear | 1.0000 (+0.0000) | 0.5000 (+0.0000) | "
                          "0.5000 (+0.2000) |")
    assert "| no: theta |" in row        # (calib.calibrate's estimate passes through float32: a1's error is +-0.0000)
    # calibrate.py's default: no solver check (its reconstructions were discarded); the scenes' bands and step
    assert [(c["solver_check"], c["bands"], c["step"]) for c in calls] == [(False, 28, 2)] * 2
    # and the data choose the forward model (it was named: N=4, K=2, bilinear); III-model goes through each choice
    assert not any("oversample" in c or "mask_interpolations" in c for c in calls)
    assert [c["forward_model"] for c in calibration["scenes"]] == [
        {"oversample": [1, 1], "mask_interpolation": "cubic"}, {"oversample": [2, 1], "mask_interpolation": "linear"}]
    assert calibration["method"]["forward_models"]["synthetic01"]["mask_interpolation"] == "cubic"
    scene, mask = synthetic_scenes(1, 32, 32)[0], synthetic_mask(32, 32)
    cubic = GapTV(iterations=8)(simulate_measurement(scene.cube[None], mask, XI, 2, 1, 1),
                                instrument_operator(mask, 28, 2, XI, (1, 1), "cubic"))
    results = read_results(out)
    assert results["scenarios"]["III-model"]["scenes"][0]["psnr"] == pytest.approx(
        kaist_metrics(cubic[0], scene.cube)["psnr"], abs=1e-6)
    # II-model is through the simulator's model, not "the calibration forward model" (there is one per scene)
    assert "through the simulator's N=1, K=1 model" in results["scenarios"]["II-model"]["description"]
    assert "each scene's calibration" in results["model"]["III"] and "forward_models" not in markdown
    calls.clear()
    make_calibrator(None, synthetic_mask(8, 8), bands=3, step=1)(torch.rand(1, 8, 10), synthetic_mask(8, 8), "a")
    assert (calls[0]["bands"], calls[0]["step"]) == (3, 1)          # were dropped: 28 bands, step 2 always


@pytest.mark.parametrize("terminal", [False, True])
def test_scenario_iii_calibration_bars_only_on_a_terminal(tmp_path, capsys, monkeypatch, terminal):
    """Scenario III's per-scene calib.calibrate draws its stage bars only when stderr is a terminal, as eval.py's own
    bars and calibrate.py's (a log file got every stage's carriage-return updates)."""
    from calib.result import CalibrationResult

    def calibrate(y, mask, **options):
        calls.append(options)
        return CalibrationResult(XI, 0.0, 0.0, "ok", [], [], {}, {"oversample": [1, 1], "mask_interpolation": "linear"})

    calls = []
    monkeypatch.setattr("calib.calibrate", calibrate)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    assert run_cli("kaist", "--synthetic.count", 1, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "III",
                   "--previews", 0, "--out", tmp_path / "run") == 0
    assert [c["progress"] for c in calls] == [terminal]
    assert "progress" not in read_results(tmp_path / "run")["calibration"]["method"]


def test_a_scene_whose_calibration_failed_is_not_reconstructed_in_scenario_iii(tmp_path, capsys, monkeypatch):
    """A per-scene calibration that "failed" does not explain the measurement: its estimate is not reported, its scene
    is not reconstructed in III (it was, through that estimate), III's means and comparisons are over the other
    scenes, and what is missing is said with the count and the status's reasons."""
    from calib.result import CalibrationResult

    made = [(XI, "ok", []), (Mismatch(**{**XI.to_dict(), "dx": -1.0}), "failed", ["no minimum; anywhere"])]

    def calibrate(y, mask, **options):
        estimate, status, reasons = made[len(calls)]
        calls.append(options)
        return CalibrationResult(estimate, 0.0, 0.0, status, reasons, [], {},
                                 {"oversample": [4, 2], "mask_interpolation": "linear"})

    calls = []
    monkeypatch.setattr("calib.calibrate", calibrate)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)               # the bar is drawn on a terminal only
    out = tmp_path / "run"
    assert run_cli("kaist", "--synthetic.count", 2, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III,IV",
                   "--previews", 0, "--out", out) == 0
    results = read_results(out)
    blocks = results["scenarios"]
    for key in ("III", "III-model"):
        assert [r["name"] for r in blocks[key]["scenes"]] == ["synthetic01"]
        assert blocks[key]["not_reconstructed"] == ["synthetic02"]
        assert blocks[key]["mean"]["psnr"] == blocks[key]["scenes"][0]["psnr"]
    psnr = {k: b["scenes"][0]["psnr"] for k, b in blocks.items()}               # synthetic01's
    assert results["comparison"]["delta_cal"]["psnr"] == pytest.approx(psnr["III"] - psnr["II"])
    assert results["comparison"]["recovery_ratio_model"]["psnr"] == pytest.approx(1.0)   # III = IV on synthetic01
    calibration = results["calibration"]
    failed = calibration["scenes"][1]
    assert (failed["estimate"], failed["error"], failed["outside_tolerance"]) == (None, None, None)
    assert (failed["status"], failed["reasons"]) == ("failed", ["no minimum; anywhere"])
    assert all(isinstance(c["seconds"], float) for c in calibration["scenes"])     # calibrated here: timed
    assert blocks["III"]["description"].startswith("calibrated: mismatched measurement, operator estimated from the "
                                                   "measurement")
    assert calibration["mean_abs_error"]["dx"] == pytest.approx(0.0, abs=1e-6)
    assert calibration["summary"] == {"scenes": 2, "compared": 1, "within_tolerance": 1,
                                      "not_reconstructed": ["synthetic02"],
                                      "status": {"ok": 1, "ambiguous": 0, "failed": 1}}
    summary = ("scenario III: 2 scenes calibrated: ok 1, ambiguous 0, failed 1; within tolerance of the simulated "
               "drift 1/1 (a failed calibration has no estimate); not reconstructed in scenario III: synthetic02, so "
               "its means and comparisons are over the other 1 scene")
    captured = capsys.readouterr()
    printed = captured.out
    assert "| 10/10 [" in captured.err.split("\r")[-1]        # the progress ends complete, with 2 fewer made
    assert f"{summary}\n" in printed
    assert "calibration status (synthetic02): failed\n  - no minimum; anywhere\n" in printed        # the reasons
    assert "synthetic02 (calibration failed)" in printed and "mean of 1/2" in printed
    markdown = (out / "results.md").read_text()
    assert f"- {summary}\n" in markdown and "| synthetic02 (calibration failed) | - | - | - | - | - |" in markdown
    assert "| synthetic02 | failed | N=4, K=2, linear | - | - | - | - | - | no estimate (failed) |" in markdown
    assert "| III (1/2 scenes) |" in markdown and "| II |" in markdown    # the means table says whose mean it is
    assert "Each comparison is over the scenes its scenarios have in common." in markdown


def test_no_comparison_with_scenario_iii_when_every_calibration_failed():
    """Every scene's calibration failed: III has no scene, so Delta_cal and the recovery are not computed (they were
    NaN, printed as 'nan'), the III mean is empty and within tolerance counts no scene."""
    rows = [{"name": "s", "psnr": 20.0, "ssim": 0.5, "sam": 9.0, "ergas": 10.0, "seconds": 0.0}]
    failed = {"name": "s", "estimate": None, "error": None, "outside_tolerance": None, "seconds": 1.0,
              "status": "failed", "reasons": ["no minimum"]}
    results = summarize({"II": rows, "III": [], "IV": rows}, [failed], FixedEstimate(XI), truth=XI)
    assert "comparison" not in results                      # Delta_cal and the recovery need a scene in III
    assert math.isnan(results["scenarios"]["III"]["mean"]["psnr"])
    assert results["scenarios"]["III"]["not_reconstructed"] == ["s"]
    assert results["calibration"]["summary"]["compared"] == 0 and results["calibration"]["mean_abs_error"]["dx"] is None
    assert calibration_summary({"calibration": results["calibration"]}).endswith(
        "within tolerance of the simulated drift 0/0 (a failed calibration has no estimate); not reconstructed in "
        "scenario III: s, so it has no mean and no comparison")


# ------------------------------------------------------------------------------------------ MST layout
def write_mst_layout(root, size=32, scenes=2, mask_size=None):
    (root / "Truth").mkdir(parents=True)
    for k, scene in enumerate(synthetic_scenes(scenes, size, size, seed=7), 1):
        scipy.io.savemat(root / "Truth" / f"scene{k:02d}.mat", {"img": scene.cube.permute(1, 2, 0).numpy()})
    side = mask_size or size
    scipy.io.savemat(root / "mask.mat", {"mask": synthetic_mask(side, side, seed=5).numpy()})


def test_mst_layout_is_read_and_evaluated(tmp_path):
    write_mst_layout(tmp_path / "TSA_simu_data")
    out = tmp_path / "run"
    assert run_cli("kaist", "--data.root", tmp_path / "TSA_simu_data", *FAST_GAP, "--previews", 0,
                   "--out", out) == 0
    results = read_results(out)
    assert [s["name"] for s in results["scenes"]] == ["scene01", "scene02"]
    assert results["data"]["mask"]["source"].endswith("mask.mat")
    assert results["previews"] == [] and not (out / "previews").exists()


def test_mst_layout_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli("kaist", "--data.root", tmp_path / "empty", "--out", tmp_path / "a") == 2
    assert "Truth" in capsys.readouterr().err
    write_mst_layout(tmp_path / "wrong", mask_size=64)
    assert run_cli("kaist", "--data.root", tmp_path / "wrong", "--out", tmp_path / "b") == 2
    assert "(32, 32) pixels but the mask is (64, 64)" in capsys.readouterr().err
    (tmp_path / "nokey" / "Truth").mkdir(parents=True)
    scipy.io.savemat(tmp_path / "nokey" / "Truth" / "scene01.mat", {"cube": np.zeros((32, 32, 28))})
    scipy.io.savemat(tmp_path / "nokey" / "mask.mat", {"mask": np.ones((32, 32))})
    assert run_cli("kaist", "--data.root", tmp_path / "nokey", "--out", tmp_path / "c") == 2
    assert "key 'img' not found" in capsys.readouterr().err


def test_bad_cli_values_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("kaist", "--mismatch", "dz=1")
    assert "unknown mismatch parameter" in capsys.readouterr().err
    assert run_cli("kaist", "--model", "mst_s", "--out", tmp_path / "x") == 2
    assert "needs weights" in capsys.readouterr().err
    assert run_cli("kaist", "--model", "nosuch", "--out", tmp_path / "x") == 2      # unknown before "needs weights"
    assert "unknown model 'nosuch'; known models:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("kaist", "--scenarios", "I,II", "--mismatch", "dx=1,dx=2")
    assert "mismatch names 'dx' twice" in capsys.readouterr().err
    # options that would have no effect are refused, before anything is written
    assert run_cli("kaist", "--mismatch", "dx=1", "--out", tmp_path / "y") == 2
    assert "--mismatch applies to scenarios II, III and IV" in capsys.readouterr().err
    assert run_cli("kaist", "--scenarios", "I,II", "--operator", tmp_path / "op.npz", "--out", tmp_path / "y") == 2
    assert "does not include III" in capsys.readouterr().err
    np.save(tmp_path / "mask32.npy", synthetic_mask(32, 32, seed=1).numpy())
    assert run_cli("kaist", "--mask", tmp_path / "mask32.npy", "--synthetic.size", 64, "--out", tmp_path / "y") == 2
    assert "--synthetic.size 64: the synthetic scenes take the size of the mask" in capsys.readouterr().err
    (tmp_path / "tsa" / "Truth").mkdir(parents=True)
    for option in ("--synthetic.count", "--synthetic.seed"):
        assert run_cli("kaist", "--data.root", tmp_path / "tsa", option, 3, "--out", tmp_path / "y") == 2
        assert f"{option} sets the built-in synthetic scenes, and the scenes come from --data.root" in \
            capsys.readouterr().err
    assert run_cli("kaist", "--noise.seed", 3, "--out", tmp_path / "y") == 2
    assert "--noise.seed seeds the detector noise, and neither" in capsys.readouterr().err
    assert run_cli("kaist", "--oversample", 2, 1, "--out", tmp_path / "y") == 2
    assert "--oversample sets the simulator of scenarios Ih-IV, and --scenarios I measures" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@pytest.mark.parametrize("command", ["kaist", "real"])
@pytest.mark.parametrize("device", ["foo", "tpu", pytest.param("cuda", marks=NO_CUDA),
                                    pytest.param("cuda:1", marks=NO_CUDA)])
def test_a_device_this_machine_lacks_is_one_line(tmp_path, capsys, command, device):
    """--device is checked (cassi.devices.check_device, shared with calibrate.py) before the weights are read."""
    data = ["--data.root", tmp_path] if command == "real" else []
    assert run_cli(command, *data, "--model", "mst_s", "--ckpt", tmp_path / "missing.pth", "--device", device,
                   "--out", tmp_path / "x") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"eval.py {command}: error: --device"), lines
    assert device in lines[0] and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------- real captures
def write_real_capture(root, make_operator):
    """A real-capture folder at ``root``: a 32 px mask.mat and scene1.mat, a synthetic scene measured
    through ``make_operator(mask)`` (scaled to max 1). Returns that operator."""
    root.mkdir()
    mask = synthetic_mask(32, 32, seed=2)
    scipy.io.savemat(root / "mask.mat", {"mask": mask.numpy()})
    op = make_operator(mask)
    y = op(synthetic_scenes(1, 32, 32, seed=4)[0].cube[None])[0]
    scipy.io.savemat(root / "scene1.mat", {"meas_real": (y / y.max()).numpy()})
    return op


def test_real_captures_report_only_the_measurement_residual(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)               # the progress bar, as on a terminal
    root = tmp_path / "real"
    write_real_capture(root, CassiOperator)
    out = tmp_path / "run"
    assert run_cli("real", "--data.root", root, *FAST_GAP, "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    capture = results["captures"][0]
    assert set(capture) == {"name", "residual", "seconds"} and 0 < capture["residual"] < 0.5
    assert set(results["mean"]) == {"residual", "seconds"} and "scenes" not in results
    assert (out / "previews" / "scene1.png").read_bytes()[:8] == PNG
    assert "real: 100%" in capsys.readouterr().err


def test_real_captures_side_by_side_with_the_calibrated_instrument(tmp_path, capsys):
    """--operator: every capture is also reconstructed through the calibrated forward model it records."""
    from calib.instrument import InstrumentOperator

    root = tmp_path / "real"
    instrument = write_real_capture(root, lambda mask: InstrumentOperator(mask, mismatch=XI, spatial=2, spectral=1))
    save_operator(tmp_path / "operator.npz", instrument)
    out = tmp_path / "run"
    assert run_cli("real", "--data.root", root, *FAST_GAP, "--operator", tmp_path / "operator.npz", "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    capture = results["captures"][0]
    assert set(capture) == {"name", "residual", "seconds", "residual_calibrated", "seconds_calibrated"}
    assert results["operator"]["oversample"] == [2, 1]
    assert results["operator"]["mismatch"] == pytest.approx(XI.to_dict())
    report = (out / "results.md").read_text()
    assert "residual calibrated" in report and f"- calibrated operator: {tmp_path / 'operator.npz'} (mismatch dx=1, " \
        "dy=0.5, theta=0.3, a1=2.02, alpha=0.2; forward model N=2, K=1" in report
    assert "- **caveat**: the residuals rank how closely the method fits y through each operator, not which " \
        "operator is right" in report
    mean = results["mean"]
    assert f"mean relative residual ||Ax - y||/||y|| = {mean['residual']:.4f} (nominal), " \
        f"{mean['residual_calibrated']:.4f} (calibrated)" in capsys.readouterr().out
    assert (out / "previews" / "scene1.png").read_bytes()[:8] == PNG
    assert (out / "previews" / "scene1_spectra.png").read_bytes()[:8] == PNG
    save_operator(tmp_path / "other.npz", InstrumentOperator(torch.ones(32, 32), spatial=2, spectral=1))
    assert run_cli("real", "--data.root", root, "--operator", tmp_path / "other.npz", "--out", tmp_path / "x") == 2
    assert "is not the captures' mask.mat" in capsys.readouterr().err


def test_the_status_a_saved_calibration_records_is_reported(tmp_path, capsys):
    """eval.py real --operator and kaist scenario III (--operator, --calibration) print the calibration's status and
    reasons and write them to results.json / results.md; an operator file from before they were recorded says so."""
    root = tmp_path / "real"
    instrument = write_real_capture(root, lambda mask: CassiOperator(mask, mismatch=XI))
    reasons = ["dx not pinned", "capture 1 prefers another instrument"]
    shown = "ambiguous\n  - dx not pinned\n  - capture 1 prefers another instrument"
    save_operator(tmp_path / "ambiguous.npz", instrument, "ambiguous", reasons)
    save_operator(tmp_path / "old.npz", instrument)                          # no status recorded
    for name, text, recorded in (("ambiguous", shown, {"status": "ambiguous", "reasons": reasons}),
                                 ("old", "status not recorded", {"status": None, "reasons": None})):
        out = tmp_path / f"real_{name}"
        assert run_cli("real", "--data.root", root, *FAST_GAP, "--operator", tmp_path / f"{name}.npz",
                       "--no-previews", "--out", out) == 0
        assert f"calibration status of {tmp_path / f'{name}.npz'}: {text}\n" in capsys.readouterr().out
        assert f"- **calibration status**: {text}\n" in (out / "results.md").read_text()
        assert read_results(out)["operator"]["calibration_status"] == recorded
    save_operator(tmp_path / "kaist.npz", CassiOperator(synthetic_mask(32, 32), mismatch=XI), "ambiguous", reasons)
    (tmp_path / "calibration.json").write_text(json.dumps({"estimate": XI.to_dict(), "status": "ambiguous",
                                                           "reasons": reasons}))
    for option, path in (("--operator", tmp_path / "kaist.npz"), ("--calibration", tmp_path / "calibration.json")):
        out = tmp_path / f"kaist{option}"
        assert run_cli("kaist", "--synthetic.count", 1, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III",
                       option, path, "--previews", 0, "--out", out) == 0
        line = f"scenario III calibration status ({path}): {shown}"
        assert f"{line}\n" in capsys.readouterr().out and f"- {line}\n" in (out / "results.md").read_text()
        assert read_results(out)["calibration"]["method"]["calibration_status"] == {
            str(path): {"status": "ambiguous", "reasons": reasons}}
        assert [c["seconds"] for c in read_results(out)["calibration"]["scenes"]] == [None]   # not calibrated here
        assert "operator from a saved calibration" in read_results(out)["scenarios"]["III"]["description"]


def test_a_saved_calibration_that_failed_is_refused_before_any_work(tmp_path, capsys):
    """--operator / --calibration whose recorded status is "failed": exit 2 naming the file, the status and every
    reason (a reason may hold ';'), before the weights are read (the missing checkpoint is never reached): kaist and
    real."""
    reasons = ["the score does not rise; anywhere", "capture 1 prefers another instrument"]
    save_operator(tmp_path / "op.npz", CassiOperator(synthetic_mask(32, 32), mismatch=XI), "failed", reasons)
    (tmp_path / "calibration.json").write_text(json.dumps({"estimate": XI.to_dict(), "status": "failed",
                                                           "reasons": reasons}))
    shown = '"failed" (reasons: "the score does not rise; anywhere", "capture 1 prefers another instrument")'
    for option, path in (("--operator", tmp_path / "op.npz"), ("--calibration", tmp_path / "calibration.json")):
        assert run_cli("kaist", "--model", "mst_s", "--ckpt", tmp_path / "missing.pth", "--synthetic.size", 32,
                       "--scenarios", "II,III", option, path, "--out", tmp_path / "run") == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"{path}: this " in err and shown in err, err
    assert run_cli("real", "--data.root", tmp_path / "nowhere", "--model", "mst_s", "--ckpt", tmp_path / "missing.pth",
                   "--operator", tmp_path / "op.npz", "--out", tmp_path / "run") == 2
    assert shown in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_real_reads_the_operator_file_once(tmp_path, monkeypatch):
    """eval.py real --operator read the file twice (the instrument, then its status): one read now gives both."""
    import cassi.operator_file

    root = tmp_path / "real"
    save_operator(tmp_path / "op.npz", write_real_capture(root, lambda mask: CassiOperator(mask, mismatch=XI)), "ok")
    opened, load = [], np.load
    monkeypatch.setattr(cassi.operator_file.np, "load", lambda path, **kw: opened.append(path) or load(path, **kw))
    assert run_cli("real", "--data.root", root, *FAST_GAP, "--operator", tmp_path / "op.npz", "--no-previews",
                   "--out", tmp_path / "run") == 0
    assert opened == [tmp_path / "op.npz"]
    assert read_results(tmp_path / "run")["operator"]["calibration_status"] == {"status": "ok", "reasons": []}


@dataclass
class ScaledGapTV(GapTV):
    """GAP-TV's cube times ``factor``, presented as a network's (not fitted through the operator)."""

    factor: float = 7.0
    fits_measurement: ClassVar[bool] = False

    def __call__(self, y, op):
        return self.factor * super().__call__(y, op)


def test_a_network_reports_the_residual_after_the_best_scale(tmp_path, capsys):
    """A cube on another scale than the operator's (BiSCI's real network) is not counted as misfit: the
    residual after c = <Ax, y>/<Ax, Ax> does not change when the cube is scaled by 7, c does (by 1/7), and
    it is at most the plain residual."""
    from evaluation.real import evaluate_real

    root = tmp_path / "real"
    write_real_capture(root, CassiOperator)
    plain, one = (evaluate_real(method, root, tmp_path / name, previews=False, verbose=False)["captures"][0]
                  for method, name in ((GapTV(iterations=8), "plain"), (ScaledGapTV(8, factor=1.0), "one")))
    results = evaluate_real(ScaledGapTV(iterations=8), root, tmp_path / "seven", previews=False)
    seven = results["captures"][0]
    assert set(seven) == {"name", "scaled_residual", "scale", "seconds"}
    assert results["residual_key"] == "scaled_residual" and "residual" not in results["mean"]
    assert 7 * seven["scale"] == pytest.approx(one["scale"], rel=1e-5) and one["scale"] == pytest.approx(1, abs=0.1)
    assert seven["scaled_residual"] == pytest.approx(one["scaled_residual"], rel=1e-5)
    assert one["scaled_residual"] <= plain["residual"] * (1 + 1e-6)
    assert "||c A x - y|| / ||y|| with c = <A x, y> / <A x, A x>" in results["metric"]
    assert f"after the best scale c, ||cAx - y||/||y|| = {seven['scaled_residual']:.4f} (nominal, " \
        f"c = {seven['scale']:.4g})" in capsys.readouterr().out
    assert "| capture | scaled residual | scale | seconds |" in (tmp_path / "seven" / "results.md").read_text()
    flipped = evaluate_real(ScaledGapTV(8, factor=-1.0), root, tmp_path / "flipped", previews=False, verbose=False)
    assert flipped["captures"][0]["scale"] < 0 and "is not positive (nominal operator)" in flipped["warnings"][0]
    assert "is not positive" in (tmp_path / "flipped" / "results.md").read_text()


def test_real_refuses_an_operator_for_a_network_that_takes_no_mask(tmp_path, capsys):
    """A *_real network ignores the operator: its "calibrated" column would repeat the nominal one."""
    from models import create_model

    root = tmp_path / "real"
    save_operator(tmp_path / "operator.npz", write_real_capture(root, CassiOperator))
    torch.save(create_model("mst_s_real").state_dict(), tmp_path / "mst_s_real.pth")
    out = tmp_path / "run"
    assert run_cli("real", "--data.root", root, "--model", "mst_s_real", "--ckpt", tmp_path / "mst_s_real.pth",
                   "--operator", tmp_path / "operator.npz", "--out", out) == 2
    err = capsys.readouterr().err
    assert "--operator: mst_s_real does not take the coded mask" in err and "use gap_tv or a mask-aware" in err
    assert not out.exists()
    # eval.py kaist: scenarios III and IV reconstruct with another operator, which it cannot take either
    assert run_cli("kaist", "--model", "mst_s_real", "--ckpt", tmp_path / "mst_s_real.pth", "--synthetic.count", 1,
                   "--synthetic.size", 32, "--scenarios", "I,II,IV", "--out", out) == 2
    assert "--scenarios IV: mst_s_real does not take the coded mask" in capsys.readouterr().err
    assert not out.exists()


def test_real_reads_the_flat_the_toolbox_and_the_tsa_net_layout_and_only_scene_files(tmp_path):
    """--data.root DIR: DIR/mask.mat and the captures beside it, in DIR/Measurements/ (the MST toolbox's
    TSA_real_data: it said 'no captures scene*.mat ... next to mask.mat or in Testing_real_data/') or in
    DIR/Testing_real_data/ (TSA-Net's Data/). A notes.mat beside the captures is not read; captures in two of
    these folders are refused, naming both, never mixed."""
    from evaluation.real import find_captures, load_captures

    for name in ("", "Measurements", "Testing_real_data"):
        root = tmp_path / f"root_{name}"
        write_real_capture(root, CassiOperator)
        folder = root / name
        folder.mkdir(exist_ok=True)
        (root / "scene1.mat").rename(folder / "scene1.mat")
        scipy.io.savemat(folder / "notes.mat", {"notes": np.ones(3)})
        assert find_captures(root) == (root / "mask.mat", [folder / "scene1.mat"]), name
        _, _, captures, _ = load_captures(root)
        assert [path.name for path, _ in captures] == ["scene1.mat"] and captures[0][1].shape == (32, 86), name
    toolbox = tmp_path / "root_Measurements"
    out = tmp_path / "run"
    assert run_cli("real", "--data.root", toolbox, *FAST_GAP, "--no-previews", "--out", out) == 0
    assert read_results(out)["captures_folder"] == str(toolbox / "Measurements")
    (toolbox / "Testing_real_data").mkdir()
    scipy.io.savemat(toolbox / "Testing_real_data" / "scene2.mat", {"meas_real": np.ones((32, 86), np.float32)})
    with pytest.raises(ValueError, match=r"captures scene\*\.mat in more than one folder \(1 in .*Measurements, 1 in "
                                         r".*Testing_real_data\); pass --data.captures with the one to read"):
        find_captures(toolbox)
    flat = tmp_path / "root_"
    (flat / "Measurements").mkdir()                          # an empty one is no second folder
    assert find_captures(flat)[1] == [flat / "scene1.mat"]
    (flat / "scene1.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"no captures scene\*\.mat .* next to mask.mat or in Measurements/ or "
                                                r"Testing_real_data/"):
        find_captures(flat)


def test_real_with_captures_in_two_folders_reads_the_one_data_captures_names(tmp_path, capsys):
    """Was: captures in both Measurements/ and Testing_real_data/ were refused naming both, with no way to choose but
    moving files ('keep them in one folder'); the refusal now names --data.captures, which reads the folder it names
    (recorded as captures_folder). A --data.captures without captures is refused naming the option."""
    root = tmp_path / "real"
    write_real_capture(root, CassiOperator)
    for name in ("Measurements", "Testing_real_data"):
        (root / name).mkdir()
        shutil.copy(root / "scene1.mat", root / name / "scene1.mat")
    (root / "scene1.mat").unlink()
    out = tmp_path / "run"
    assert run_cli("real", "--data.root", root, *FAST_GAP, "--no-previews", "--out", out) == 2
    assert (f"captures scene*.mat in more than one folder (1 in {root / 'Measurements'}, 1 in "
            f"{root / 'Testing_real_data'}); pass --data.captures with the one to read") in capsys.readouterr().err
    assert not out.exists()
    chosen = root / "Testing_real_data"
    assert run_cli("real", "--data.root", root, "--data.captures", chosen, *FAST_GAP, "--no-previews", "--out",
                   out) == 0
    results = read_results(out)
    assert results["captures_folder"] == str(chosen) and results["root"] == str(root)
    assert [row["name"] for row in results["captures"]] == ["scene1"]
    assert run_cli("real", "--data.root", root, "--data.captures", root, *FAST_GAP, "--out", tmp_path / "run2") == 2
    assert f"--data.captures {root}: no captures scene*.mat (key 'meas_real') in it" in capsys.readouterr().err

def test_real_takes_the_toolbox_datasets_folder_and_names_the_folder_to_pass(tmp_path):
    """--data.root datasets/ (the MST toolbox's, as eval.py kaist takes it) reads datasets/TSA_real_data, and results
    record that folder; it said only 'expected the coded aperture in datasets/mask.mat'. Measurements/ or
    Testing_real_data/ given itself names its parent to pass; another folder without mask.mat names what to pass."""
    from evaluation.real import find_captures

    datasets = tmp_path / "datasets"
    real = datasets / "TSA_real_data"
    datasets.mkdir()
    write_real_capture(real, CassiOperator)
    (real / "Measurements").mkdir()
    (real / "scene1.mat").rename(real / "Measurements" / "scene1.mat")
    assert find_captures(datasets) == (real / "mask.mat", [real / "Measurements" / "scene1.mat"])
    out = tmp_path / "run"
    assert run_cli("real", "--data.root", datasets, *FAST_GAP, "--no-previews", "--out", out) == 0
    results = read_results(out)
    assert results["root"] == str(real) and results["mask"]["source"] == str(real / "mask.mat")
    (tmp_path / "Data" / "Testing_real_data").mkdir(parents=True)
    for folder in (real / "Measurements", tmp_path / "Data" / "Testing_real_data"):
        with pytest.raises(FileNotFoundError, match=rf"{folder.name}: expected the coded aperture in .*; pass "
                                                    rf"--data.root .*{folder.parent.name}, the folder holding mask"):
            find_captures(folder)
    with pytest.raises(FileNotFoundError, match=r"Data: expected the coded aperture in .*mask.mat \(pass "
                                                r"--data.root the folder holding mask.mat and the captures: the MST "
                                                r"toolbox's TSA_real_data or the datasets/ folder holding it, or "
                                                r"TSA-Net's Data\)"):
        find_captures(tmp_path / "Data")


def test_data_root_help_names_the_toolbox_folders_each_command_takes(capsys):
    """--help of eval.py kaist and real names the toolbox's datasets/ folder, which both take (17f9e8d, f34d50d); the
    kaist help said only 'folder in the MST layout (Truth/sceneNN.mat + mask.mat)'."""
    def data_root_help(command: str) -> str:
        with pytest.raises(SystemExit):
            eval_cli.build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        return text[text.rindex("--data.root DATA_ROOT"):]          # the option's entry, after the usage line

    assert data_root_help("kaist").startswith("--data.root DATA_ROOT the MST toolbox's TSA_simu_data "
                                              "(Truth/sceneNN.mat + mask.mat) or the datasets/ folder holding it; "
                                              "default: synthetic")
    assert "or the toolbox's datasets/ (its TSA_real_data is read)" in data_root_help("real")


def test_real_requires_a_folder_and_matching_shapes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("real")
    root = tmp_path / "real"
    root.mkdir()
    scipy.io.savemat(root / "mask.mat", {"mask": np.ones((32, 32), np.float32)})
    scipy.io.savemat(root / "scene1.mat", {"meas_real": np.ones((32, 80), np.float32)})
    assert run_cli("real", "--data.root", root, "--out", tmp_path / "run") == 2
    assert "must be (32, 86)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- model table
def test_models_table_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)               # the progress bar, as on a terminal
    """One row per requested network; a size the network cannot take is reported on its row, not raised."""
    from models.flops import PAPER_FIGURES, count_flops, count_parameters
    from models.registry import create_model

    out = tmp_path / "table"
    names = ["mst_s", "hsra_s"]
    assert run_cli("models", "--size", 32, "--models", ",".join(names), "--repeats", 1, "--out", out) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "networks at 32x32" in printed and "models: 100%" in captured.err
    assert [ln.split()[0] for ln in printed.splitlines() if ln.split() and ln.split()[0] in names] == names
    rows = {r["name"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    model = create_model("mst_s").eval()
    op = CassiOperator(torch.ones(32, 32))
    inputs = model.prepare_inputs(torch.rand(1, 32, 86), op)
    assert rows["mst_s"]["flops"] == count_flops(model, inputs)     # the operator adds no counted FLOPs
    assert rows["mst_s"]["params"] == count_parameters(model)
    assert rows["mst_s"]["paper_gflops"] == PAPER_FIGURES["mst_s"][1]
    assert rows["mst_s"]["seconds"] > 0 and rows["mst_s"]["error"] is None
    assert rows["hsra_s"]["flops"] is None and "multiple of 64" in rows["hsra_s"]["error"]
    assert rows["hsra_s"]["params"] == count_parameters(create_model("hsra_s"))
    assert "| mst_s |" in out.with_suffix(".md").read_text()
    assert run_cli("models", "--size", 32, "--models", "mst_s", "--no-time", "--repeats", 5) == 2   # no effect
    assert "--repeats 5 sets the timed forward passes, and --no-time skips the timing" in capsys.readouterr().err


def test_models_table_counts_every_output_of_the_network(tmp_path):
    """The FLOPs are those of the network's whole forward: CRSDUN's segmentation head too (counting only the cube's
    path let fvcore's trace drop it: 49.41 instead of the fixtures' 59.44 G for crsdun_3stg at 256x256)."""
    from models.flops import count_flops
    from models.registry import create_model

    out = tmp_path / "table"
    assert run_cli("models", "--size", 32, "--models", "crsdun_3stg", "--no-time", "--out", out) == 0
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    torch.manual_seed(0)
    model = create_model("crsdun_3stg").eval()
    op = CassiOperator(torch.ones(32, 32))
    assert row["flops"] == count_flops(model, model.prepare_inputs(torch.rand(1, 32, 86), op))


def test_the_nominal_and_calibrated_previews_share_their_probes():
    """The real-capture previews compare reconstructions of one capture at the same pixels (those of the
    first), however differently the second is lit."""
    from data.previews import probe_points, shared_probe_spectra

    first, second = np.zeros((28, 60, 60)), np.zeros((28, 60, 60))
    first[:, 10:15, 10:15], second[:, 40:45, 40:45] = 1.0, 2.0       # their brightest spots differ
    shared = shared_probe_spectra([first, second])
    assert [(r, c) for r, c, _ in shared] == probe_points(first) != probe_points(second)
    row, col, (a, b) = shared[0]
    np.testing.assert_allclose(a, first[:, row - 1:row + 2, col - 1:col + 2].mean(axis=(1, 2)))
    np.testing.assert_allclose(b, second[:, row - 1:row + 2, col - 1:col + 2].mean(axis=(1, 2)))


def test_each_scenes_estimate_gets_the_physical_checks(tmp_path, capsys, monkeypatch):
    """Issue: the physical checks (cassi.checks.check_instrument) ran on one saved estimate only. A per-scene saved
    calibration and a live one are checked per scene: warnings name the scene (and file) and are recorded with its
    calibration; an impossible saved estimate is refused before any work, an impossible live one is a warning."""
    from calib.result import CalibrationResult

    far = Mismatch(**{**XI.to_dict(), "dx": 20.0})          # 12 of 32 columns still on the detector
    write_scene_calibrations(tmp_path / "cal", {"synthetic01": (XI, [1, 1], "linear"),
                                                "synthetic02": (far, [1, 1], "linear")})
    out = tmp_path / "run"
    assert run_cli("kaist", "--synthetic.count", 2, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III",
                   "--calibration", tmp_path / "cal", "--previews", 0, "--out", out) == 0
    results = read_results(out)
    rows = results["calibration"]["scenes"]
    assert rows[0]["instrument_warnings"] == []
    [warning] = rows[1]["instrument_warnings"]
    assert warning.startswith(f"scenario III estimate of synthetic02 from {tmp_path / 'cal' / 'synthetic02'}")
    assert "of the light" in warning and warning in results["warnings"]
    assert f"warning: {warning}\n" in capsys.readouterr().out
    assert f"**warning**: {warning}" in (out / "results.md").read_text()
    write_scene_calibrations(tmp_path / "off", {"synthetic01": (Mismatch(**{**XI.to_dict(), "dx": 100.0}), [1, 1],
                                                                "linear")})
    assert run_cli("kaist", "--synthetic.count", 1, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III",
                   "--calibration", tmp_path / "off", "--out", tmp_path / "run2") == 2
    assert "scenario III estimate of synthetic01 from" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()

    def calibrate(y, mask, **options):
        return CalibrationResult(made.pop(0), 0.0, 0.0, "ok", [], [], {},
                                 {"oversample": [1, 1], "mask_interpolation": "linear"})

    made = [far, Mismatch(**{**XI.to_dict(), "dx": 100.0})]
    monkeypatch.setattr("calib.calibrate", calibrate)
    assert run_cli("kaist", "--synthetic.count", 2, "--synthetic.size", 32, *FAST_GAP, "--scenarios", "II,III",
                   "--previews", 0, "--out", tmp_path / "live") == 0
    rows = read_results(tmp_path / "live")["calibration"]["scenes"]
    assert "scenario III estimate of synthetic01 {" in rows[0]["instrument_warnings"][0]
    assert rows[1]["instrument_warnings"][0].endswith("(an impossible instrument)")


def test_export_says_a_primary_scenario_iii_left_out_a_failed_scene():
    """Issue: --scenarios III alone with a failed calibration gives a primary 'scenes' list shorter than data.scenes;
    eval.py export refused it without saying why."""
    from evaluation.model_card import check_consistency

    row = {"name": "a", "psnr": 20.0, "ssim": 0.5, "sam": 9.0, "ergas": 10.0, "seconds": 0.0}
    results = {"data": {"scenes": ["a", "b"]}, "primary_scenario": "III", "scenes": [row], "mean": dict(row),
               "scenarios": {"III": {"scenes": [row], "not_reconstructed": ["b"]}}}
    with pytest.raises(ValueError, match="r.json: its scene rows .* primary scenario III did not reconstruct b, whose "
                                         "scenario III calibration failed"):
        check_consistency(results, "r.json")


def test_a_handed_mask_read_as_a_resampled_code_is_reconstructed_through_the_code(tmp_path, monkeypatch):
    """A calibration that read the handed mask as a binary code resampled at a sub-pixel phase fitted the code at the
    estimate in the code's frame (calibrate.py's operator.npz holds both); III-model went through the handed mask at
    the handed-frame estimate, another model (live), and a saved one needs the code from its operator.npz. Issue:
    --operator refused that operator.npz as "not the evaluation mask" (it holds the code, and now its phase)."""
    from calib.instrument import instrument_operator
    from calib.result import CalibrationResult
    from calib.outputs import write_outputs
    from cassi.errors import UserError
    from cassi.operator_file import read_operator_file
    from cassi.simulator import simulate_measurement
    from cassi.warp import warp_mask
    from evaluation.calibration import from_calibration_json, from_operator_record

    code = synthetic_mask(32, 32)
    phase = {"fy": 0.25, "fx": -0.3}
    handed = warp_mask(code, dx=-phase["fx"], dy=-phase["fy"])
    np.save(tmp_path / "handed.npy", handed.numpy())
    in_code = Mismatch(**{**XI.to_dict(), "dx": XI.dx - phase["fx"], "dy": XI.dy - phase["fy"]})
    settings = {"oversample": [1, 1], "mask_interpolation": "linear",
                "handed_mask": {"detected": True, "phase": phase, "kernel": "bilinear"}}
    result = CalibrationResult(XI, 0.0, 0.0, "ok", [], [], {}, settings, code=code)
    monkeypatch.setattr("calib.calibrate", lambda y, mask, **options: result)
    scene = synthetic_scenes(1, 32, 32)[0]
    y = simulate_measurement(scene.cube[None], handed, XI, 2, 1, 1)
    expected = {"III-model": instrument_operator(code, 28, 2, in_code, (1, 1), "linear"),
                "III": CassiOperator(handed, 28, 2, XI)}          # the native row: the evaluation mask as handed
    expected = {k: kaist_metrics(GapTV(iterations=8)(y, op)[0], scene.cube)["psnr"] for k, op in expected.items()}
    args = ("kaist", "--synthetic.count", 1, "--mask", tmp_path / "handed.npy", *FAST_GAP, "--scenarios", "II,III",
            "--mismatch", ",".join(f"{k}={v}" for k, v in XI.to_dict().items()), "--oversample", 1, 1, "--previews", 0)
    assert run_cli(*args, "--out", tmp_path / "live") == 0
    results = read_results(tmp_path / "live")
    for key, psnr in expected.items():
        assert results["scenarios"][key]["scenes"][0]["psnr"] == pytest.approx(psnr, abs=1e-6)
    code_frame = results["calibration"]["scenes"][0]["forward_model"]["code_frame"]
    assert code_frame["phase"] == phase and code_frame["estimate"]["dx"] == pytest.approx(in_code.dx)
    # saved: calibration.json + the operator.npz calibrate.py writes beside it (the code, the code-frame estimate)
    folder = tmp_path / "cal" / "synthetic01"
    for plot in ("plot_landscape", "plot_stages"):
        monkeypatch.setattr(f"calib.plots.{plot}", lambda result, path: path)
    write_outputs(result, handed, 28, 2, folder)
    for option, source in (("--calibration", tmp_path / "cal"), ("--calibration", folder / "calibration.json"),
                           ("--operator", folder / "operator.npz")):    # per scene, for every scene, the operator
        out = tmp_path / f"saved_{source.name}"
        assert run_cli(*args, option, source, "--out", out) == 0
        for key, psnr in expected.items():
            assert read_results(out)["scenarios"][key]["scenes"][0]["psnr"] == pytest.approx(psnr, abs=1e-6)
    assert read_results(out)["calibration"]["method"]["code_frame"]["phase"] == phase
    with pytest.raises(UserError, match=f"{folder / 'operator.npz'}: the operator's mask is the binary code recovered "
                                        "from a handed mask resampled at phase fy=0.25, fx=-0.3 px .* not the "
                                        "evaluation mask"):
        from_operator_record(read_operator_file(folder / "operator.npz"), folder / "operator.npz", code)
    (folder / "operator.npz").unlink()
    with pytest.raises(ValueError, match="resampled at phase .*operator.npz is missing"):
        from_calibration_json(tmp_path / "cal")


def test_progress_bar_only_on_a_terminal(tmp_path, capsys):
    """With stderr redirected to a log file (not a terminal, as under pytest) no progress bar is drawn: its
    carriage-return updates would fill the log (it was drawn whatever stderr was)."""
    assert run_cli("kaist", "--synthetic.count", 1, "--synthetic.size", 32, *FAST_GAP, "--previews", 0,
                   "--out", tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert "kaist: " not in err and "\r" not in err


def test_real_operator_of_a_handed_mask_read_as_a_resampled_code(tmp_path, capsys):
    """calibrate.py's operator.npz for a handed mask read as a binary code resampled at a phase holds the code and
    the estimate in its frame (code_phase); eval.py real refused it as not the captures' mask.mat (kaist took it)."""
    from calib.instrument import instrument_operator
    from cassi.warp import warp_mask

    code = synthetic_mask(32, 32, seed=5)
    phase = {"fy": 0.25, "fx": -0.3}
    root = tmp_path / "real"
    write_real_capture(root, lambda mask: CassiOperator(mask))
    scipy.io.savemat(root / "mask.mat", {"mask": warp_mask(code, dx=-phase["fx"], dy=-phase["fy"]).numpy()})
    in_code = Mismatch(dx=0.2, dy=-0.1)
    operator = tmp_path / "operator.npz"
    save_operator(operator, instrument_operator(code, 28, 2, in_code, (1, 1), "linear"), "ok", [],
                  (phase["fy"], phase["fx"]))
    assert run_cli("real", "--data.root", root, *FAST_GAP, "--no-previews", "--operator", operator,
                   "--out", tmp_path / "run") == 0
    info = json.loads((tmp_path / "run" / "results.json").read_text())["operator"]
    assert info["code_frame"]["phase"] == phase and info["code_frame"]["estimate"]["dx"] == pytest.approx(0.2)
    assert info["mismatch"]["dx"] == pytest.approx(0.2 + phase["fx"])               # for the handed mask
    assert "binary code recovered from the handed mask" in (tmp_path / "run" / "results.md").read_text()
    scipy.io.savemat(root / "mask.mat", {"mask": code.numpy()})                    # not what the code resamples to
    assert run_cli("real", "--data.root", root, *FAST_GAP, "--no-previews", "--operator", operator,
                   "--out", tmp_path / "run2") == 2
    assert "the operator's mask is the binary code recovered from a handed mask" in capsys.readouterr().err


def test_network_leaves_the_callers_operator_on_its_device():
    """A network on another device reconstructs through a copy of the operator made once: ``nn.Module.to`` moves in
    place, and run_scenarios goes on measuring CPU scenes through the same operator (on a GPU this failed with
    "Expected all tensors to be on the same device" at the second scene). The meta device stands in for CUDA."""
    from evaluation.reconstructors import Network
    from models import create_model
    from models.checkpoints import LoadedModel

    network = Network(LoadedModel(create_model("mst_s"), "mst_s", {}, {"kind": "test"}), "meta")
    op = CassiOperator(synthetic_mask(16, 16), 28, 2)
    moved = network.on_device(op)
    assert op.mask.device.type == "cpu" and moved.mask.device.type == "meta"
    assert network.on_device(op) is moved
    on_meta = CassiOperator(synthetic_mask(16, 16), 28, 2).to("meta")
    assert network.on_device(on_meta) is on_meta
