"""Training: objectives, instrument, modules, configs, smoke fits of every model family, exact resume."""
from __future__ import annotations

import hashlib
import importlib
import math
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

from cassi import CassiOperator, Mismatch
from cli_checks import user_error
from models.checkpoints import training_progress
from models import list_models
from models.joint_loss import CRSDUNLoss
from models.losses import CharbonnierLoss, MaskAwareLoss, MaskEncodingLoss, RMSELoss
from test_custom_model import TINY, user_module  # noqa: F401  (a fixture)
from training import JointModule, ReconstructionModule
from training.cli import main
from training.objectives import build_objective
from training.simulation import Instrument

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def cli(args: list[str]):
    """``train.py <args>`` in this process (pytest's own command line hidden from LightningCLI)."""
    with mock.patch.object(sys, "argv", ["train.py"]):
        return main(args)


def fit(config: Path | str, root: Path, *overrides: str, logger: bool = False):
    """``train.py fit`` in this process; returns the CLI (trainer, model, datamodule).
    ``logger=False`` adds ``--trainer.logger false``; otherwise the config's (default: offline W&B)."""
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *QUIET, *overrides]
    if not logger:
        args += ["--trainer.logger", "false"]
    return cli(args)


def one_step(config: Path, root: Path, *overrides: str):
    # one batch of the smoke configs' 2 (the CLI reads "--trainer.limit_train_batches 1" as the fraction 1.0)
    return fit(config, root, "--trainer.max_epochs", "1", "--data.samples_per_epoch", "2", "--data.batch_size", "2",
               "--previews.every_n_epochs", "0", *overrides)


def _batch(size: int = 16, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"cube": torch.rand(batch, 28, size, size, generator=gen),
            "mask": (torch.rand(size, size, generator=gen) > 0.5).float(),
            "labels": torch.randint(0, 5, (batch, size, size), generator=gen)}


# ------------------------------------------------------------------------------------ objectives
def test_pixel_objectives_are_the_model_losses_on_the_final_cube():
    cube, pred = torch.rand(2, 28, 8, 8), torch.rand(2, 28, 8, 8)
    op = CassiOperator(torch.ones(8, 8))
    last = lambda output: output[-1]  # noqa: E731  (a multi-stage output whose final cube is the last entry)
    output = [torch.zeros_like(pred), pred]
    expected = {"rmse": RMSELoss()(pred, cube), "l1": (pred - cube).abs().mean(),
                "charbonnier": CharbonnierLoss(eps=1e-2)(pred, cube)}
    for name, value in expected.items():
        kwargs = {"eps": 1e-2} if name == "charbonnier" else {}
        got = build_objective(name, last, **kwargs)(output, cube, op, 0)
        torch.testing.assert_close(got["loss"], value)
    with pytest.raises(ValueError, match="unknown loss 'mse'"):
        build_objective("mse", last)


def test_s2_mask_aware_schedule_switches_from_me_to_ma():
    torch.manual_seed(0)
    cube = torch.rand(1, 28, 8, 8)
    op = CassiOperator((torch.rand(8, 8) > 0.5).float())
    output = (torch.rand(1, 28, 8, 8), [torch.rand(1, 28, 8, 8) for _ in range(4)])
    objective = build_objective("s2_mask_aware", lambda out: out[0], switch_epoch=3)
    early, late = objective(output, cube, op, 2), objective(output, cube, op, 3)
    torch.testing.assert_close(early["loss"], MaskEncodingLoss(alpha=1.5, k_me=2)(output, cube, op.mask3d))
    torch.testing.assert_close(late["loss"], MaskAwareLoss(alpha=1.0, beta=10.0, k_me=2)(output, cube, op.mask3d))
    assert "ma" not in early and "ma" in late and late["loss"] > early["loss"]


# ------------------------------------------------------------------------------------ instrument
def test_instrument_noise_is_seeded_and_mismatch_reaches_the_operator():
    batch = _batch()
    clean, _ = Instrument().measure(batch, seed=0)
    torch.testing.assert_close(clean, CassiOperator(batch["mask"])(batch["cube"]))
    noisy = Instrument(noise={"peak": 100.0}, gain=1.2)
    a, b, c = (noisy.measure(batch, seed=s)[0] for s in (5, 5, 6))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert abs(float(a.mean() / clean.mean()) - 1.2) < 0.02
    shifted, op = Instrument(mismatch={"dx": 1.0}).measure(batch, seed=0)
    assert op.mismatch.dx == 1.0 and not torch.allclose(shifted, clean)
    with pytest.raises(ValueError, match="unknown noise setting.*'sigma'"):
        Instrument(noise={"sigma": 0.1})
    with pytest.raises(ValueError, match="no 'mask'"):
        Instrument().measure({"cube": batch["cube"]}, seed=0)


def test_instrument_from_a_calibrated_operator_file(tmp_path):
    from cassi.operator_file import save_operator

    batch = _batch()
    xi = Mismatch(dx=0.4, dy=-0.2, theta=0.1, a1=2.01, alpha=0.3)
    save_operator(tmp_path / "operator.npz", CassiOperator(batch["mask"], mismatch=xi))
    y, op = Instrument(operator=str(tmp_path / "operator.npz")).measure(batch, seed=0)
    assert op.mismatch == xi
    torch.testing.assert_close(y, CassiOperator(batch["mask"], mismatch=xi)(batch["cube"]))
    with pytest.raises(ValueError, match="not both"):
        Instrument(mismatch={"dx": 1.0}, operator=str(tmp_path / "operator.npz"))
    with pytest.raises(ValueError, match="operator.npz has 28 bands"):
        Instrument(bands=31, operator=str(tmp_path / "operator.npz"))
    # a file of the enlarged-grid calibration model: measurements and network inputs go through that model
    from calib.instrument import InstrumentOperator

    model = InstrumentOperator(batch["mask"], mismatch=xi, spatial=2, spectral=1)
    save_operator(tmp_path / "model.npz", model)
    y, op = Instrument(operator=str(tmp_path / "model.npz")).measure(batch, seed=0)
    assert isinstance(op, InstrumentOperator) and op.oversample == (2, 1)
    torch.testing.assert_close(y, model(batch["cube"]))
    cubic = InstrumentOperator(batch["mask"], mismatch=xi, spatial=1, spectral=1, interpolation="cubic")
    save_operator(tmp_path / "cubic.npz", cubic)               # the native grid with the cubic mask reading
    y, op = Instrument(operator=str(tmp_path / "cubic.npz")).measure(batch, seed=0)
    assert op.mask_interpolation == "cubic"
    torch.testing.assert_close(y, cubic(batch["cube"]))


def test_training_through_an_ambiguous_calibration_says_so_once_and_the_model_card_records_it(tmp_path, capsys):
    """Was: train.py --model.operator read the operator file and said nothing of its calibration's status."""
    from cassi.operator_file import save_operator

    operator, reasons = tmp_path / "operator.npz", ["theta not pinned; its interval is 0.1..0.9 deg", "dx noisy"]
    save_operator(operator, CassiOperator(torch.ones(32, 32), mismatch=Mismatch(dx=0.5)), "ambiguous", reasons)
    one_step(CONFIGS / "smoke" / "mst_s.yaml", tmp_path / "run", "--data.crop", "32", "--model.operator", str(operator),
             "--data.mask", str(operator))
    status = "ambiguous\n  - theta not pinned; its interval is 0.1..0.9 deg\n  - dx noisy\n"
    printed = capsys.readouterr().out
    assert printed.count("calibration status") == 1 and f"calibration status of {operator}: {status}" in printed
    release = tmp_path / "release"
    eval_cli = importlib.import_module("eval")
    assert eval_cli.main(["export", "--ckpt", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--out",
                          str(release)]) == 0
    assert f"- calibration status of the operator: {status}" in (release / "README.md").read_text()


def test_training_through_an_operator_file_refuses_data_with_another_mask(tmp_path, capsys):
    """Was: train.py fit --model.operator FILE without --data.mask trained on the default random mask, although the
    operator file's calibration describes another one; --data.mask FILE (the operator file itself) trains."""
    from cassi.operator_file import save_operator
    from data.synthetic import random_mask

    operator = tmp_path / "operator.npz"
    save_operator(operator, CassiOperator(torch.from_numpy(random_mask(32, 32, seed=5)), mismatch=Mismatch(dx=0.5)))
    smoke = CONFIGS / "smoke" / "mst_s.yaml"
    line = user_error(capsys, lambda: one_step(smoke, tmp_path / "run", "--data.crop", "32", "--model.operator",
                                               str(operator)),
                      r"--model\.operator .*operator\.npz records the instrument's mask \(shape \(32, 32\), sha256 "
                      r"\w{12}\.\.\.\), but the data's mask is the random one of --data\.seed 0 \(no --data\.mask\) "
                      r"\(shape \(32, 32\), sha256 \w{12}\.\.\.\).*pass --data\.mask .*operator\.npz")
    assert not (tmp_path / "run" / "checkpoints").exists(), line
    other = tmp_path / "other.npy"
    np.save(other, random_mask(32, 32, seed=6))
    user_error(capsys, lambda: one_step(smoke, tmp_path / "run", "--data.crop", "32", "--model.operator",
                                        str(operator), "--data.mask", str(other)),
               r"the data's mask is the file .*other")
    one_step(smoke, tmp_path / "run", "--data.crop", "32", "--model.operator", str(operator), "--data.mask",
             str(operator))
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_a_checkpoint_trained_through_an_operator_file_records_the_instrument(tmp_path):
    """Was: the checkpoint recorded only the operator file's path as typed and its calibration status, not the
    estimate, its units, the forward model (N, K) nor the file's sha256."""
    from calib.instrument import InstrumentOperator
    from cassi.operator_file import save_operator
    from data.synthetic import random_mask
    from models.checkpoints import load_lightning_checkpoint
    from models.loading import file_sha256
    from models.release import mask_sha256

    mask = torch.from_numpy(random_mask(32, 32, seed=5))
    xi = Mismatch(dx=0.4, dy=-0.2, theta=0.1, a1=2.01, alpha=0.3)
    operator = tmp_path / "operator.npz"
    save_operator(operator, InstrumentOperator(mask, mismatch=xi, spatial=2, spectral=1), "ok", [],
                  code_phase=(0.25, -0.5))
    one_step(CONFIGS / "smoke" / "mst_s.yaml", tmp_path / "run", "--data.crop", "32", "--model.operator", str(operator),
             "--data.mask", str(operator))
    training = load_lightning_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").training
    assert training["operator_file"] == {
        "path": str(operator), "sha256": file_sha256(operator), "estimate": xi.to_dict(),
        "units": {"dx": "px", "dy": "px", "theta": "deg", "a1": "px/band", "alpha": "deg"},
        "forward_model": {"spatial": 2, "spectral": 1, "mask_interpolation": "linear", "dispersion": "linear",
                          "bands": 28, "step": 2},
        "mask": {"shape": [32, 32], "sha256": mask_sha256(mask)}, "code_phase": {"fy": 0.25, "fx": -0.5},
        "calibration": {"status": "ok", "reasons": []}}


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_a_network_whose_inputs_do_not_fit_its_forward_is_refused_before_any_work(subcommand, user_module,
                                                                                   monkeypatch, tmp_path, capsys):
    """Was: a TypeError traceback at the first step ('MyNet.forward() got an unexpected keyword argument 'x''),
    once the data were loaded."""
    renamed = TINY.replace("def forward(self, x, mask):", "def forward(self, inp, m):").replace(
        "return x + self.body(torch.cat([x, mask], 1))", "return inp + self.body(torch.cat([inp, m], 1))")
    user_module("tiny_cassi_train_renamed", "tiny_train_renamed", renamed)
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_train_renamed")
    args = [subcommand, "--config", str(CONFIGS / "smoke" / "mst_s.yaml"), "--trainer.default_root_dir",
            str(tmp_path / "run"), "--trainer.logger", "false", "--model.init_args.model_name", "tiny_train_renamed",
            "--data.crop", "32", *QUIET]
    said = ("--model.init_args.model_name tiny_train_renamed: TinyNet.prepare_inputs(y, op) returns the keyword "
            "arguments x, mask, which do not fit TinyNet.forward(inp, m): it takes no x, mask; it needs inp, m")
    user_error(capsys, lambda: cli(args), re.escape(said))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("method", ["prepare_inputs", "reconstruction"])
def test_a_network_outside_the_model_protocol_is_one_line_naming_what_it_lacks(method, user_module, monkeypatch,
                                                                               tmp_path, capsys):
    """CassiModule leaves the protocol to models.create_model (models.registry.check_protocol), which train.py says
    in one line: the module's own TypeError ('... it does not follow the registry protocol') duplicated it."""
    user_module("tiny_cassi_train_partial", "tiny_train_partial", TINY.replace(f"    def {method}(", "    def other("))
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_train_partial")
    with pytest.raises(ValueError, match=rf"model 'tiny_train_partial' .*it has no {method}\(\) method"):
        ReconstructionModule(model_name="tiny_train_partial")
    args = ["fit", "--config", str(CONFIGS / "smoke" / "mst_s.yaml"), "--trainer.default_root_dir",
            str(tmp_path / "run"), "--trainer.logger", "false", "--model.init_args.model_name", "tiny_train_partial"]
    user_error(capsys, lambda: cli(args), rf"train.py: error: model 'tiny_train_partial' \(tiny_cassi_train_partial"
                                          rf"\.TinyNet\) does not follow the model protocol: it has no {method}\(\)")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------- modules
def test_modules_store_plain_hyperparameters_and_the_network_under_model():
    module = ReconstructionModule(model_name="mst_s", loss="charbonnier", loss_kwargs={"eps": 1e-3})
    assert module.hparams.model_name == "mst_s" and module.hparams.loss == "charbonnier"
    assert all(key.startswith(("model.",)) for key in module.state_dict())
    with pytest.raises(ValueError, match="unknown loss"):
        ReconstructionModule(loss="mse")
    with pytest.raises(TypeError, match="no segmentation"):
        JointModule(model_name="mst_s")


def test_joint_objective_is_crsdun_loss_and_labels_are_required():
    module = JointModule(model_name="crsdun_3stg", model_kwargs={"n_class": 5})
    batch = _batch(size=32, batch=1)
    y, op = module.instrument.measure(batch, seed=0)
    output = module(y, op)
    terms = module.objective(output, batch, op)
    torch.testing.assert_close(terms["loss"], CRSDUNLoss()(output, batch["cube"], batch["labels"]))
    assert set(terms) == {"loss", "rec", "seg"}
    with pytest.raises(ValueError, match="needs per-pixel 'labels'"):
        module.objective(output, {k: v for k, v in batch.items() if k != "labels"}, op)
    with pytest.raises(ValueError, match="n_class=5"):
        module.objective(output, {**batch, "labels": batch["labels"] + 5}, op)


@pytest.mark.parametrize("name, kwargs, expected", [
    ("cosine", {}, ("CosineAnnealingLR", {"T_max": 300, "eta_min": 1e-6})),
    ("step", {"step_size": 50, "gamma": 0.5}, ("StepLR", {"step_size": 50, "gamma": 0.5})),
    ("multistep", {"milestones": [50, 100], "gamma": 0.5}, ("MultiStepLR", {"gamma": 0.5})),
])
def test_schedules(name, kwargs, expected):
    module = ReconstructionModule(model_name="mst_s", scheduler=name, scheduler_kwargs=kwargs)
    module.trainer = pl.Trainer(max_epochs=300, logger=False)
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert optimizer.defaults["lr"] == 4e-4 and optimizer.defaults["betas"] == (0.9, 0.999)
    assert type(schedule).__name__ == expected[0] and config["lr_scheduler"]["interval"] == "epoch"
    assert all(getattr(schedule, k) == v for k, v in expected[1].items())


def test_a_cosine_schedule_without_an_epoch_count_stops_before_any_work(tmp_path, capsys):
    """Was: a traceback ("scheduler 'cosine' anneals over trainer.max_epochs, which is not set") once the data were
    loaded; the option it names, T_max, then trains."""
    smoke = CONFIGS / "smoke" / "mst_s.yaml"
    steps = ("--trainer.max_epochs", "null", "--trainer.max_steps", "2", "--data.crop", "32")
    user_error(capsys, lambda: fit(smoke, tmp_path / "run", *steps),
               re.escape("--model.init_args.scheduler cosine anneals the learning rate over --trainer.max_epochs, "
                         "which is not set (null); set --trainer.max_epochs N, or the schedule's length in epochs with "
                         "--model.init_args.scheduler_kwargs '{T_max: N}'"))
    assert not (tmp_path / "run").exists()
    trained = fit(smoke, tmp_path / "run", *steps, "--model.init_args.scheduler_kwargs", "{T_max: 3}",
                  "--previews.every_n_epochs", "0")
    assert trained.trainer.global_step == 2
    assert trained.trainer.lr_scheduler_configs[0].scheduler.T_max == 3


# ---------------------------------------------------------------------------------------- configs
def _printed_config(path: Path, capsys) -> dict:
    with pytest.raises(SystemExit) as stop:
        cli(["fit", "--config", str(path), "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_registry_model_has_a_config_and_a_smoke_config(capsys):
    for folder in (CONFIGS, CONFIGS / "smoke"):
        assert sorted(p.stem for p in folder.glob("*.yaml")) == list_models()
        for path in sorted(folder.glob("*.yaml")):
            config = _printed_config(path, capsys)
            init = config["model"]["init_args"]
            assert init["model_name"] == path.stem, path
            assert init["lr"] == (1e-4 if path.stem == "bisrnet_real" else 4e-4), path   # BiSCI real: 1e-4
            assert config["data"]["root"] is None, path  # the recipe's data come from --data.root
            if folder == CONFIGS:
                assert config["data"]["crop"] in (96, 256, 384), path
                # the toolbox's data layout; CRSDUN: FVgNET in its layout, one pass over the images per epoch
                if path.stem.startswith("crsdun"):
                    assert config["data"]["source"] == "fvgnet" and config["data"]["samples_per_epoch"] is None, path
                    continue
                assert config["data"]["samples_per_epoch"] in (5000, 1250, 20000), path
                expected = "mst_real" if path.stem.endswith("_real") else "mst_simulation"
                assert config["data"]["source"] == expected, path
            else:
                assert config["data"]["source"] == "auto", path  # synthetic scenes: runs anywhere


def test_recipes_on_cave_1024_28_do_not_count_its_scenes_as_cave_512_28s():
    """Was: 'here 4 of the 30 CAVE scenes are held out' in every recipe that reads cave_1024_28 (scene1 ...
    scene205 in the MST README); the 30 are CAVE_512_28's (the real recipes)."""
    read = {path.name: path.read_text() for path in sorted(CONFIGS.glob("*.yaml"))}
    simulation = [name for name, text in read.items() if "source: mst_simulation" in text]
    assert "mst_s.yaml" in simulation and [name for name in simulation if "30 CAVE" in read[name]] == []


def test_the_training_files_keep_lines_within_120_characters():
    """Was: training/cli.py (unused_operator_note), training/callbacks.py, tests/test_train_recipes.py and the
    S2-Transformer configs held lines of up to 138 characters."""
    files = [REPO / "train.py", *sorted((REPO / "training").glob("*.py")),
             *sorted((REPO / "tests").glob("test_train*.py")), *sorted(CONFIGS.rglob("*.yaml"))]
    long = [f"{path.relative_to(REPO)}:{number}" for path in files
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if len(line) > 120]
    assert long == []


def test_print_config_from_the_command_line():
    done = subprocess.run([sys.executable, "train.py", "fit", "--config", "configs/mst_s.yaml", "--print_config"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    config = yaml.safe_load(done.stdout)
    assert config["model"]["class_path"] == "training.ReconstructionModule"
    init = config["model"]["init_args"]
    assert init["scheduler"] == "multistep" and init["scheduler_kwargs"] == {"milestones": [50, 100, 150, 200, 250],
                                                                           "gamma": 0.5}
    assert config["trainer"]["max_epochs"] == 300
    assert config["data"]["batch_size"] == 5 and config["data"]["crop"] == 256
    assert config["data"]["splice_prob"] == 0.6 and config["data"]["val_scenes"] == 4
    assert config["checkpoint"]["monitor"] == "val/psnr" and config["checkpoint"]["save_last"] is True


def test_help_offers_only_the_modules_one_can_train(capsys):
    """Was: fit --help listed the base training.CassiModule (it defines no training objective) as a model."""
    with pytest.raises(SystemExit):
        cli(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    known = re.search(r"any subclass of CassiModule\..*?known subclasses: (.*?)\)", help_text).group(1)
    assert known.split(", ") == ["training.ReconstructionModule", "training.JointModule"]
    user_error(capsys, lambda: cli(["fit", "--model", "training.CassiModule"]), r"training\.CassiModule .*is abstract")


def test_help_says_test_scenes_counts_only_the_synthetic_test_scenes(capsys):
    """Was: --data.test_scenes had no help, and test --data.test_root D/TSA_simu_data --data.test_scenes 2 scored all
    of D's Truth scenes."""
    with pytest.raises(SystemExit):
        cli(["test", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    said = re.search(r"--data\.test_scenes TEST_SCENES (.*?) \(type: int, default: 10\)", help_text).group(1)
    assert said.startswith("how many built-in synthetic test scenes") and "every ``Truth/*.mat`` scene" in said, said


def test_model_help_without_a_class_lists_the_classes_to_pass(capsys):
    """Was: fit --model.help showed the arguments of the abstract base training.CassiModule, which no run can use."""
    with pytest.raises(SystemExit) as done:
        cli(["fit", "--model.help"])
    printed = capsys.readouterr().out
    assert done.value.code == 0 and "train.py fit --model.help CLASS" in printed, printed
    assert "training.ReconstructionModule  Trains any registry reconstruction network." in printed
    assert "training.JointModule" in printed and "CassiModule" not in printed and "--model.lr" not in printed
    with pytest.raises(SystemExit):
        cli(["fit", "--model.help", "training.JointModule"])             # with a class: its arguments, as before
    assert "--model.seg_weight" in capsys.readouterr().out


@pytest.mark.parametrize("given, chosen", [
    (["--config", str(CONFIGS / "crsdun_3stg.yaml"), "--model.help"], "training.JointModule"),
    (["--model.help", "--config", str(CONFIGS / "smoke" / "mst_s.yaml")], "training.ReconstructionModule"),
    (["--model", "JointModule", "--model.help"], "training.JointModule"),
])
def test_model_help_without_a_class_shows_the_arguments_of_the_class_chosen(given, chosen, capsys):
    """Was: fit --config configs/crsdun_3stg.yaml --model.help listed the model classes to pass, not the arguments of
    training.JointModule, which the recipe had chosen."""
    with pytest.raises(SystemExit) as done:
        cli(["fit", *given])
    printed = capsys.readouterr().out
    assert done.value.code == 0 and f"Help for --model.help={chosen}" in printed, printed
    assert ("--model.seg_weight" in printed) == (chosen == "training.JointModule") and "--model.lr" in printed
    assert "--model.help CLASS" not in printed


@pytest.mark.parametrize("given, suggested", [
    (["--model.init_args.lerning_rate", "1e-3"], r"Option 'lerning_rate' is not accepted; did you mean "
                                                 r"--model\.init_args\.lr\?"),          # the initials of the typo
    (["--model.los", "l1"], r"Option 'los' is not accepted; did you mean --model\.init_args\.loss\?"),
    ({"model": {"init_args": {"lerning_rate": 1e-3}}}, r"'lerning_rate' is not accepted; did you mean "
                                                       r"--model\.init_args\.lr\?"),
    (["--data.sample_per_epoch", "4"], r"--data\.sample_per_epoch 4; did you mean --data\.samples_per_epoch\?"),
    ({"data": {"crop_to": 3}}, r"does not accept option 'data\.crop_to'; did you mean --data\.crop_top\?"),
    (["--model.init_args.zzz", "1"], r"Option 'zzz' is not accepted \(see train\.py fit --help\)"),  # none close
    (["--trainer.logger.init_args.projct", "x"],
     r"class_path 'training\.loggers\.CassiWandbLogger': Option 'projct' is not accepted; did you mean "
     r"--trainer\.logger\.init_args\.project\?"),        # without "Expected a <class 'bool'>" (its false)
])
def test_misspelt_options_and_config_keys_name_the_closest_one(given, suggested, tmp_path, capsys):
    """Was: a typo in --model.init_args.* or a config key got jsonargparse's error without a suggestion; one in the
    logger's init_args got its error twice (once per union subtype of --trainer.logger)."""
    if isinstance(given, dict):
        (tmp_path / "typo.yaml").write_text(yaml.safe_dump(given))
        given = ["--config", str(tmp_path / "typo.yaml")]
    line = user_error(capsys, lambda: cli(["fit", "--config", str(CONFIGS / "smoke" / "mst_s.yaml"), *given]),
                      suggested)
    assert line.count("did you mean") <= 1 and line.count("is not accepted") <= 1


@pytest.mark.parametrize("given, said", [
    (["--trainer.logger", "foo"], r"--trainer\.logger foo names none of the classes it takes: [\w, ]*CSVLogger, "
                                  r"[\w, ]*CassiWandbLogger \(a class name or import path\) or true / false \(see"),
    (["--trainer.logger", "CSVLoger"], r"--trainer\.logger CSVLoger names none .*; did you mean CSVLogger\? \(see"),
    (["--trainer.logger", "training.callbacks.RunCheckpoint"], r"RunCheckpoint names none of the classes it takes"),
    (["--model", "training.ReconstructionModul"], r"--model training\.ReconstructionModul names none of the classes "
                                                  r"it takes: ReconstructionModule, JointModule \(a class name or "
                                                  r"import path\); did you mean ReconstructionModule\?"),
    ({"trainer": {"callbacks": [{"class_path": "EarlyStoping"}]}},
     r"--trainer\.callbacks EarlyStoping names none .*EarlyStopping.*; did you mean EarlyStopping\?"),
])
def test_a_class_option_given_no_class_it_takes_lists_the_classes(given, said, tmp_path, capsys):
    """Was: --trainer.logger foo gave jsonargparse's four 'Expected ...' items ('Expected a path but foo either not
    accessible or invalid; Expected a dot import path string: foo; Expected a <class 'collections.abc.Iterable'>;
    Expected a <class 'bool'>'), naming neither the classes it takes nor the closest one."""
    if isinstance(given, dict):
        (tmp_path / "typo.yaml").write_text(yaml.safe_dump(given))
        given = ["--config", str(tmp_path / "typo.yaml")]
    line = user_error(capsys, lambda: cli(["fit", "--config", str(CONFIGS / "smoke" / "mst_s.yaml"), *given]), said)
    assert "Expected" not in line and "Parser key" not in line


def test_a_value_of_no_alternative_of_an_option_names_what_each_expects(capsys):
    """An option of several types keeps each type's expectation when no class was given (the noise left out beside
    a class's misspelt argument is the useful part here)."""
    user_error(capsys, lambda: cli(["fit", "--config", str(CONFIGS / "smoke" / "mst_s.yaml"), "--data.mask_crop",
                                    "foo"]),
               r"\"data\.mask_crop\": Expected a <class 'bool'>; Expected a typing\.Literal\['none', 'sample', "
               r"'batch'\] \(see")


# ------------------------------------------------------------------------------------- smoke fits
@pytest.mark.parametrize("name", ["mst_s", "mst_s_real", "s2_transformer", "crsdun_3stg", "hsra_s", "hsra_dum_3stg",
                                  "bisrnet", "bisrnet_real"])
def test_smoke_config_trains_one_step(name, tmp_path, capsys):
    cli = one_step(CONFIGS / "smoke" / f"{name}.yaml", tmp_path)
    trainer, module = cli.trainer, cli.model
    assert trainer.global_step == 1
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss_epoch"])) and 5 < float(metrics["val/psnr"]) < 60
    assert {"val/ssim", "val/sam"} <= set(metrics)
    if name.startswith("crsdun"):
        assert 0 <= float(metrics["val/miou"]) <= 1
    # exactly one Adam step was taken on the network's parameters, with a non-zero gradient
    state = trainer.optimizers[0].state
    assert {int(state[p]["step"]) for p in module.model.parameters() if p in state} == {1}
    assert any(float(state[p]["exp_avg"].abs().max()) > 0 for p in state)
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} >= {"last.ckpt"}
    out = capsys.readouterr().out
    assert "best val/psnr" in out and str(tmp_path / "checkpoints") in out
    # the end-of-run summary shows the last validation's metrics (CRSDUN: its mIoU too)
    shown = ["loss", *(["miou"] if name.startswith("crsdun") else []), "psnr", "sam", "ssim"]
    assert re.search("  last validation: " + ", ".join(rf"val/{key} [-\d.e]+" for key in shown) + "\n", out), out


def test_bf16_mixed_precision_step(tmp_path):
    # (on the CPU Lightning runs "16-mixed" as bf16-mixed; float16 autocast needs a GPU)
    cli = one_step(CONFIGS / "smoke" / "mst_s.yaml", tmp_path, "--trainer.precision", "bf16-mixed", "--data.crop", "32")
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.global_step == 1
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss_epoch"]))


def test_training_on_a_folder_of_cubes_in_mst_layout(tmp_path):
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    (tmp_path / "cubes").mkdir()
    for k in range(3):  # MST cave_1024_28 layout: 'img_expand' (H, W, 28), 16-bit counts
        savemat(tmp_path / "cubes" / f"scene{k}.mat", {"img_expand": rng.integers(0, 65535, (40, 40, 28),
                                                                                   dtype=np.uint16)})
    cli = one_step(CONFIGS / "smoke" / "mst_s.yaml", tmp_path / "run", "--data.root", str(tmp_path / "cubes"),
                   "--data.val_scenes", "1", "--data.crop", "32")
    assert cli.trainer.global_step == 1
    assert [p.name for p in cli.datamodule.val_files] and not set(cli.datamodule.val_files) & set(
        cli.datamodule.train_files)
    assert any(key.startswith("val_scene/scene") for key in cli.trainer.callback_metrics)


# ----------------------------------------------------------------------------------------- resume
def _final_state(root: Path) -> dict:
    return torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name,resumed",
                         [("mst_s", []), ("s2_transformer", []), ("mst_s", ["--trainer.max_steps", "4"])],
                         ids=["mst_s", "s2_transformer", "mst_s-resumed-with-max_steps"])
def test_resume_from_last_checkpoint_matches_uninterrupted_run(name, resumed, tmp_path):
    """2 epochs x 2 steps in one go == the same run stopped after epoch 0 (as if killed), then
    ``fit --ckpt_path last`` with the same config (the cosine schedule spans the 2 epochs in both).
    S2-Transformer adds stochastic depth (seeded per step) and its L_ME -> L_MA switch at epoch 1. Was, resumed with
    --trainer.max_steps: Lightning counted epoch 0 twice and ran epoch 1 with no batches (global step 2)."""
    config = CONFIGS / "smoke" / f"{name}.yaml"
    common = ["--trainer.max_epochs", "2", "--data.samples_per_epoch", "4", "--data.batch_size", "2",
              "--data.crop", "32", "--previews.every_n_epochs", "0"]
    fit(config, tmp_path / "full", *common)
    fit(config, tmp_path / "split", "--trainer.max_steps", "2", *common)
    first_half = _final_state(tmp_path / "split")
    fit(config, tmp_path / "split", "--ckpt_path", "last", *common, *resumed)
    full, split = _final_state(tmp_path / "full"), _final_state(tmp_path / "split")
    assert training_progress(split) == {"epochs_completed": 2, "batches_into_epoch": 0, "global_step": 4}
    assert first_half["global_step"] == 2 and full["global_step"] == split["global_step"] == 4
    assert any(not torch.equal(first_half["state_dict"][k], v) for k, v in split["state_dict"].items())
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(split["state_dict"][key], value, rtol=1e-5, atol=1e-7, msg=key)
    assert full["lr_schedulers"][0]["last_epoch"] == split["lr_schedulers"][0]["last_epoch"] == 2
    for a, b in zip(full["optimizer_states"][0]["state"].values(), split["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=1e-5, atol=1e-8)


class BatchDigests(pl.Callback):
    """Records (epoch, batch index, sha256 of the batch's cubes and mask) of every training batch."""

    def __init__(self):
        self.seen: list[tuple[int, int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        digest = hashlib.sha256(batch["cube"].numpy().tobytes() + batch["mask"].numpy().tobytes()).hexdigest()
        self.seen.append((trainer.current_epoch, batch_idx, digest))


def test_resume_in_mid_epoch_continues_where_the_run_stopped(tmp_path):
    """2 epochs x 3 steps in one go, and the same run stopped by --trainer.max_steps in mid-epoch 0 (step 1) and in
    mid-epoch 1 (step 4), each time resumed with ``fit --ckpt_path last``: the same batches (crops, augmentations,
    mosaics) of the same epochs in the same order, and the same final weights. Was: resumed from step 1, the run
    went on at epoch 1, batch 1 (last.ckpt was rewritten when fit ended, with the stopped epoch counted complete),
    and a resumed epoch re-read its first batches (Lightning warned that the data loader was not resumable)."""
    config = CONFIGS / "smoke" / "mst_s.yaml"
    common = ["--trainer.max_epochs", "2", "--data.samples_per_epoch", "6", "--data.batch_size", "2",
              "--data.crop", "32", "--previews.every_n_epochs", "0", "--trainer.callbacks+=test_train.BatchDigests"]

    def seen(run) -> list[tuple[int, int, str]]:
        return next(c for c in run.trainer.callbacks if isinstance(c, BatchDigests)).seen

    full = seen(fit(config, tmp_path / "full", *common))
    split = seen(fit(config, tmp_path / "split", *common, "--trainer.max_steps", "1"))
    split += seen(fit(config, tmp_path / "split", *common, "--trainer.max_steps", "4", "--ckpt_path", "last"))
    split += seen(fit(config, tmp_path / "split", *common, "--ckpt_path", "last"))
    assert [(epoch, index) for epoch, index, _ in full] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert len({digest for _, _, digest in full}) == 6
    assert split == full
    final = _final_state(tmp_path / "full")["state_dict"]
    for key, value in _final_state(tmp_path / "split")["state_dict"].items():
        torch.testing.assert_close(value, final[key], rtol=1e-5, atol=1e-7, msg=key)


def test_the_forward_inputs_check_takes_bisrnet_real_at_its_default_input_max():
    """The check before any work builds the network's inputs from a measurement of ones: bisrnet_real (which
    rescales each measurement to its maximum, input_max 0.8 by default) refused a zero one ('a measurement has no
    positive value'), so train.py refused to train it with its default settings."""
    from training.cli import check_forward_inputs
    check_forward_inputs(ReconstructionModule(model_name="bisrnet_real"), [("--data.crop", 64, 64)])
