"""``train.py``: LightningCLI with the project's defaults.

* model: ``training.ReconstructionModule`` or ``training.JointModule`` (``model.class_path`` in the YAML);
  data: :class:`data.CassiDataModule` (synthetic scenes unless ``--data.root`` names a folder of cubes).
* checkpoints (``--checkpoint.*``): best by ``val/psnr`` and ``last.ckpt`` in ``<default_root_dir>/checkpoints``,
  so ``fit --ckpt_path last`` resumes the run of the same ``default_root_dir``.
* logger: :class:`training.loggers.CassiWandbLogger` (offline without ``WANDB_API_KEY``) writing under
  ``default_root_dir``; ``--trainer.logger CSVLogger`` / ``TensorBoardLogger`` (their ``save_dir`` defaults to
  ``default_root_dir`` too) or ``--trainer.logger false``.
* callbacks: learning-rate monitor (when there is a logger), validation previews (``--previews.*``), and a
  summary printed at the end.
"""
from __future__ import annotations

import os
from typing import Any

from jsonargparse import Namespace
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from data.datamodule import CassiDataModule
from training.callbacks import RunSummary, ValidationPreviews
from training.modules import CassiModule

DEFAULT_ROOT = "runs/default"


class CassiCLI(LightningCLI):
    """LightningCLI that fills run-folder defaults and adds the project's callbacks."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/psnr", "checkpoint.mode": "max", "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:03d}-psnr{val/psnr:.2f}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(ValidationPreviews, "previews")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or DEFAULT_ROOT
        config.trainer.default_root_dir = root
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = os.path.join(root, "checkpoints")
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            _default_save_dir(logger, root)

    def before_fit(self) -> None:
        if self.trainer.loggers:
            self.trainer.callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        self.trainer.callbacks.append(RunSummary())


def _default_save_dir(logger: Any, root: str) -> None:
    """Set a logger's ``save_dir`` to the run folder when the config leaves it unset."""
    init_args = getattr(logger, "init_args", None) if isinstance(logger, Namespace) else None
    if init_args is not None and "save_dir" in init_args and init_args.save_dir in (None, "", "."):
        init_args.save_dir = root


def main(args: list[str] | None = None) -> CassiCLI:
    return CassiCLI(
        CassiModule, CassiDataModule, subclass_mode_model=True,
        trainer_defaults={"logger": {"class_path": "training.loggers.CassiWandbLogger"}},
        save_config_kwargs={"overwrite": True}, args=args,
    )
