"""The user's solver inside the calibration loop: ``--solver S`` decides the estimate, bad solvers fail early."""
from __future__ import annotations

import json
import re
import math
import time

import numpy as np
import pytest
import scipy.io
import torch

import calibrate
from calib import calibrate as run_calibration
from calib.forward_model import PARAMETER_NAMES, params_tensor
from calib.score import ScoreSettings
from calib.network_score import NetworkHeldOutScore, choose_spectral_basis, network_spectral_basis
from calib.solver_score import SolverScore
from calib.solvers import GAP_TV, HELD_OUT, check_network_inputs, load_network, load_solver, network_solver, \
    solver_names
from cassi import CassiOperator, Mismatch
from cassi.errors import UserError
from models import create_model
from models.registry import get_entry
from tests.test_calib_pipeline import QUICK, measure
from tests.cli_checks import user_error
from tests.conftest import shared_path
from tests.test_eval import FAST_GAP, read_results, run_cli, write_mst_layout


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 24 x 24 measurement and mask on disk, and random MST-S / BiSRNet weights (state dicts)."""
    folder = tmp_path_factory.mktemp("solver")
    y, mask = measure(24, Mismatch(dx=0.4, dy=-0.3, a1=2.01))
    np.savez(folder / "y.npz", y=y.numpy())
    scipy.io.savemat(folder / "mask.mat", {"mask": mask.numpy()})
    torch.manual_seed(0)
    torch.save(create_model("mst_s").state_dict(), folder / "mst_s.pth")
    torch.save(create_model("bisrnet").state_dict(), folder / "bisrnet.pth")
    torch.save(create_model("s2_transformer", img_size=24, window_size=8, embed_dim=20, num_heads=[2], depths=[1],
                            spe_dim_head=10).state_dict(), folder / "s2_small.pth")       # not the official build
    y30, mask30 = measure(30, Mismatch())              # MST-S needs H, W divisible by 4 (two down-samplings)
    np.savez(folder / "y30.npz", y=y30.numpy())
    scipy.io.savemat(folder / "mask30.mat", {"mask": mask30.numpy()})
    return folder, y, mask


BAD_SOLVERS = {
    "unknown": (["--solver", "mst_xl"], r"unknown solver 'mst_xl'; expected one of heldout, gap_tv, "),
    "heldout misspelt": (["--solver", "heldot"], r"unknown solver 'heldot'; expected one of heldout, gap_tv, or a "
                         r"registered mask-aware network: bisrnet, .*\(did you mean heldout\?\)"),
    "gap_tv misspelt": (["--solver", "gaptv"], r"unknown solver 'gaptv'; .*\(did you mean gap_tv\?\)"),
    "a network misspelt": (["--solver", "mst_ss"], r"unknown solver 'mst_ss'; .*did you mean mst_s\?"),
    "a network of one's own not registered": (["--solver", "mynet"], r"unknown solver 'mynet'; expected one of heldout, "
                                              r"gap_tv, .*@register_model\('mynet'\) in a module named by the "
                                              r"environment variable CASSI_MODELS"),
    "no checkpoint": (["--solver", "bisrnet"], r"solver bisrnet needs a checkpoint"),
    "missing checkpoint": (["--solver", "mst_s", "--ckpt", "{f}/none.pth"], r"checkpoint not found: .*none.pth"),
    "another model's checkpoint": (["--solver", "bisrnet", "--ckpt", "{f}/mst_s.pth"],
                                   r"mst_s.pth is not a bisrnet checkpoint: .*another size\?\): missing keys"),
    "a .pth of another build": (["--solver", "s2_transformer", "--ckpt", "{f}/s2_small.pth"],
                                r"s2_small.pth is not a s2_transformer checkpoint: .*another size\?\): missing keys.*"
                                r"a .pth is read into s2_transformer built with the registry's official arguments "
                                r"\{.*'embed_dim': 60.*\} \(a .pth does not record its own\): weights of another build "
                                r"load from a train.py .ckpt or a release folder"),
    "bisrnet_real": (["--solver", "bisrnet_real", "--ckpt", "{f}/bisrnet.pth"], r"bisrnet_real does not take the coded mask"),
    "mst_s_real": (["--solver", "mst_s_real", "--ckpt", "{f}/mst_s.pth"], r"mst_s_real does not take the coded mask"),
    "gap_tv with a checkpoint": (["--solver", "gap_tv", "--ckpt", "{f}/mst_s.pth"], r"only used with a network solver"),
    "heldout with a checkpoint": (["--ckpt", "{f}/mst_s.pth"], r"only used with a network solver, not heldout"),
    "a network stage without a network": (["--solver", "gap_tv", "--network-stage"],
                                          r"--network-stage is only used with a network solver, not gap_tv$"),
    "size rules": (["--meas", "{f}/y30.npz", "--mask", "{f}/mask30.mat", "--solver", "mst_s", "--ckpt", "{f}/mst_s.pth"],
                   r"solver mst_s cannot reconstruct a 30x30 scene"),
}


@pytest.mark.parametrize("argv,pattern", BAD_SOLVERS.values(), ids=BAD_SOLVERS.keys())
def test_bad_solvers_fail_with_one_line_before_any_work(inputs, tmp_path, capsys, argv, pattern):
    """Exit code 2, one line naming the problem, no output and (almost) no CPU spent: no search ran."""
    folder, _, _ = inputs
    out = tmp_path / "out"
    files = [] if "--meas" in argv else ["--meas", str(folder / "y.npz"), "--mask", str(folder / "mask.mat")]
    start = time.process_time()
    user_error(capsys, lambda: calibrate.main([*files, *[a.format(f=folder) for a in argv], "--out", str(out),
                                                "--no-progress"]), pattern)
    assert time.process_time() - start < 10
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_an_unknown_solver_is_offered_only_names_that_can_be_solvers(inputs, tmp_path, capsys):
    """The measurement-only ``*_real`` networks take no mask and are refused as solvers, so the message neither lists
    them nor suggests one: ``--solver bisrnet_rea`` said "did you mean bisrnet_real?" and listed every registered
    model."""
    folder, _, _ = inputs
    argv = ["--meas", str(folder / "y.npz"), "--mask", str(folder / "mask.mat"), "--solver", "bisrnet_rea",
            "--out", str(tmp_path / "out")]
    line = user_error(capsys, lambda: calibrate.main(argv),
                      r"unknown solver 'bisrnet_rea'; .*\(did you mean bisrnet\?\)")
    listed = re.search(r"expected one of (.*) \(did you mean", line)[1]
    listed = listed.replace(" or a registered mask-aware network:", "")
    assert listed.split(", ") == solver_names() and "_real" not in line


def test_a_network_whose_size_rules_do_not_fit_fails_before_the_search(tmp_path):
    y, mask = measure(30, Mismatch())                # MST-S needs H, W divisible by 4 (two down-samplings)
    torch.manual_seed(0)
    torch.save(create_model("mst_s").state_dict(), tmp_path / "mst_s.pth")
    with pytest.raises(ValueError, match=r"solver mst_s cannot reconstruct a 30x30 scene") as info:
        run_calibration(y, mask, solver="mst_s", ckpt=str(tmp_path / "mst_s.pth"), progress=False, **QUICK)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", [name for name in solver_names() if name not in (HELD_OUT, GAP_TV)])
def test_every_mask_aware_network_is_a_solver_with_the_weights_of_its_official_build(name, tmp_path):
    """A .pth is read into the network built with the registry's official arguments (as eval.py --ckpt reads it);
    load_solver built s2_transformer with none first, and its defaults cannot be built ("cannot build model
    's2_transformer' with {}"), so no s2_transformer weights could be a solver."""
    torch.manual_seed(0)
    torch.save(create_model(name, **get_entry(name).official_args).state_dict(), tmp_path / "w.pth")
    network = load_solver(name, tmp_path / "w.pth").model
    height, width = (max(multiple, network.size_rule.minimum) for multiple in network.size_rule.multiple)
    op = CassiOperator((torch.rand(height, width) > 0.5).float(), getattr(network, "bands", 28))
    y = op(torch.rand(1, op.bands, height, width))
    check_network_inputs(network, name, y, op)
    assert network_solver(network)(y, op).shape == (1, op.bands, height, width)


def test_the_official_s2_transformer_fixture_is_a_solver():
    network = load_network("s2_transformer", shared_path("fixtures", "s2_transformer", "state_dict.pt"))
    op = CassiOperator((torch.rand(32, 32) > 0.5).float())
    y = op(torch.rand(1, 28, 32, 32))
    check_network_inputs(network, "s2_transformer", y, op)
    assert torch.isfinite(network_solver(network)(y, op)).all()


def test_a_train_py_checkpoint_is_a_solver(inputs, tmp_path):
    """--solver NET --ckpt takes what eval.py --ckpt takes: a Lightning .ckpt of train.py loads (it was refused as
    "missing keys": its weights sit under the module's ``model.`` prefix), one of another model is refused."""
    folder, _, _ = inputs
    state = torch.load(folder / "mst_s.pth")
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()},
                "hyper_parameters": {"model_name": "mst_s", "model_kwargs": {}}}, tmp_path / "last.ckpt")
    network = load_network("mst_s", tmp_path / "last.ckpt")
    assert all(torch.equal(network.state_dict()[k], v) for k, v in state.items()) and not network.training
    with pytest.raises(UserError, match=r"last.ckpt is not a bisrnet checkpoint: .*holds model 'mst_s'") as info:
        load_network("bisrnet", tmp_path / "last.ckpt")
    assert str(info.value).count(str(tmp_path / "last.ckpt")) == 1     # it said the path twice


def test_a_checkpoint_of_another_model_is_named_once(tmp_path):
    """"X is not a mst_m checkpoint: X: release holds ..." and "X is not a bisrnet checkpoint: X is the official
    BiSRNet real-data weights ...": the loaders' messages start with the path, which the error now says once."""
    from models.checkpoints import LoadedModel
    import models.checkpoints as checkpoints

    weights = tmp_path / "my w.pth"                 # a space in the path: "PATH is" and "PATH:" are still told apart
    torch.save({}, weights)
    for loader_says, detail in (("{p}: release holds model 'mst_s'", "release holds model 'mst_s'"),
                                ("{p} is the official weights of bisrnet_real", "it is the official weights of "
                                                                                 "bisrnet_real"),
                                # a message that does not start with the path (here with a longer one) stays whole
                                ("{p}.bak: no weights", f"{weights}.bak: no weights")):
        def refuse(path, name=None) -> LoadedModel:
            raise ValueError(loader_says.format(p=path))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(checkpoints, "load_weights", refuse)
            with pytest.raises(UserError) as info:
                load_network("bisrnet", weights)
        assert str(info.value) == f"{weights} is not a bisrnet checkpoint: {detail}"


def test_a_checkpoint_without_solver_suggests_the_model_it_records(inputs, tmp_path, capsys):
    """calibrate.py --ckpt X without --solver said only "--ckpt is only used with a network solver, not heldout": a
    train.py .ckpt (or a release folder) records its model, so the error suggests --solver with it; a toolbox .pth
    does not say, and the error stays as it was."""
    folder, _, _ = inputs
    state = torch.load(folder / "mst_s.pth")
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()},
                "hyper_parameters": {"model_name": "mst_s", "model_kwargs": {}}}, tmp_path / "last.ckpt")
    files = ["--meas", str(folder / "y.npz"), "--mask", str(folder / "mask.mat"), "--no-progress"]
    for solver in ([], ["--solver", "gap_tv"]):
        user_error(capsys, lambda: calibrate.main([*files, *solver, "--ckpt", str(tmp_path / "last.ckpt"),
                                                    "--out", str(tmp_path / "out")]),
                   r"only used with a network solver, not (heldout|gap_tv); .*last.ckpt records the model mst_s: pass "
                   r"--solver mst_s to calibrate with it")
    user_error(capsys, lambda: calibrate.main([*files, "--ckpt", str(folder / "mst_s.pth"), "--out",
                                                str(tmp_path / "out")]),
               r"only used with a network solver, not heldout$")


def test_the_solver_check_reads_the_size_rule_and_runs_no_forward_pass(inputs, monkeypatch):
    """A network is checked by its ``size_rule`` and ``prepare_inputs`` alone, not by a trial reconstruction (which
    costs seconds to minutes at a real capture's size on a CPU); GAP-TV takes sizes the networks refuse."""
    import calib.solver_score as solver_score

    folder, y, mask = inputs
    forwards = []

    def load(name, checkpoint, device):
        network = load_network(name, checkpoint, device)
        network.register_forward_pre_hook(lambda module, args: forwards.append(name))
        return network

    monkeypatch.setattr(solver_score, "load_network", load)
    assert solver_score.inner_solver("mst_s", folder / "mst_s.pth", y, mask, 28, 2).network is not None
    y30, mask30 = measure(30, Mismatch())
    with pytest.raises(UserError, match=r"solver mst_s cannot reconstruct a 30x30 scene .*: its input is 30x30; "
                                        r"it must have H and W each a multiple of 4"):
        solver_score.inner_solver("mst_s", folder / "mst_s.pth", y30, mask30, 28, 2)
    assert forwards == []
    assert solver_score.inner_solver("gap_tv", None, y30, mask30, 28, 2).network is None


@pytest.mark.parametrize("solver", ["gap_tv", "bisrnet"])
def test_gradients_reach_all_five_parameters_through_the_solver(inputs, solver):
    folder, y, mask = inputs
    network = load_network("bisrnet", folder / "bisrnet.pth") if solver == "bisrnet" else None
    score = SolverScore(y, mask) if network is None else NetworkHeldOutScore(y, mask, network)
    params = params_tensor(Mismatch(dx=0.3, dy=-0.2, theta=0.2, a1=2.01, alpha=0.3)).requires_grad_(True)
    loss = score.loss(params)
    loss.backward()
    assert torch.isfinite(params.grad).all() and (params.grad != 0).all(), params.grad
    assert float(loss) == pytest.approx(float(score(params.detach())[0]), rel=1e-4)
    if network is not None:                           # frozen: no parameter receives a gradient
        assert all(p.grad is None and not p.requires_grad for p in network.parameters())
        assert not network.training


SLICES = {"dx": (-0.5, -0.25, 0.25, 0.5), "dy": (-0.5, -0.25, 0.25, 0.5), "a1": (-0.02, -0.01, 0.01, 0.02),
          "alpha": (-0.6, -0.3, 0.3, 0.6)}


def test_the_network_criterion_is_lowest_at_the_truth_where_the_network_residual_is_not():
    """Official BiSRNet on a 64 x 64 crop of pseudo-KAIST scene04 with the KAIST mask, native grid, no noise,
    drift (0.5, 0.3, 0.1, 2.01, 0.2): on slices through the truth along dx, dy, a1 and alpha the held-out
    criterion with the network's cube as prior mean is lowest at the truth; the measurement residual of that
    cube, ||y - A_xi G(y; xi)|| (which the network solver's criterion was built on), is lower off the truth."""
    from data.io import load_cube, load_mask
    from cassi.simulator import simulate_measurement

    network = load_network("bisrnet", shared_path("weights", "bisrnet_simulation.pth"))
    cube = torch.from_numpy(load_cube(shared_path("data", "pseudo_kaist", "scene04.npz")))[:, 100:164, 100:164]
    mask = torch.from_numpy(load_mask(shared_path("data", "kaist", "mask.mat")))[100:164, 100:164]
    truth = params_tensor(Mismatch(dx=0.5, dy=0.3, theta=0.1, a1=2.01, alpha=0.2))
    y = simulate_measurement(cube[None], mask, Mismatch(**dict(zip(PARAMETER_NAMES, truth[0].tolist()))), 2, 1, 1)[0]
    score = NetworkHeldOutScore(y, mask, network, settings=ScoreSettings(stripes=2, rows=24, iterations=12,
                                                                         spatial=1, spectral=1), reference=truth)
    residual_off_truth = []
    for name, offsets in SLICES.items():
        points = truth.repeat(len(offsets) + 1, 1)
        points[1:, PARAMETER_NAMES.index(name)] += torch.tensor(offsets, dtype=torch.float64)
        values = score(points)
        assert int(values.argmin()) == 0, (name, values)
        with torch.no_grad():                       # the network cube's own residual, on the same stripes
            miss = score.y_folds.repeat(len(points), 1, 1) - score.known(points, score.operator(points))
        miss = miss.view(len(points), len(score.windows), len(score.folds), *miss.shape[1:])[:, :, 0]
        residual = (miss ** 2 * score.interior).flatten(1).sum(1)
        residual_off_truth.append(bool((residual[1:] < residual[0]).any()))
    assert any(residual_off_truth), residual_off_truth


def test_the_official_networks_spectral_directions_are_used_and_a_random_networks_are_refused():
    """calib.network_score: the held-out solves of a network solver keep spectra in the span of the first 6
    directions of the network's cube at the nominal instrument (blind: y and the handed mask), unless those predict
    the held-out pixels far worse than the DCT cosines. Official BiSRNet on a 64 x 64 crop of pseudo-real scene3
    (a cube BiSRNet did not make: the real-data model's output), KAIST mask, N=4 K=2 instrument with drift and
    noise: kept; a randomly initialised BiSRNet on the same measurement: refused."""
    from data.io import load_cube, load_mask
    from cassi.noise import add_noise
    from cassi.simulator import simulate_measurement

    cube = torch.from_numpy(load_cube(shared_path("data", "pseudo_real", "scene3.npz")))[:, 100:164, 128:192]
    mask = torch.from_numpy(load_mask(shared_path("data", "kaist", "mask.mat")))[100:164, 100:164]
    drift = Mismatch(dx=0.5, dy=0.3, theta=0.1, a1=2.01, alpha=0.2)
    y = add_noise(simulate_measurement((cube / cube.max())[None], mask, drift, 2, 4, 2), 1e4, 0.005, 0)[0]
    settings = ScoreSettings(stripes=2, rows=24, iterations=12)
    official = load_network("bisrnet", shared_path("weights", "bisrnet_simulation.pth"))
    torch.manual_seed(0)
    for network, expected in ((official, True), (create_model("bisrnet").eval(), False)):
        learned = network_spectral_basis(network, "bisrnet", y, mask, 28, 2)
        kept, record = choose_spectral_basis(learned, y, mask, 28, 2, settings, 2.0, 16)
        assert kept is expected and record["used"] == ("learned" if expected else "DCT-II cosines"), record
    assert record["relative_margin"] < -0.5           # the random directions: far worse (98 % here)


def test_filled_network_inputs_do_not_see_the_pixels_they_are_scored_on(inputs):
    """``fill=True``: each fold's network cube is the same whatever that fold's held-out pixels hold (they
    are replaced by the plain criterion's prediction from the fitted pixels); without ``fill`` it changes."""
    folder, y, mask = inputs
    network = load_network("bisrnet", folder / "bisrnet.pth")
    point = params_tensor(Mismatch(dx=0.4, dy=-0.3, a1=2.01))
    probe = NetworkHeldOutScore(y, mask, network, fill=True)
    (a, b), = probe.windows
    changed = y.clone()
    changed[a:b] += 0.5 * (1 - probe.fits[0]) * y.max()            # fold 0's held-out pixels only
    for fill, same in ((True, True), (False, False)):
        cubes = [NetworkHeldOutScore(m, mask, network, fill=fill).network_cubes(point)[0] for m in (y, changed)]
        assert torch.equal(*cubes) == same, fill


def test_a_network_solver_decides_through_the_held_out_stages_unless_its_own_stage_is_asked_for(inputs):
    """By default a network solver's cube gives the held-out solves their spectral directions and no stage of its
    own follows (its prior-mean stage measured less accurate: README "Inner solver"); random weights' directions are
    refused, so here the held-out criterion with the DCT cosines decides, and calibration.json says so."""
    folder, y, mask = inputs
    result = run_calibration(y, mask, solver="bisrnet", ckpt=str(folder / "bisrnet.pth"), progress=False, **QUICK)
    assert result.settings["network_stage"] is False and result.settings["criterion"] == "held-out CG"
    assert not [r.name for r in result.history if r.name.endswith(" (solver)")]
    assert "heldout_optimum" not in result.tests and result.checks["solver"] == "bisrnet"
    assert not result.settings["spectral_basis"]["kept"]


def test_kept_network_directions_are_what_every_held_out_solve_uses(inputs, monkeypatch):
    """When the guard keeps the network's directions, the search's and the refinement's held-out solves both use
    them (not the DCT cosines) and calibration.json names their source as the criterion."""
    import calib.pipeline

    folder, y, mask = inputs
    guard = calib.pipeline.choose_spectral_basis
    monkeypatch.setattr(calib.pipeline, "choose_spectral_basis",
                        lambda *args: (True, {**guard(*args)[1], "kept": True, "used": "learned"}))
    result = run_calibration(y, mask, solver="bisrnet", ckpt=str(folder / "bisrnet.pth"), progress=False, **QUICK)
    source = "bisrnet's cube of the measurement at the nominal instrument"
    assert result.settings["search_score"]["learned_basis"] == source
    assert result.settings["refine_score"]["learned_basis"] == source
    assert result.settings["criterion"] == f"held-out CG with the spectral directions of {source}"
    # the uncertainty holds how far the DCT cosines move the criterion's minimum
    moved = result.tests["uncertainty"]["basis_sensitivity"]
    assert set(moved) == set(PARAMETER_NAMES) and all(math.isfinite(v) and v >= 0 for v in moved.values())


def test_the_solver_decides_and_calibration_json_records_it(inputs):
    """``network_stage=True`` (``--network-stage``): the network's cube as prior mean decides a last polish and
    refinement, which calibration.json records."""
    folder, y, mask = inputs
    result = run_calibration(y, mask, solver="bisrnet", ckpt=str(folder / "bisrnet.pth"), progress=False,
                             network_stage=True, **QUICK)
    assert result.settings["network_stage"] is True
    criterion = result.settings["criterion"]
    assert result.settings["solver"] == "bisrnet" and criterion["solver"] == "BiSRNet"
    assert criterion["criterion"] == "held-out CG with the network's cube as prior mean"
    assert result.checks["solver"] == "bisrnet" and math.isfinite(result.checks["residual_calibrated"])
    content = json.loads(result.to_json())
    assert content["settings"]["solver"] == "bisrnet"
    # the estimate's recorded score is the network criterion's (which ranked the polish and the refinement),
    # up to the warm starts (the pipeline's came from its last re-centring, these from the estimate)
    # random weights: the network cube's spectral directions predict the held-out pixels far worse than the DCT
    # cosines, so the held-out solves keep the cosines (the record says so)
    network = load_network("bisrnet", folder / "bisrnet.pth")
    basis = content["settings"]["spectral_basis"]
    assert not basis["kept"] and basis["used"] == "DCT-II cosines" and basis["relative_margin"] < -0.1
    assert criterion["learned_basis"] is None and "0 spectral basis_s" in result.timings
    assert "basis_sensitivity" not in result.tests["uncertainty"]      # no learned directions to weigh
    settings = ScoreSettings(**{k: v for k, v in criterion.items()
                                if k not in ("criterion", "solver", "fill_held_out")})
    estimate = params_tensor(result.estimate)
    assert result.score == pytest.approx(float(NetworkHeldOutScore(y, mask, network, settings=settings,
                                                                   reference=estimate)(estimate)[0]), rel=1e-2)
    assert all(math.isfinite(v) for v in result.estimate.to_dict().values())
    assert set(result.landscape) == set(PARAMETER_NAMES)
    assert "heldout_optimum" in result.tests                  # the held-out criterion checked the solver's point


def test_eval_scenario_iii_reads_the_calibration_of_each_scene(tmp_path, capsys):
    """``eval.py --calibration DIR``: DIR/<scene>/calibration.json per scene; a scene without one is refused
    before any reconstruction; a file with a ``scenes`` object works the same way."""
    write_mst_layout(tmp_path / "data", size=32, scenes=2)
    estimates = {"scene01": {"dx": 0.9, "dy": 0.4, "theta": 0.2, "a1": 2.01, "alpha": 0.1},
                 "scene02": {"dx": 1.1, "dy": 0.6, "theta": 0.3, "a1": 2.03, "alpha": 0.3}}
    for name, estimate in estimates.items():
        (tmp_path / "cal" / name).mkdir(parents=True)
        (tmp_path / "cal" / name / "calibration.json").write_text(json.dumps({"estimate": estimate}))
    (tmp_path / "all.json").write_text(json.dumps({"scenes": estimates}))
    common = ["kaist", "--data.root", tmp_path / "data", *FAST_GAP, "--scenarios", "II,III", "--oversample", 1, 1,
              "--mismatch", "dx=1,dy=0.5,theta=0.3,a1=2.02,alpha=0.2", "--previews", 0]
    for source in (tmp_path / "cal", tmp_path / "all.json"):
        out = tmp_path / f"run_{source.stem}"
        assert run_cli(*common, "--calibration", source, "--out", out) == 0
        rows = read_results(out)["calibration"]["scenes"]
        assert {r["name"]: r["estimate"] for r in rows} == estimates
    (tmp_path / "cal" / "scene02" / "calibration.json").unlink()
    capsys.readouterr()
    assert run_cli(*common, "--calibration", tmp_path / "cal", "--out", tmp_path / "refused") == 2
    assert "no calibration for scene(s) scene02" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    # calibrate.py --separately's summary names its folder; a binary operator file names --operator
    (tmp_path / "cal" / "calibrations.json").write_text(json.dumps({"calibrations": [{"capture": "scene01"}]}))
    np.savez(tmp_path / "operator.npz", mask=np.ones((2, 2)))
    for source, message in ((tmp_path / "cal" / "calibrations.json", "summary of calibrate.py --separately; pass "
                             f"its folder {tmp_path / 'cal'}"), (tmp_path / "operator.npz", "passed with --operator")):
        assert run_cli(*common, "--calibration", source, "--out", tmp_path / "refused") == 2
        assert message in capsys.readouterr().err


def test_bisrnet_calibration_then_bisrnet_reconstruction_end_to_end(inputs, tmp_path):
    """Issue 11 section 4 at 32 px, through the command lines a user runs: ``calibrate.py simulate`` (the
    drifted instrument), ``calibrate.py --solver bisrnet`` (one folder per scene), then ``eval.py kaist
    --model bisrnet --scenarios I,II,III,IV --calibration DIR``: scenario III uses that scene's estimate."""
    folder = inputs[0]
    weights = folder / "bisrnet.pth"
    write_mst_layout(tmp_path / "data", size=32, scenes=1)
    mask, truth = tmp_path / "data" / "mask.mat", tmp_path / "data" / "Truth" / "scene01.mat"
    drift = {"dx": "0.5", "dy": "0.3", "theta": "0.1"}
    y = tmp_path / "y.npz"
    calibrate.main(["simulate", "--cube", str(truth), "--mask", str(mask), *[a for k, v in drift.items()
                    for a in (f"--{k}", v)], "--oversample", "4", "2", "--out", str(y)])
    files = calibrate.main(["--meas", str(y), "--mask", str(mask), "--solver", "bisrnet", "--ckpt", str(weights),
                            "--out", str(tmp_path / "cal" / "scene01"), "--no-progress"])
    saved = json.loads(files["json"].read_text())
    assert saved["settings"]["solver"] == "bisrnet" and saved["settings"]["ckpt"] == str(weights)
    out = tmp_path / "eval"
    assert run_cli("kaist", "--model", "bisrnet", "--ckpt", weights, "--data.root", tmp_path / "data",
                   "--scenarios", "I,II,III,IV", "--mismatch", ",".join(f"{k}={v}" for k, v in drift.items()),
                   "--calibration", tmp_path / "cal", "--previews", 0, "--out", out) == 0
    results = read_results(out)
    row = results["calibration"]["scenes"][0]
    assert row["name"] == "scene01"
    assert row["estimate"] == pytest.approx(saved["estimate"])
    assert set(results["scenarios"]) >= {"I", "II", "III", "IV"}
    assert all(math.isfinite(results["scenarios"][s]["mean"]["psnr"]) for s in ("I", "II", "III", "IV"))


def test_status_is_ambiguous_when_the_held_out_criterion_prefers_another_point():
    """A solver's estimate 1 px off in dx, where the held-out criterion's own point is the truth: "ok"
    becomes "ambiguous" with a reason; the same point twice, or a held-out point closer than 0.1 pixel
    units, changes nothing."""
    from calib.pipeline import REFINE_SCORE
    from calib.ranges import pixel_scales
    from calib.score import HeldOutScore
    from calib.status import Assessment, solver_agreement

    truth = Mismatch(dx=0.4, dy=-0.3, a1=2.01)
    y, mask = measure(48, truth)
    score = HeldOutScore(y, mask, settings=REFINE_SCORE)
    right = params_tensor(truth).reshape(5)
    wrong = right.clone()
    wrong[0] += 1.0
    scales = pixel_scales(48, 48, 28, 2)
    off = Assessment("ok", [])
    solver_agreement(score, wrong, right, scales, off)
    assert off.status == "ambiguous" and "held-out criterion prefers another point (dx -1 px" in off.reasons[0]
    assert off.tests["heldout_optimum"]["relative_change"] < 0
    same = Assessment("ok", [])
    solver_agreement(score, right, right.clone(), scales, same)
    assert same.status == "ok" and same.reasons == [] and same.tests["heldout_optimum"]["relative_change"] == 0
    near = wrong.clone()
    near[0] = right[0] + 0.05
    close = Assessment("ok", [])
    solver_agreement(score, near, right, scales, close)
    assert close.status == "ok" and close.tests["heldout_optimum"]["distance_pixel_units"] == pytest.approx(0.05)


@pytest.fixture
def measurement_only_networks(monkeypatch):
    """Two measurement-only networks of one's own (MST-S-Real inside): 'blindnet', and 'mine_real', whose name
    without _real is registered by no one."""
    from models import register_model, registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._registered()))
    for name in ("blindnet", "mine_real"):
        register_model(name)(lambda **kwargs: create_model("mst_s_real", **kwargs))


@pytest.mark.parametrize("name,suggested", [("blindnet", None), ("mine_real", None), ("mst_s_real", "mst_s")])
def test_a_measurement_only_network_is_refused_suggesting_a_registered_mask_aware_one(measurement_only_networks,
                                                                                       name, suggested):
    """calibrate.py --solver and eval.py --operator / --scenarios refused a measurement-only network of one's own
    (mask_aware = False) suggesting that same network: "use a mask-aware network (e.g. blindnet)"; the stripped name
    is suggested only when it is a registered mask-aware network."""
    from evaluation.reconstructors import check_uses_mask

    hint = f"a mask-aware network (e.g. {suggested})" if suggested else "a mask-aware network (one that takes the coded"
    with pytest.raises(UserError, match=rf"solver {name} does not take the coded mask.*; use {re.escape(hint)}"):
        load_solver(name, None)
    method = type("Blind", (), {"name": name, "uses_mask": False})()
    with pytest.raises(UserError, match=rf"--operator: {name} does not take.*use gap_tv or {re.escape(hint)}"):
        check_uses_mask(method, "--operator")
