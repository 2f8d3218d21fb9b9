"""Experiment logging: offline W&B by default (metrics and images inside the run), TensorBoard selectable."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from test_train import cli, fit

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke" / "mst_s.yaml"
RUN = ["--trainer.max_epochs", "1", "--data.samples_per_epoch", "4", "--data.batch_size", "2", "--data.crop", "32"]


def wandb_records(path: Path) -> list[bytes]:
    """Records of a ``.wandb`` transaction log (LevelDB log format: 32 KiB blocks of
    crc32 / length / type framed chunks after a 7-byte ':W&B' header)."""
    raw = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", raw[:7])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        if pos + 7 + length > len(raw):  # a record still being written
            break
        chunk, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    return records


def run_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The parsed records of a run's ``.wandb`` log, once its closing ``exit`` record is on disk (the W&B
    service may still be writing when ``wandb.finish()`` returns)."""
    from wandb.proto import wandb_internal_pb2
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for data in wandb_records(next(run_dir.glob("run-*.wandb"))):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def history_keys(run_dir: Path) -> dict[str, list]:
    """{metric: values} of the run's history records."""
    values: dict[str, list] = {}
    for record in run_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                values.setdefault(key, []).append(json.loads(item.value_json))
    return values


def run_config(run_dir: Path) -> dict:
    """The run's config as W&B stored it ({key: value})."""
    config = {}
    for record in run_records(run_dir):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config


def artifacts(run_dir: Path) -> list:
    return [r.artifact for r in run_records(run_dir) if r.WhichOneof("record_type") == "artifact"]


@pytest.fixture
def offline_wandb(monkeypatch):
    import wandb
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.finish()


def test_offline_wandb_run_holds_metrics_and_images(tmp_path, monkeypatch):
    import wandb
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    fit(SMOKE, tmp_path, *RUN, logger=True)
    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "expected one offline run under the run folder"
    history = history_keys(runs[0])
    for key in ("train/loss", "train/loss_epoch", "val/psnr", "val/ssim", "val/sam", "lr-Adam",
                "val_scene/synthetic_scene_0/psnr", "val_scene/synthetic_scene_1/sam"):
        assert key in history, f"{key} not logged; logged: {sorted(history)}"
    assert 5 < history["val/psnr"][-1] < 60 and history["lr-Adam"][0] == pytest.approx(4e-4)
    for key in ("preview/reconstruction", "preview/spectra"):
        (name,) = history[f"{key}/filenames"][-1]
        image = runs[0] / "files" / name
        assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((runs[0] / "files" / "media" / "images").rglob("*.png"))) == 2
    # named as the checkpoints, by complete epochs (was: epoch000_* beside best-epoch001-*.ckpt)
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["epoch001_comparison.png",
                                                                          "epoch001_spectra.png"]
    assert [p.name.startswith("best-epoch001-") for p in sorted((tmp_path / "checkpoints").iterdir())] == [True, False]
    # train.py validate of a checkpoint has no training progress: validate_* (was: epoch-01_*, or over epoch000_*)
    cli(["validate", "--config", str(SMOKE), "--trainer.default_root_dir", str(tmp_path), *RUN, "--trainer.logger",
         "false", "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])
    assert sorted(p.name for p in (tmp_path / "previews").iterdir())[2:] == ["validate_comparison.png",
                                                                              "validate_spectra.png"]


def test_wandb_logger_does_not_pass_the_anonymous_setting(tmp_path):
    """Was: every run printed 'wandb: WARNING The anonymous setting has no effect ...' (Lightning passes None)."""
    from training.loggers import CassiWandbLogger
    assert "anonymous" not in CassiWandbLogger(save_dir=str(tmp_path), offline=True)._wandb_init
    assert CassiWandbLogger(save_dir=str(tmp_path), offline=True, anonymous=True)._wandb_init["anonymous"] == "allow"


def test_wandb_run_in_a_new_run_folder_outside_git_does_not_warn_of_a_git_root(tmp_path):
    """Was: 'wandb: WARNING git root <run folder> does not exist' at the start of every run into a new folder.
    A fresh process: wandb keeps its settings (WANDB_SILENT of other tests) for the life of one."""
    code = ("import wandb; from training.loggers import CassiWandbLogger; "
            f"print(CassiWandbLogger(save_dir={str(tmp_path / 'run')!r}, offline=True).experiment.dir); wandb.finish()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)                            # cwd: not in a git repository
    assert done.returncode == 0 and done.stdout.startswith(str(tmp_path / "run" / "wandb")), done.stderr
    assert "Tracking run with wandb" in done.stderr and "git root" not in done.stderr, done.stderr


def test_run_config_file_is_uploaded_without_a_link_warning(tmp_path):
    """Was: 'wandb: WARNING Symlinked 1 file into the W&B run directory; call wandb.save again to sync new files' at
    the start of every run (the configuration file, written once). A fresh process, as above."""
    (tmp_path / "fit.yaml").write_text("model: mst_s\n")
    code = ("import wandb; from pathlib import Path; from training.loggers import CassiWandbLogger, log_run_config; "
            f"logger = CassiWandbLogger(save_dir={str(tmp_path / 'run')!r}, offline=True); "
            f"log_run_config(logger, {{'seed': 1}}, Path({str(tmp_path / 'fit.yaml')!r})); "
            "print(logger.experiment.dir); wandb.finish()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "Tracking run with wandb" in done.stderr, done.stderr
    assert "Symlinked" not in done.stderr and "Linked" not in done.stderr, done.stderr
    files = Path(done.stdout.strip())
    assert (files / "fit.yaml").read_text() == "model: mst_s\n" and not (files / "fit.yaml").is_symlink()
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert any(r.WhichOneof("record_type") == "files" and [f.path for f in r.files.files] == ["fit.yaml"]
               for r in run_records(run)), "the file is not uploaded with the run"


def test_tensorboard_logger_is_selectable(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    fit(SMOKE, tmp_path, "--trainer.logger", "TensorBoardLogger", *RUN, logger=True)
    (events,) = list(tmp_path.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"val/psnr", "train/loss", "lr-Adam"} <= set(tags["scalars"])
    assert {"preview/reconstruction", "preview/spectra"} <= set(tags["images"])


def test_wandb_run_holds_the_resolved_config_the_scene_table_and_checkpoints(tmp_path, offline_wandb):
    import wandb
    fit(SMOKE, tmp_path, *RUN, "--trainer.logger.log_model", "all", logger=True)
    wandb.finish()
    (run,) = list((tmp_path / "wandb").glob("offline-run-*"))
    run_id = run.name.rsplit("-", 1)[1]
    config = run_config(run)
    # the whole resolved CLI config: trainer, model (class path + init args), data, seed, and provenance
    assert config["trainer"]["max_epochs"] == 1 and config["trainer"]["default_root_dir"] == str(tmp_path)
    assert config["model"]["class_path"] == "training.ReconstructionModule"
    assert config["model"]["init_args"]["model_name"] == "mst_s" and config["data"]["crop"] == 32
    assert config["seed_everything"] == 0 and config["checkpoint"]["monitor"] == "val/psnr"
    provenance = config["provenance"]
    assert provenance["class_paths"]["data"] == "data.datamodule.CassiDataModule"
    assert provenance["class_paths"]["loggers"] == ["training.loggers.CassiWandbLogger"]
    assert provenance["git"]["commit"] is None or len(provenance["git"]["commit"]) == 40
    # the config file: one per run in the run folder, and uploaded with the run
    (saved,) = list((tmp_path / "configs").glob(f"fit-*-{run_id}.yaml"))
    assert (run / "files" / saved.name).read_text() == saved.read_text()
    assert yaml.safe_load(saved.read_text())["model"]["init_args"]["model_name"] == "mst_s"
    # per-scene validation table (metrics + thumbnails) and spectra as line plots
    history = history_keys(run)
    assert history["val/scenes/_type"] == ["table-file"] and history["val/scenes/nrows"] == [2]
    tables = {a.name.split("-")[2]: a for a in artifacts(run) if a.type == "run_table"}
    thumbnails = [c.path for c in tables["valscenes"].manifest.contents if c.path.endswith(".png")]
    assert len(thumbnails) == 6                                   # 2 scenes x (reconstruction, truth, error)
    table = json.loads(next((run / "files" / "media" / "table" / "val").glob("scenes_*.table.json")).read_text())
    assert table["columns"][:4] == ["scene", "psnr", "ssim", "sam"]
    assert [row[0] for row in table["data"]] == ["synthetic_scene_0", "synthetic_scene_1"]
    assert table["data"][0][1] == pytest.approx(history["val_scene/synthetic_scene_0/psnr"][-1])
    assert {"val_spectra/synthetic_scene_0_table/_type", "val_spectra/synthetic_scene_1_table/_type"} <= set(history)
    assert any(key.startswith("_wandb/visualize/val_spectra/") for key in config)   # rendered as line charts
    # checkpoints as model artifacts (offline: kept for wandb sync)
    models = [a for a in artifacts(run) if a.type == "model"]
    assert models and all([c.path for c in a.manifest.contents] == ["model.ckpt"] for a in models)


def test_resume_continues_the_same_wandb_run_and_keeps_every_config(tmp_path, offline_wandb):
    import wandb
    common = [*RUN, "--trainer.max_epochs", "2", "--data.samples_per_epoch", "2"]
    fit(SMOKE, tmp_path, *common, "--trainer.max_steps", "1", logger=True)
    wandb.finish()
    (first,) = list((tmp_path / "wandb").glob("offline-run-*"))
    run_id = first.name.rsplit("-", 1)[1]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["wandb"] == {"run_id": run_id}
    resumed = fit(SMOKE, tmp_path, *common, "--ckpt_path", "last", logger=True)
    assert resumed.trainer.global_step == 2 and resumed.trainer.logger.experiment.id == run_id
    wandb.finish()
    pieces = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(pieces) == 2 and all(p.name.endswith(f"-{run_id}") for p in pieces)
    assert 2 in history_keys(pieces[1])["trainer/global_step"]          # the second session's steps, same run
    configs = sorted((tmp_path / "configs").glob(f"fit-*-{run_id}*.yaml"))
    assert len(configs) == 2                                            # one per session, none overwritten
    assert yaml.safe_load(configs[1].read_text())["ckpt_path"] == "last"


def test_a_slurm_requeue_continues_the_same_wandb_run(tmp_path, offline_wandb, monkeypatch):
    """Was: a requeued SLURM job (Lightning resuming from hpc_ckpt_<N>.ckpt by itself, no --ckpt_path) started a new
    W&B run: only --ckpt_path continued the one that wrote the checkpoint."""
    import wandb
    common = [*RUN, "--trainer.max_epochs", "2", "--data.samples_per_epoch", "2"]
    fit(SMOKE, tmp_path, *common, "--trainer.max_steps", "1", logger=True)
    wandb.finish()
    (first,) = list((tmp_path / "wandb").glob("offline-run-*"))
    shutil.copy(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt")   # as SLURM's SIGUSR1 saves
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    resumed = fit(SMOKE, tmp_path, *common, logger=True)
    assert resumed.trainer.ckpt_path == str(tmp_path / "hpc_ckpt_1.ckpt")
    assert resumed.trainer.logger.experiment.id == first.name.rsplit("-", 1)[1]


def test_segmentation_preview_of_a_joint_model_is_a_png(tmp_path):
    import numpy as np
    from data.previews import save_segmentation
    rng = np.random.default_rng(0)
    path = save_segmentation(tmp_path / "seg.png", rng.integers(0, 5, (16, 16)), rng.integers(0, 5, (16, 16)), 5, "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
