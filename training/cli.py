"""``train.py``: LightningCLI with the project's defaults.

* model: ``training.ReconstructionModule`` or ``training.JointModule`` (``model.class_path`` in the YAML);
  data: :class:`data.CassiDataModule` (synthetic scenes unless ``--data.root`` names a folder of cubes).
* checkpoints (``--checkpoint.*``): best by ``val/psnr`` and ``last.ckpt`` in ``<default_root_dir>/checkpoints``,
  so ``fit --ckpt_path last`` resumes the run of the same ``default_root_dir``.
* logger: :class:`training.loggers.CassiWandbLogger` (offline without ``WANDB_API_KEY``) writing under
  ``default_root_dir``; ``--trainer.logger CSVLogger`` / ``TensorBoardLogger`` (their ``save_dir`` defaults to
  ``default_root_dir`` too: it is linked) or ``--trainer.logger false``.
* callbacks: learning-rate monitor (when there is a logger), validation previews (``--previews.*``), and a
  summary printed at the end.
"""
from __future__ import annotations

import os

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
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = os.path.join(config.trainer.default_root_dir, "checkpoints")

    def before_fit(self) -> None:
        if self.trainer.loggers:
            self.trainer.callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        self.trainer.callbacks.append(RunSummary())


def main(args: list[str] | None = None) -> CassiCLI:
    return CassiCLI(
        CassiModule, CassiDataModule, subclass_mode_model=True,
        trainer_defaults={"default_root_dir": DEFAULT_ROOT,
                          "logger": {"class_path": "training.loggers.CassiWandbLogger"}},
        save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False, args=args,
    )
