"""``train.py --ckpt_path``: the checkpoint must hold the model the command asks for (the options are compared
with its hyper-parameters, never replaced by them), ``--ckpt_path last`` without a last checkpoint is an error, a new
fit into a folder that holds checkpoints is refused, the end-of-run hint names the run folder, a model card
counts the epochs and steps its checkpoint completed, and last.ckpt holds the final state of a max_steps stop."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shlex
import shutil
import warnings
from types import SimpleNamespace

import pytest
import torch
import yaml

from cassi.errors import UserError
from cli_checks import user_error
from models.checkpoints import load_lightning_checkpoint, training_progress
from test_custom_model import user_module  # noqa: F401  (a fixture)
from test_train import CONFIGS, QUIET, cli, one_step
from training.callbacks import DEFAULT_ROOT, summary_text
from training.cli import check_resume_checkpoint, data_differences, state_dict_problem

MST = CONFIGS / "smoke" / "mst_s.yaml"
HSRA = CONFIGS / "smoke" / "hsra_s.yaml"
TEST = ["--data.crop", "32", "--data.test_scenes", "2", "--trainer.logger", "false", *QUIET]
FIT_WANDB = ["--trainer.max_epochs", "2", "--data.samples_per_epoch", "2", "--data.batch_size", "2", "--data.crop",
             "32", "--previews.every_n_epochs", "0", *QUIET]          # with the default logger (offline W&B)
FIT = [*FIT_WANDB, "--trainer.logger", "false"]


@pytest.fixture(scope="module")
def mst_run(tmp_path_factory):
    """One training step of the MST-S smoke config (32 px crops): (run folder, what it printed at the end)."""
    root = tmp_path_factory.mktemp("mst_run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        one_step(MST, root, "--data.crop", "32")
    assert (root / "checkpoints" / "last.ckpt").is_file()
    return root, printed.getvalue()


@pytest.fixture(scope="module")
def max_steps_run(tmp_path_factory):
    """MST-S stopped by --trainer.max_steps 3 in mid-epoch (two batches per epoch, validation after each epoch):
    (run folder, what it printed at the end)."""
    root = tmp_path_factory.mktemp("max_steps_run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run("fit", MST, root, *FIT, "--data.samples_per_epoch", "4", "--trainer.max_steps", "3")
    return root, printed.getvalue()


def run(subcommand: str, config, root, *args: str):
    return cli([subcommand, "--config", str(config), "--trainer.default_root_dir", str(root), *args])


def refused(capsys, call, pattern: str) -> str:
    """``call`` ends as a user error (exit 2) whose line matches ``pattern``; returns the line."""
    return user_error(capsys, call, pattern, only_line=False)


# ------------------------------------------------------------------------- a checkpoint of another model
def test_test_refuses_the_checkpoint_of_another_model(mst_run, tmp_path, capsys):
    """Was: HSRA-S's config tested MST-S's checkpoint as MST-S, exit 0."""
    last = mst_run[0] / "checkpoints" / "last.ckpt"
    line = refused(capsys, lambda: run("test", HSRA, tmp_path / "run", *TEST, "--ckpt_path", str(last)),
                   rf"--ckpt_path {re.escape(str(last))} holds another model than this command asks for: "
                   r"--model.init_args.model_name: asked hsra_s, the checkpoint has mst_s; test --ckpt_path needs")
    assert str(mst_run[0] / "configs") in line                  # where the checkpoint's own configuration is
    assert not (tmp_path / "run").exists()


def test_command_line_model_options_are_compared_not_replaced(mst_run, tmp_path, capsys):
    """Was: --model.init_args.model_name hsra_s and --loss l1 became the checkpoint's mst_s and rmse, exit 0."""
    last = mst_run[0] / "checkpoints" / "last.ckpt"
    line = refused(capsys, lambda: run("test", MST, tmp_path / "run", *TEST, "--ckpt_path", str(last),
                                       "--model.init_args.model_name", "hsra_s", "--model.init_args.loss", "l1"),
                   r"--model.init_args.model_name: asked hsra_s, the checkpoint has mst_s")
    assert "loss" not in line                                   # test may use another loss than training did
    assert not (tmp_path / "run").exists()
    # the same checkpoint with its own model and another loss: tested, with the loss asked for
    tested = run("test", MST, tmp_path / "run", *TEST, "--ckpt_path", str(last), "--model.init_args.loss", "l1")
    assert tested.model.hparams.model_name == "mst_s" and tested.model.hparams.loss == "l1"
    assert len(tested.model.test_results["scenes"]) == 2
    (saved,) = (tmp_path / "run" / "configs").glob("test-*.yaml")
    init = yaml.safe_load(saved.read_text())["model"]["init_args"]
    assert init["model_name"] == "mst_s" and init["loss"] == "l1"


def test_test_and_predict_read_the_checkpoint_once_for_the_mask_warning(mst_run, tmp_path, monkeypatch):
    """Was: train.py test / predict read --ckpt_path three times: memory-mapped for the checks, then whole for the
    test-mask warning (only for its training mask) and whole again for Lightning's load. The warning now rebuilds the
    mask from the checkpoint the checks mapped: one whole read, Lightning's."""
    last = mst_run[0] / "checkpoints" / "last.ckpt"
    loads, load = [], torch.load

    def counted(f, *args, **kwargs):
        if str(getattr(f, "path", f)) == str(last):        # Lightning opens the file (fsspec) and passes it
            loads.append("mapped" if kwargs.get("mmap") else "whole")
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    for stage, extra in (("test", []), ("predict", ["--predictions.path", str(tmp_path / "pred.npz")])):
        loads.clear()
        run(stage, MST, tmp_path / stage, *TEST, "--ckpt_path", str(last), *extra)
        assert loads == ["mapped", "whole"], (stage, loads)


def test_fit_resume_reads_the_wandb_run_id_from_the_checkpoint_it_checked(mst_run, tmp_path, monkeypatch):
    """Was: fit --ckpt_path with the W&B logger mapped the checkpoint twice before Lightning's load: once for the
    checks, once more for the id of the W&B run to continue (training.callbacks.checkpoint_run_id). The id now comes
    from the checkpoint the checks mapped."""
    import wandb
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    shutil.copytree(mst_run[0] / "checkpoints", tmp_path / "copy" / "checkpoints")
    last = tmp_path / "copy" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    torch.save({**checkpoint, "wandb": {"run_id": "fixa0001"}}, last)
    loads, load = [], torch.load

    def counted(f, *args, **kwargs):
        if str(getattr(f, "path", f)) == str(last):
            loads.append("mapped" if kwargs.get("mmap") else "whole")
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    try:
        resumed = run("fit", MST, tmp_path / "copy", *FIT_WANDB, "--ckpt_path", "last")
        assert resumed.trainer.logger.experiment.id == "fixa0001"       # the run that wrote it goes on
    finally:
        wandb.finish()
    assert loads == ["mapped", "whole"]

def test_test_prints_the_kaist_table_alone_unless_verbose(mst_run, tmp_path, capsys):
    """Was: Lightning's table of every logged value (~40 lines: each scene's metric) came before the KAIST table."""
    last = mst_run[0] / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    run("test", MST, tmp_path / "run", *TEST, "--ckpt_path", str(last))
    out = capsys.readouterr().out
    assert "Test metric" not in out and "test_scene/" not in out
    assert out.lstrip().startswith("KAIST protocol on 2 test scene(s)") and out.splitlines()[-1].startswith("mean ")
    run("test", MST, tmp_path / "run", *TEST, "--ckpt_path", str(last), "--verbose", "true")
    out = capsys.readouterr().out
    assert out.index("Test metric") < out.index("KAIST protocol on 2 test scene(s)")


def test_test_says_it_does_not_use_an_operator_file(mst_run, tmp_path, capsys):
    """Was: train.py test --model.operator FILE took the file and ignored it without a word."""
    from cassi import CassiOperator, Mismatch
    from cassi.operator_file import save_operator
    from data.synthetic import random_mask

    operator = tmp_path / "operator.npz"
    save_operator(operator, CassiOperator(torch.from_numpy(random_mask(32, 32, seed=1)), mismatch=Mismatch(dx=0.5)))
    capsys.readouterr()
    run("test", MST, tmp_path / "run", *TEST, "--ckpt_path", str(mst_run[0] / "checkpoints" / "last.ckpt"),
        "--model.operator", str(operator))
    printed = capsys.readouterr()
    assert (f"train.py test: note: --model.operator {operator} is not used here: test measures every scene through "
            "the nominal operator of the test mask") in printed.err
    assert printed.out.lstrip().startswith("KAIST protocol on 2 test scene(s)")


def test_the_test_mask_warning_reads_the_checkpoints_mask_without_building_the_network(tmp_path, monkeypatch):
    """Was: train.py test / predict's mask warning loaded the checkpoint a second time, network included, only to
    read its training mask; now the mask alone, and the same sentence."""
    import models.checkpoints
    from data.datamodule import CassiDataModule
    from data.synthetic import random_mask
    from training import ReconstructionModule
    from training.cli import checkpoint_mask_note

    module = ReconstructionModule(model_name="mst_s")
    hparams = {"root": None, "crop": 32, "mask": None, "mask_key": "mask", "mask_crop": False, "mask_size": None,
               "seed": 3}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": hparams}, path)
    trained, other = torch.from_numpy(CassiDataModule(**hparams).training_mask()), torch.from_numpy(random_mask(32, 32))
    expected = load_lightning_checkpoint(path).mask_warning(other, "the test mask")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was built")

    monkeypatch.setattr(models.checkpoints, "create_model", no_network)
    raw = torch.load(path, weights_only=True, mmap=True)
    assert torch.equal(models.checkpoints.lightning_training_mask(raw, path), trained)
    assert checkpoint_mask_note("test", path, raw, other) == f"train.py test: warning: {expected}"
    assert checkpoint_mask_note("predict", path, raw, trained) is None


def test_fit_refuses_to_resume_a_run_of_another_model_or_settings(mst_run, tmp_path, capsys, monkeypatch):
    """Was: fit with HSRA-S's config became MST-S and continued the other run's W&B run, exit 0."""
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    last = mst_run[0] / "checkpoints" / "last.ckpt"
    refused(capsys, lambda: run("fit", HSRA, tmp_path / "run", *FIT_WANDB, "--ckpt_path", str(last)),
            r"--model.init_args.model_name: asked hsra_s, the checkpoint has mst_s; fit --ckpt_path resumes that run "
            r"with its own model settings .*drop --ckpt_path to start a new run")
    assert not (tmp_path / "run").exists()
    # a resumed run keeps its settings: another learning rate is refused, the speed switches may change
    shutil.copytree(mst_run[0] / "checkpoints", tmp_path / "copy" / "checkpoints")
    refused(capsys, lambda: run("fit", MST, tmp_path / "copy", *FIT, "--ckpt_path", "last",
                                "--model.init_args.lr", "1e-3"),
            r"copy/checkpoints/last.ckpt holds another model .*--model.init_args.lr: asked 0.001, the checkpoint has "
            r"0.0004")
    resumed = run("fit", MST, tmp_path / "copy", *FIT, "--ckpt_path", "last",
                  "--model.init_args.activation_checkpointing", "true")
    assert resumed.trainer.global_step == 2 and resumed.model.hparams.model_name == "mst_s"


def test_fit_refuses_to_resume_with_data_settings_that_change_its_batches(mst_run, tmp_path, capsys):
    """Was: fit --ckpt_path last --data.batch_size 1 (or another seed, sample count, crop, data) resumed at the saved
    batch count of batches of another size: another run than the one stopped, without a word."""
    shutil.copytree(mst_run[0] / "checkpoints", tmp_path / "copy" / "checkpoints")
    data = tmp_path / "cubes"
    data.mkdir()
    line = refused(capsys, lambda: run("fit", MST, tmp_path / "copy", *FIT, "--ckpt_path", "last",
                                       "--data.batch_size", "1", "--data.seed", "3", "--data.root", str(data)),
                   r"copy/checkpoints/last.ckpt was trained on other data than this command asks for: "
                   rf"--data.root: asked {re.escape(str(data))}, the checkpoint has null; --data.batch_size: asked 1, "
                   r"the checkpoint has 2; --data.seed: asked 3, the checkpoint has 0; fit --ckpt_path resumes that "
                   r"run with its own data settings, which define the training batch it stopped at \(only test_root, "
                   r"test_scenes, num_workers, preload may change.*\): pass the configuration it was trained with")
    assert "--model" not in line and sorted(os.listdir(tmp_path / "copy")) == ["checkpoints"]
    refused(capsys, lambda: run("fit", MST, tmp_path / "copy", *FIT, "--ckpt_path", "last", "--data.crop", "64",
                                "--data.samples_per_epoch", "4", "--model.init_args.lr", "1e-3"),
            r"last.ckpt holds another model and was trained on other data than this command asks for: "
            r"--model.init_args.lr: asked 0.001, the checkpoint has 0.0004; --data.crop: asked 64, the checkpoint has "
            r"32; --data.samples_per_epoch: asked 4, the checkpoint has 2; fit --ckpt_path resumes that run with its "
            r"own model settings .* and its own data settings")
    # settings that leave the batches as they were may change (mask_crop false is its default, none; the source
    # named as what the run's auto chose)
    resumed = run("fit", MST, tmp_path / "copy", *FIT, "--ckpt_path", "last", "--data.preload", "false",
                  "--data.test_scenes", "3", "--data.mask_crop", "false", "--data.source", "synthetic")
    assert resumed.trainer.global_step == 2


def test_resume_compares_the_data_source_it_resolves_to_not_its_spelling():
    """Was: a run of --data.source auto --data.root X resumed with --data.source folder --data.root X (or the
    reverse; auto without a root and synthetic likewise) was refused as trained on other data."""
    auto, folder = {"source": "auto", "root": "/old/cubes"}, {"source": "folder", "root": "/moved/cubes"}
    assert data_differences(auto, folder) == data_differences(folder, auto) == []
    assert data_differences({"source": "auto", "root": None}, {"source": "synthetic", "root": None}) == []
    assert data_differences(auto, {"source": "mst_simulation", "root": "/old/cubes"}) == [
        ("--data.source", "mst_simulation", "auto")]
    assert data_differences({"source": "synthetic", "root": None}, folder) == [
        ("--data.source", "folder", "synthetic"), ("--data.root", "/moved/cubes", None)]


def test_resuming_in_mid_epoch_from_a_checkpoint_without_a_loader_position_warns(max_steps_run, mst_run, tmp_path):
    """Was: a mid-epoch checkpoint written before the training loader saved its position resumed its epoch at the
    first batch (it trained the batches before the stop twice and never the last ones), without a word."""
    def resume(source, name: str, *args: str) -> list[str]:
        shutil.copytree(source / "checkpoints", tmp_path / name / "checkpoints")
        last = tmp_path / name / "checkpoints" / "last.ckpt"
        if name.startswith("old"):                  # as written before data.datamodule.ResumableLoader
            checkpoint = torch.load(last, map_location="cpu", weights_only=True)
            del checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
            torch.save(checkpoint, last)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run("fit", MST, tmp_path / name, *FIT, "--ckpt_path", "last", *args)
        return [str(w.message) for w in caught if "loader position" in str(w.message)]

    mid_epoch = ("--data.samples_per_epoch", "4")
    last = tmp_path / "old" / "checkpoints" / "last.ckpt"
    assert resume(max_steps_run[0], "old", *mid_epoch) == [
        f"--ckpt_path {last} was written after 1 training batch(es) of an epoch by a train.py whose checkpoints record "
        "no training-loader position: the resumed run takes that epoch's batches again from its first, so it trains "
        "on its first 1 batch(es) twice and leaves out its last 1; resume from a checkpoint written at an epoch's end "
        "for an exact continuation"]
    assert resume(max_steps_run[0], "new", *mid_epoch) == []          # it records its position
    assert resume(mst_run[0], "old_epoch_end") == []                  # written at an epoch's end


# ------------------------------------------------------------------------- --ckpt_path last with nothing there
def test_ckpt_path_last_without_a_last_checkpoint_is_an_error(tmp_path, capsys):
    """Was: fit --ckpt_path last in a fresh folder trained from scratch (a Lightning warning with a wrong hint)."""
    folder = tmp_path / "fresh" / "checkpoints"
    refused(capsys, lambda: run("fit", MST, tmp_path / "fresh", *FIT, "--ckpt_path", "last"),
            rf"--ckpt_path last: no last checkpoint \(last.ckpt\) in {re.escape(str(folder))} \(no such folder\), so "
            r"there is no run to resume; drop --ckpt_path last to start a new run, or pass the folder of the run to "
            r"resume with --trainer.default_root_dir")
    refused(capsys, lambda: run("test", MST, tmp_path / "fresh", *TEST, "--ckpt_path", "last"),
            rf"no last checkpoint \(last.ckpt\) in {re.escape(str(folder))}")
    assert list(tmp_path.iterdir()) == []


def test_a_ckpt_path_torch_cannot_read_is_said_to_be_what_it_is(tmp_path, capsys):
    """Was: a text file, an empty file or an .npz as --ckpt_path said torch's 'not a readable torch checkpoint
    (RuntimeError: mmap can only be used with files saved with `torch.save(_use_new_zipfile_serialization=True)...'
    ('[enforce fail at inline_container.cc:180] ...' of the .npz); a last.ckpt torch cannot read was not checked
    (Lightning's traceback, exit 1, once the data were loaded). A pickle-format checkpoint (torch < 1.6) is read."""
    import numpy as np

    notes, empty, arrays, old = (tmp_path / name for name in ("notes.txt.ckpt", "empty.ckpt", "arrays.ckpt", "old.pth"))
    notes.write_text("lr 4e-4, 300 epochs\n")
    empty.write_bytes(b"")
    with open(arrays, "wb") as handle:
        np.savez(handle, x=np.zeros(3))
    torch.save({"x": torch.zeros(3)}, old, _use_new_zipfile_serialization=False)
    said = {notes: r"not a torch checkpoint \(torch\.save writes a zip archive, or a pickle before torch 1\.6\)",
            empty: "the file is empty, not a torch checkpoint",
            arrays: r"a zip archive without the data\.pkl of torch\.save \(an \.npz\?\), not a torch checkpoint",
            old: r"is not a Lightning checkpoint of train\.py \(it holds the weights only"}
    for path, what in said.items():
        refused(capsys, lambda: run("test", MST, tmp_path / "run", *TEST, "--ckpt_path", str(path)),
                rf"error: --ckpt_path {re.escape(str(path))}:? {what}")
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"")                    # --ckpt_path last: the file it stands for
    refused(capsys, lambda: run("test", MST, tmp_path / "run", *TEST, "--ckpt_path", "last"),
            rf"error: --ckpt_path {re.escape(str(folder / 'last.ckpt'))}: the file is empty, not a torch checkpoint$")
    assert os.listdir(tmp_path / "run") == ["checkpoints"]     # refused before any work


def test_a_ckpt_path_of_other_things_than_weights_is_refused(tmp_path, capsys):
    """Was: a Lightning-looking checkpoint whose objects torch loads only with weights_only=False (a numpy array) went
    on to Lightning, which ended in its traceback (WeightsUnpickler error ..., exit 1), as did one whose state_dict
    holds a string ('Missing key(s) in state_dict', exit 1); a dict or list of no weights was said to hold "the
    weights only, like an MST toolbox .pth" or "list". Now one line each (exit 2), in fit, test and predict."""
    import numpy as np

    stamp = {"pytorch-lightning_version": "2.6.6"}
    objects, strings, plain, listed = (tmp_path / f"{name}.ckpt" for name in ("objects", "strings", "plain", "list"))
    torch.save({**stamp, "state_dict": {"w": np.zeros(3)}}, objects)
    torch.save({**stamp, "state_dict": {"w": "not a tensor"}}, strings)
    torch.save({"state_dict": {"w": "not a tensor"}}, plain)
    torch.save([1, 2], listed)
    said = {objects: r" holds objects other than tensors and plain values \(numpy\.\S+\), which train\.py loads only "
                     r"with --weights_only false: pass it if you trust the file \(loading runs its pickled code\)$",
            strings: r": its state_dict holds a str at 'w', not a tensor: not a checkpoint train\.py can load$",
            plain: r" is not a Lightning checkpoint of train\.py \(it holds a dict, not the weights of a model\); "
                   r"--ckpt_path resumes a train\.py run$",
            listed: r" is not a Lightning checkpoint of train\.py \(it holds a list, not the weights of a model\)"}
    for path, what in said.items():
        refused(capsys, lambda: run("test", MST, tmp_path / "run", *TEST, "--ckpt_path", str(path)),
                rf"error: --ckpt_path {re.escape(str(path))}{what}")
    refused(capsys, lambda: run("fit", MST, tmp_path / "run", *FIT, "--ckpt_path", str(objects)),
            rf"error: --ckpt_path {re.escape(str(objects))} holds objects other than tensors")
    refused(capsys, lambda: run("predict", MST, tmp_path / "run", *TEST, "--ckpt_path", str(strings)),
            rf"error: --ckpt_path {re.escape(str(strings))}: its state_dict holds a str at 'w'")
    assert not (tmp_path / "run").exists()                      # refused before any work
    assert check_resume_checkpoint(objects, weights_only=False) is None    # --weights_only false: Lightning loads it


def test_a_pre_zip_checkpoint_of_objects_loads_with_weights_only_false(tmp_path):
    """Was: a checkpoint in torch's pre-1.6 pickle format holding objects was refused with torch's whole message even
    with --weights_only false (only zip files were passed on to Lightning)."""
    import numpy as np

    legacy = tmp_path / "legacy.ckpt"
    torch.save({"pytorch-lightning_version": "1.5.0", "state_dict": {"w": np.zeros(3)}}, legacy,
               _use_new_zipfile_serialization=False)
    assert check_resume_checkpoint(legacy, weights_only=False) is None
    with pytest.raises(UserError, match=r"holds objects other than tensors and plain values \(numpy\.\S+\), which "
                                        r"train\.py loads only with --weights_only false"):
        check_resume_checkpoint(legacy)


def test_ckpt_path_best_and_hpc_are_checked_as_the_files_they_stand_for(mst_run, tmp_path, capsys):
    """Was: --ckpt_path best / hpc skipped the checks; a new process then stopped with Lightning's traceback (exit 1)
    once the data were loaded ('ModelCheckpoint is not configured to save the best model', 'no HPC checkpoint')."""
    root, folder = tmp_path / "moved", tmp_path / "moved" / "checkpoints"
    shutil.copytree(mst_run[0] / "checkpoints", folder)        # the recorded best path is looked up here too
    (mst_best,) = (mst_run[0] / "checkpoints").glob("best-*.ckpt")
    refused(capsys, lambda: run("test", HSRA, root, *TEST, "--ckpt_path", "best"),
            rf"--ckpt_path {re.escape(str(mst_best))} holds another model than this command asks for: "
            r"--model.init_args.model_name: asked hsra_s")
    os.remove(mst_best)
    capsys.readouterr()
    tested = run("test", MST, root, *TEST, "--ckpt_path", "best")
    assert tested.trainer.ckpt_path == str(folder / mst_best.name)
    assert f"weights of {folder / mst_best.name}" in capsys.readouterr().out
    os.remove(folder / mst_best.name)
    refused(capsys, lambda: run("test", MST, root, *TEST, "--ckpt_path", "best"),
            rf"--ckpt_path best: the run's last checkpoint {re.escape(str(folder / 'last.ckpt'))} names "
            rf"{re.escape(str(mst_best))}, which is not there")
    # hpc: Lightning's hpc_ckpt_<N>.ckpt of the largest N in the run folder
    refused(capsys, lambda: run("fit", MST, root, *FIT, "--ckpt_path", "hpc"),
            rf"--ckpt_path hpc: no hpc_ckpt_<N>.ckpt in {re.escape(str(root))} ")
    shutil.copy(folder / "last.ckpt", root / "hpc_ckpt_10.ckpt")
    (root / "hpc_ckpt_9.ckpt").write_text("not a checkpoint")
    refused(capsys, lambda: run("fit", HSRA, root, *FIT, "--ckpt_path", "hpc"),
            rf"--ckpt_path {re.escape(str(root / 'hpc_ckpt_10.ckpt'))} holds another model")


def test_a_slurm_requeue_checks_the_checkpoint_lightning_resumes_from(mst_run, tmp_path, capsys, monkeypatch):
    """Was: in a SLURM job Lightning resumed from the run folder's hpc_ckpt_<N>.ckpt by itself (no --ckpt_path), and
    none of the --ckpt_path checks ran: another model's config, or other data, trained on from its weights. Beside the
    temp file of an interrupted save it looked for hpc_ckpt_2392.ckpt (FileNotFoundError once the data were loaded)."""
    root = tmp_path / "requeued"
    root.mkdir()
    shutil.copy(mst_run[0] / "checkpoints" / "last.ckpt", root / "hpc_ckpt_1.ckpt")
    for name in ("SLURM_JOB_NAME", "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"):
        monkeypatch.delenv(name, raising=False)
    hpc = re.escape(str(root / "hpc_ckpt_1.ckpt"))
    refused_line = rf"{hpc} \(the checkpoint Lightning resumes from in a SLURM job when no --ckpt_path is given: a " \
                   r"requeue\)"
    monkeypatch.setenv("SLURM_NTASKS", "1")                 # what SLURMEnvironment.detect() reads (srun)
    monkeypatch.setenv("SLURM_JOB_NAME", "train")           # not 'bash' / 'interactive'
    refused(capsys, lambda: run("fit", HSRA, root, *FIT),
            rf"error: {refused_line} holds another model than this command asks for: "
            r"--model.init_args.model_name: asked hsra_s, the checkpoint has mst_s; fit under SLURM resumes that run "
            r"with its own model settings .*or start a new run with another --trainer.default_root_dir$")
    refused(capsys, lambda: run("fit", MST, root, *FIT, "--data.batch_size", "1"),
            rf"{refused_line} .*was trained on other data .*--data.batch_size: asked 1, the checkpoint has 2")
    refused(capsys, lambda: run("test", HSRA, root, *TEST),
            rf"{refused_line} .*holds another model .*; test under SLURM needs the model the checkpoint was trained")
    (root / "hpc_ckpt_2.ckpt").write_text("cut short")
    refused(capsys, lambda: run("fit", MST, root, *FIT), rf"error: {re.escape(str(root / 'hpc_ckpt_2.ckpt'))} \(the "
                                                          r"checkpoint Lightning .*\): not a torch checkpoint \(")
    os.remove(root / "hpc_ckpt_2.ckpt")
    assert sorted(os.listdir(root)) == ["hpc_ckpt_1.ckpt"]         # refused before any work
    (root / ".hpc_ckpt_2.ckpt.k3x9q2ab.tmp").write_text("")  # left by a save SLURM killed (cassi.files.atomic_path)
    resumed = run("fit", MST, root, *FIT)                    # the run's own settings: Lightning resumes it
    assert resumed.trainer.ckpt_path == str(root / "hpc_ckpt_1.ckpt") and resumed.trainer.current_epoch == 2


def test_new_fit_into_a_folder_with_checkpoints_is_refused(mst_run, tmp_path, capsys):
    """Was: a second fit without --ckpt_path wrote last-v1.ckpt beside the earlier run's last.ckpt."""
    folder = tmp_path / "old" / "checkpoints"
    shutil.copytree(mst_run[0] / "checkpoints", folder)
    held = sorted(os.listdir(folder))
    refused(capsys, lambda: run("fit", MST, tmp_path / "old", *FIT),
            rf"error: {re.escape(str(folder))} already holds the checkpoints of an earlier run \(.*last.ckpt\); a new "
            r"fit would write beside them: resume that run with --ckpt_path last, or start a new run with another "
            r"--trainer.default_root_dir$")
    refused(capsys, lambda: run("fit", MST, tmp_path / "new", *FIT, "--checkpoint.dirpath", str(folder)),
            r"earlier run .*start a new run with another --checkpoint.dirpath$")
    assert sorted(os.listdir(folder)) == held and os.listdir(tmp_path / "old") == ["checkpoints"]
    assert not (tmp_path / "new").exists()


def test_model_card_counts_the_epochs_and_steps_a_checkpoint_completed(tmp_path):
    """Was: the card copied Lightning's ckpt['epoch']: 'epoch index 1' after half of epoch 0 (a max_steps stop)."""
    eval_cli = importlib.import_module("eval")
    for steps, progress in ((1, "0 complete epoch(s) and 1 training batch(es) of the next, global step 1"),
                            (2, "1 complete epoch(s), global step 2")):            # two batches per epoch
        root = tmp_path / f"steps{steps}"
        run("fit", MST, root, *FIT, "--data.samples_per_epoch", "4", "--trainer.max_steps", str(steps))
        release = root / "release"
        assert eval_cli.main(["export", "--ckpt", str(root / "checkpoints" / "last.ckpt"), "--out", str(release)]) == 0
        assert f"- saved after {progress} (optimizer steps)\n" in (release / "README.md").read_text()


def test_last_checkpoint_holds_the_final_state_of_a_max_steps_stop_in_mid_epoch(max_steps_run):
    """Was: last.ckpt stayed at the end of epoch 0 (global step 2): Lightning writes it only with a top-k checkpoint."""
    last = torch.load(max_steps_run[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert training_progress(last) == {"epochs_completed": 1, "batches_into_epoch": 1, "global_step": 3}


def test_a_max_steps_stop_in_mid_epoch_does_not_warn_of_an_unlogged_metric(tmp_path):
    """Was: "`ModelCheckpoint(monitor='val/psnr')` could not find the monitored key ... HINT: Did you call
    `log('val/psnr', value)`": the epoch cut short is not validated, the metric is logged at every epoch's end."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("fit", MST, tmp_path, *FIT, "--data.samples_per_epoch", "4", "--trainer.max_steps", "1")
    assert not [w for w in caught if "could not find the monitored key" in str(w.message)]
    assert os.listdir(tmp_path / "checkpoints") == ["last.ckpt"]


def test_checkpoint_names_count_complete_epochs_and_name_only_a_monitored_metric(max_steps_run, tmp_path):
    """Was: best-epoch000-... after the first epoch, and psnr0.00 in every name with --checkpoint.monitor null."""
    best, last = sorted(os.listdir(max_steps_run[0] / "checkpoints"))
    assert re.fullmatch(r"best-epoch001-psnr\d+\.\d\d\.ckpt", best) and last == "last.ckpt"
    run("fit", MST, tmp_path, *FIT, "--checkpoint.monitor", "null")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["epoch002-step2.ckpt", "last.ckpt"]


def test_checkpoints_record_every_metric_of_the_last_validation_and_the_step_it_validated(max_steps_run):
    """Was: a checkpoint, and so the release exported from it, recorded only the monitored val/psnr."""
    folder = max_steps_run[0] / "checkpoints"
    best = next(folder.glob("best-*.ckpt"))
    for path, global_step in ((best, 2), (folder / "last.ckpt", 3)):       # validated after epoch 1 (step 2)
        loaded = load_lightning_checkpoint(path).training
        validation = loaded["validation"]
        assert sorted(validation["metrics"]) == ["val/loss", "val/psnr", "val/sam", "val/ssim"], path
        assert validation["metrics_step"] == 2 and loaded["global_step"] == global_step
        assert validation["monitor"] == "val/psnr"
    assert validation["metrics"]["val/psnr"] == pytest.approx(validation["best"])


def test_end_of_run_summary_counts_complete_epochs_as_the_model_card(max_steps_run):
    """Was: 'Training finished after 2 epoch(s)' (Lightning's epoch index) after 1 1/2 epochs."""
    assert "Training finished after 1 complete epoch(s) and 1 training batch(es) of the next, global step 3 " \
           "(optimizer steps).\n" in max_steps_run[1]


def test_resume_hint_is_the_command_of_the_run(mst_run):
    """Was: 'fit --config <same config> ...': the options given on the command line (data settings that a resumed run
    must repeat) were left out."""
    root, printed = mst_run
    args = ["fit", "--config", str(MST), "--trainer.default_root_dir", str(root), *QUIET, "--trainer.max_epochs", "1"]
    assert f"resume with: python train.py {shlex.join(args)} " in printed
    assert printed.rstrip().splitlines()[-2].endswith("--data.crop 32 --trainer.logger false --ckpt_path last")
    checkpoint = SimpleNamespace(best_model_score=None, last_model_path="", monitor="val/psnr",
                                 dirpath=os.path.realpath(os.path.join(DEFAULT_ROOT, "checkpoints")))
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(state_dict=dict), global_step=2, checkpoint_callback=checkpoint,
                              callback_metrics={}, default_root_dir=DEFAULT_ROOT, loggers=[])
    assert "resume with: python train.py fit --config <same config> --ckpt_path last" in summary_text(trainer)
    checkpoint.dirpath = "/elsewhere/ckpts"
    assert "--checkpoint.dirpath /elsewhere/ckpts --ckpt_path last" in summary_text(trainer)
    args = ["fit", "--config", "a b.yaml", "--ckpt_path", "x.ckpt", "--data.crop=32", "--ckpt_path=y.ckpt"]
    assert "resume with: python train.py fit --config 'a b.yaml' --data.crop=32 --checkpoint.dirpath " \
           "/elsewhere/ckpts --ckpt_path last\n" in summary_text(trainer, args)


def test_resume_hint_of_a_network_of_ones_own_names_the_environment_that_registers_it(user_module, monkeypatch,
                                                                                      tmp_path, capsys):
    """Was: 'resume with: python train.py ...' without CASSI_MODELS (and the PYTHONPATH that finds its module), so the
    command said 'unknown model'."""
    user_module("tiny_cassi_resume", "tiny_resume")
    monkeypatch.setenv("CASSI_MODELS", "tiny_cassi_resume")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:/a b")
    root = tmp_path / "run"
    one_step(MST, root, "--data.crop", "32", "--model.init_args.model_name", "tiny_resume")
    printed = capsys.readouterr().out
    assert (f"resume with: PYTHONPATH='{tmp_path}:/a b' CASSI_MODELS=tiny_cassi_resume python train.py fit --config "
            f"{MST} --trainer.default_root_dir {root} ") in printed
    monkeypatch.delenv("PYTHONPATH")
    checkpoint = SimpleNamespace(best_model_score=None, last_model_path="", monitor="val/psnr",
                                 dirpath=os.path.join(DEFAULT_ROOT, "checkpoints"))
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(state_dict=dict), global_step=2, checkpoint_callback=checkpoint,
                              callback_metrics={}, default_root_dir=DEFAULT_ROOT, loggers=[])
    assert "resume with: CASSI_MODELS=tiny_cassi_resume python train.py fit" in summary_text(trainer, None,
                                                                                            "tiny_resume")
    assert "resume with: python train.py fit" in summary_text(trainer, None, "mst_s")     # a published network


def test_a_modules_extra_state_is_not_taken_for_a_foreign_object():
    """Was: a model whose module keeps extra state (nn.Module.get_extra_state: any picklable value, saved under
    '<prefix>_extra_state') was refused as "holds a dict at ..., not a tensor"."""

    class Counter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(2))

        def get_extra_state(self) -> dict:
            return {"seen": 3}

        def set_extra_state(self, state: dict) -> None:
            pass

    state = torch.nn.Sequential(Counter()).state_dict()
    assert "0._extra_state" in state and state_dict_problem(state) is None
    assert state_dict_problem({**state, "0.bias": "x"}) == "holds a str at '0.bias', not a tensor"
