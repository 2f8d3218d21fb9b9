"""Callbacks: checkpoints whose last one holds the newest state, validation previews (images in the run folder, W&B
tables), the run's configuration, the W&B run of a checkpoint, prediction files and the end-of-run summary."""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from weakref import proxy

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import BasePredictionWriter, ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from scipy.io import savemat

from cassi.files import atomic_path, write_text
from cassi.kaist_table import text_table
from cassi.progress import fit_progress, progress_text
from data.previews import save_comparison, save_segmentation, save_spectra
from models.registry import USER_MODULES_ENV, get_entry, user_modules
from training.loggers import log_image_file, log_run_config, log_validation_scenes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = "runs/default"           # train.py's --trainer.default_root_dir unless a config or option sets one
PREDICTION_FORMATS = (".mat", ".npz")


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose last checkpoint (``save_last``) holds the newest state: it is written
    after every training epoch and validation, after the batch that reaches ``--trainer.max_steps`` in mid-epoch
    (where Lightning resumes a run in mid-epoch) and when ``fit`` ends, unless a checkpoint of that global step was.

    Lightning 2.6 writes ``last.ckpt`` only together with a top-k checkpoint, so an epoch whose score did not
    improve, or a ``--trainer.max_steps`` stop in mid-epoch, left it at an older step.

    File names may hold ``{epochs}``, the complete epochs (:func:`cassi.progress.fit_progress`; Lightning's
    ``{epoch}`` is the index of the epoch in progress). Without ``filename``: :func:`default_filename`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.filename = self.filename or default_filename(self.monitor)
        self.saved_step: int | None = None           # global step of the newest checkpoint written; None: not fitting
        self._trainer: pl.Trainer | None = None      # a weak proxy, for the complete epochs of file names

    @property
    def state_key(self) -> str:
        """The key of its state in a checkpoint, as a plain ``ModelCheckpoint``'s: checkpoints written before this
        class resume with their best score, and readers find it (``models.checkpoints``)."""
        return ModelCheckpoint.__name__ + super().state_key.removeprefix(type(self).__qualname__)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = proxy(trainer)

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None,
                               prefix: str | None = None) -> str:
        if self._trainer is not None:
            progress = fit_progress(self._trainer.fit_loop.state_dict(), self._trainer.global_step)
            metrics = {**metrics, "epochs": progress["epochs_completed"]}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.saved_step = trainer.global_step        # nothing trained yet, or the resumed checkpoint's state

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Any save counts (Lightning writes last.ckpt with each top-k file; its private _save_last_checkpoint is not
        # overridden), so a file another ModelCheckpoint writes at a step stands in for last.ckpt there.
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if max_steps_stop_in_mid_epoch(trainer):
            self.save_newest(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # An epoch cut short by --trainer.max_steps was not validated: ModelCheckpoint would warn that the monitored
        # metric was never logged ("HINT: Did you call `log('val/psnr', value)`?") and save no top-k checkpoint.
        if self.monitor is None or not max_steps_stop_in_mid_epoch(trainer):
            super().on_train_epoch_end(trainer, pl_module)
        self.save_newest(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self.save_newest(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not ModelCheckpoint's, which rewrites the last checkpoint here unless it wrote one itself: after a
        # --trainer.max_steps stop in mid-epoch the loop then counts that epoch complete, and a resumed run skipped
        # the rest of it.
        self.save_newest(trainer)

    def save_newest(self, trainer: pl.Trainer) -> None:
        """Write the last checkpoint when training ran past the newest checkpoint written."""
        if (not self.save_last or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking
                or trainer.fast_dev_run or self.saved_step in (None, trainer.global_step)):
            return
        self.last_model_path = self.last_model_path or self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        trainer.save_checkpoint(self.last_model_path, self.save_weights_only)
        self.saved_step = trainer.global_step
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def max_steps_stop_in_mid_epoch(trainer: pl.Trainer) -> bool:
    """Whether ``--trainer.max_steps`` was reached before the last batch of the epoch in progress."""
    reached = 0 <= trainer.max_steps <= trainer.global_step
    return reached and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def default_filename(monitor: str | None) -> str:
    """``best-epoch{epochs:03d}-<metric><value>`` with a monitored metric (``val/psnr``: ``best-epoch001-psnr31.20``
    after the first epoch), else ``epoch{epochs:03d}-step{step}``: no name shows a metric that is not monitored."""
    if monitor is None:
        return "epoch{epochs:03d}-step{step}"
    return f"best-epoch{{epochs:03d}}-{monitor.rpartition('/')[2]}{{{monitor}:.2f}}"


class ValidationPreviews(pl.Callback):
    """After validation (rank 0): the first held-out crop's reconstruction next to its ground truth with the
    error map, spectra at four probe pixels and, for joint models, the class maps; with W&B, a table of every
    held-out scene (metrics and thumbnails) and their spectra as line plots.

    PNGs go to ``<default_root_dir>/previews/epochNNN_*.png``, NNN the complete epochs as in checkpoint names (a
    validation in mid-epoch: ``epochNNN-stepS_*.png``; ``train.py validate``: ``validate_*.png``; atomic writes), and
    to every logger that takes images (W&B media, TensorBoard). Under DDP the table holds the scenes of rank 0's
    share of the crops.

    Args:
        every_n_epochs: render every n-th validation epoch (0: never).
    """

    def __init__(self, every_n_epochs: int = 1):
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        samples = getattr(pl_module, "val_samples", None)
        epoch = trainer.current_epoch
        if (trainer.sanity_checking or not trainer.is_global_zero or not samples or not self.every_n_epochs
                or epoch % self.every_n_epochs):
            return
        first = samples[0]
        folder = Path(trainer.default_root_dir) / "previews"
        if trainer.state.fn == TrainerFn.FITTING:
            progress = fit_progress(trainer.fit_loop.state_dict(), trainer.global_step)
            stem = f"epoch{progress['epochs_completed']:03d}" + (
                f"-step{trainer.global_step}" if progress["batches_into_epoch"] else "")
            title = f"after {progress_text(progress)}"
        else:                                        # train.py validate: no training progress of its own
            stem, title = "validate", f"validate, {trainer.ckpt_path or 'initial weights'}"
        title += f", {first['scene']}" if first["scene"] else ""
        files = {
            "preview/reconstruction": save_comparison(folder / f"{stem}_comparison.png",
                                                      first["pred"], first["target"], title),
            "preview/spectra": save_spectra(folder / f"{stem}_spectra.png", first["pred"], first["target"], title),
        }
        if "pred_labels" in first:
            files["preview/segmentation"] = save_segmentation(
                folder / f"{stem}_segmentation.png", first["pred_labels"].numpy(),
                first["labels"].numpy(), int(pl_module.n_class), title)
        for logger in trainer.loggers:
            for key, path in files.items():
                log_image_file(logger, key, path, trainer.global_step, caption=title)
            if isinstance(logger, WandbLogger):
                log_validation_scenes(logger, samples, scene_metrics(trainer.callback_metrics), trainer.global_step)


def scene_metrics(callback_metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{scene: {metric: value}} from the logged ``val_scene/<scene>/<metric>`` values."""
    table: dict[str, dict[str, float]] = {}
    for key, value in callback_metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "val_scene":
            table.setdefault(parts[1], {})[parts[2]] = float(value)
    return table


def git_state(folder: Path = REPO) -> dict[str, Any]:
    """{"commit": hash or None, "dirty": uncommitted changes or None} of the code's git checkout."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


class RunConfig(SaveConfigCallback):
    """The resolved configuration of every run, never overwritten: ``<default_root_dir>/configs/<stage>-<UTC
    time>[-<W&B run id>].yaml`` (re-runnable with ``--config``; provenance in its header comments), and on a W&B
    run its whole content (trainer, model, data, seed, checkpointing, class paths, git commit) as the run's
    config plus the file itself uploaded with the run."""

    def __init__(self, parser: Any, config: Any, **kwargs: Any):
        super().__init__(parser, config, **{**kwargs, "save_to_log_dir": False})

    def provenance(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        datamodule = trainer.datamodule

        def path(obj: Any) -> str:
            return f"{type(obj).__module__}.{type(obj).__qualname__}"

        return {
            "class_paths": {
                "model": path(pl_module), "data": None if datamodule is None else path(datamodule),
                "trainer": path(trainer), "loggers": [path(lg) for lg in trainer.loggers],
            },
            "seed": self.config.get("seed_everything"),
            "git": git_state(),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                         "lightning": str(pl.__version__)},
        }

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: Any) -> None:
        stage = str(getattr(stage, "value", stage))                  # Lightning passes a TrainerFn
        text = self.parser.dump(self.config, skip_none=False)
        provenance = self.provenance(trainer, pl_module)
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        run_id = wandb_loggers[0].experiment.id if wandb_loggers else None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        folder = Path(trainer.default_root_dir) / "configs"
        stem = f"{stage}-{stamp}" + (f"-{run_id}" if run_id else "")
        path, k = folder / f"{stem}.yaml", 1
        while path.exists():
            k += 1
            path = folder / f"{stem}-{k}.yaml"
        header = "".join(f"# {line}\n" for line in yaml.safe_dump(provenance, sort_keys=False).splitlines())
        write_text(path, f"# train.py {stage}: resolved configuration (re-run with --config this file)\n{header}{text}")
        for logger in wandb_loggers:
            log_run_config(logger, {**yaml.safe_load(text), "provenance": provenance}, path)


class WandbRunId(pl.Callback):
    """Records the W&B run id in every checkpoint (``checkpoint["wandb"]["run_id"]``), so that ``train.py fit
    --ckpt_path`` continues that run instead of opening a new one."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint["wandb"] = {"run_id": logger.version}
                return


def checkpoint_run_id(checkpoint: Mapping[str, Any]) -> str | None:
    """The W&B run id a checkpoint of this project records (as :class:`WandbRunId` writes it), or None."""
    record = checkpoint.get("wandb")
    return record.get("run_id") if isinstance(record, Mapping) else None


class PredictionWriter(BasePredictionWriter):
    """Writes ``train.py predict``'s reconstructions to one file (atomically), after the last scene.

    ``.mat``: the MST toolbox's test layout, ``pred`` and ``truth`` (N, H, W, L) float32 (as its ``test.py``
    saves them) and ``scenes`` (names). ``.npz``: ``pred`` and ``truth`` (N, L, H, W) float32 and ``names``. A joint
    model (CRSDUN) adds ``segmentation`` (N, H, W) uint8, the predicted class of every pixel, to either.

    Args:
        path: output file; None -> ``<default_root_dir>/predictions.mat``.
    """

    def __init__(self, path: str | None = None):
        super().__init__(write_interval="epoch")
        if path is not None and Path(path).suffix.lower() not in PREDICTION_FORMATS:
            raise ValueError(f"--predictions.path {path}: the file must end in .mat or .npz")
        self.path = path

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        if not trainer.is_global_zero or not predictions:
            return
        pred = torch.cat([p["pred"] for p in predictions]).numpy()
        truth = torch.cat([p["truth"] for p in predictions]).numpy()
        names = [name for p in predictions for name in p["names"]]
        classes = {"segmentation": torch.cat([p["segmentation"] for p in predictions]).numpy().astype(np.uint8)} \
            if "segmentation" in predictions[0] else {}
        path = Path(self.path) if self.path else Path(trainer.default_root_dir) / "predictions.mat"
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            if path.suffix.lower() == ".mat":
                savemat(handle, {"pred": pred.transpose(0, 2, 3, 1), "truth": truth.transpose(0, 2, 3, 1),
                                 "scenes": np.array(names, dtype=object), **classes})
            else:
                np.savez_compressed(handle, pred=pred, truth=truth, names=np.array(names), **classes)
        print(f"wrote {len(names)} reconstruction(s) to {path}")


class RunSummary(pl.Callback):
    """Prints where the results are when fitting ends: best validation PSNR, checkpoints, logs, and the command
    (``args``: this run's ``train.py`` arguments) that resumes the run."""

    def __init__(self, args: list[str] | None = None):
        self.args = args

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        print(summary_text(trainer, self.args, pl_module.hparams.get("model_name")))


def validation_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The last validation's metrics (``val/loss``, ``val/psnr``, ...; CRSDUN's ``val/miou``) by name, sorted."""
    return {key: float(value) for key, value in sorted(trainer.callback_metrics.items()) if key.startswith("val/")}


def summary_text(trainer: pl.Trainer, args: list[str] | None = None, model_name: str | None = None) -> str:
    """Where the results of a finished ``fit`` are, after how far it trained (:func:`cassi.progress.fit_progress`),
    and how to resume it (:func:`resume_command`; ``model_name``: the registry model trained)."""
    progress = fit_progress(trainer.fit_loop.state_dict(), trainer.global_step)
    lines = [f"Training finished after {progress_text(progress)}."]
    validation = validation_metrics(trainer)
    if validation:
        lines.append("  last validation: " + ", ".join(f"{key} {value:.4g}" for key, value in validation.items()))
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None:
        score = checkpoint.best_model_score
        if score is not None:
            lines.append(f"  best {checkpoint.monitor}: {float(score):.3f}  ->  {checkpoint.best_model_path}")
        if checkpoint.last_model_path:
            lines.append(f"  last checkpoint: {checkpoint.last_model_path}")
        lines.append(f"  resume with: {resume_command(trainer, args, model_name)}")
    lines.append(f"  run folder: {Path(trainer.default_root_dir).resolve()}")
    for logger in trainer.loggers:
        lines.append(f"  {logger_location(logger)}")
    return "\n".join(lines)


def kaist_test_text(results: dict[str, Any], ckpt_path: str | os.PathLike | None) -> str:
    """``train.py test``'s results as ``eval.py kaist`` prints its scenario I: a heading and the KAIST table (and a
    joint model's segmentation mIoU)."""
    weights = f"weights of {ckpt_path}" if ckpt_path else "the weights as initialised (no --ckpt_path)"
    text = (f"KAIST protocol on {len(results['scenes'])} test scene(s) (eval.py kaist's scenario I: nominal operator "
            f"of the test mask, no noise), {weights}\n{text_table(results['scenes'], results['mean'])}")
    if "miou" in results:
        text += (f"\nsegmentation mIoU {results['miou']:.4f} over the scenes' labels (synthetic scenes: material ids; "
                 f"the mean over those of the {results['classes']} classes in the labels or the prediction)")
    return text


def _same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def _without_ckpt_path(args: list[str]) -> list[str]:
    """``args`` without their ``--ckpt_path X`` / ``--ckpt_path=X``."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip or arg.startswith("--ckpt_path="):
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        else:
            kept.append(arg)
    return kept


def user_model_environment(model_name: str | None) -> list[str]:
    """``PYTHONPATH=... CASSI_MODELS=...`` as this process has them (PYTHONPATH when set), as words of a command that
    runs the model ``model_name`` again, when a module named by ``CASSI_MODELS`` registered it (a network of the
    user's own: README, "Adding your own model"); else []."""
    modules = user_modules()
    if not model_name or not modules:
        return []
    where = get_entry(model_name).builder.__module__
    if not any(where == module or where.startswith(f"{module}.") for module in modules):
        return []
    names = ["PYTHONPATH", USER_MODULES_ENV] if os.environ.get("PYTHONPATH") else [USER_MODULES_ENV]
    return [f"{name}={shlex.quote(os.environ[name])}" for name in names]


def resume_command(trainer: pl.Trainer, args: list[str] | None = None, model_name: str | None = None) -> str:
    """The command that resumes this run: its own arguments ``args`` (unknown: ``fit --config <same config>``)
    with ``--ckpt_path last``, which looks in the run's checkpoint folder, so the command names the run folder
    unless it is the default one or given in ``args`` (and the checkpoint folder unless it is the run folder's
    ``checkpoints/``); for a network of the user's own (``model_name``), after the environment that registers it
    (:func:`user_model_environment`)."""
    given = _without_ckpt_path(args) if args is not None else None
    words = user_model_environment(model_name)
    words += ["python train.py", *map(shlex.quote, given)] if given else ["python train.py fit --config <same config>"]
    root = str(trainer.default_root_dir)
    options = {arg.split("=")[0] for arg in given or []}
    if not _same_folder(root, DEFAULT_ROOT) and "--trainer.default_root_dir" not in options:
        words.append(f"--trainer.default_root_dir {shlex.quote(root)}")
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    if dirpath and "://" not in str(dirpath) and not _same_folder(dirpath, os.path.join(root, "checkpoints")) \
            and "--checkpoint.dirpath" not in options:
        words.append(f"--checkpoint.dirpath {shlex.quote(str(dirpath))}")
    words.append("--ckpt_path last")
    return " ".join(words)


def logger_location(logger: Any) -> str:
    if isinstance(logger, WandbLogger):
        run_dir = Path(logger.experiment.dir).parent
        if getattr(logger.experiment, "offline", False):
            # a resumed run has one folder per session; wandb sync uploads them in order into the one run
            pieces = run_dir.parent / f"offline-run-*-{logger.experiment.id}"
            return f"W&B offline run: {run_dir}  (upload: wandb sync {pieces})"
        return f"W&B run: {logger.experiment.url}"
    return f"{type(logger).__name__}: {logger.log_dir}"
