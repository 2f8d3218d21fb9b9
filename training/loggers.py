"""Experiment loggers: W&B by default (offline without an API key), image logging for any logger."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger


def wandb_online_possible() -> bool:
    """True when W&B can sync: an API key in the environment, or ``WANDB_MODE=online`` set explicitly."""
    return bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "online"


class CassiWandbLogger(WandbLogger):
    """:class:`WandbLogger` that runs offline unless an API key is set, writing under the run folder.

    Args:
        project, name: W&B project and run name.
        save_dir: folder of the ``wandb/`` run directories; None -> the trainer's ``default_root_dir``
            (filled in by ``train.py``).
        offline: None -> offline exactly when :func:`wandb_online_possible` is False. An offline run is
            uploaded later with ``wandb sync <run dir>``.
        **kwargs: further :class:`WandbLogger` / ``wandb.init`` arguments.
    """

    def __init__(self, project: str = "cassi", name: str | None = None, save_dir: str | None = None,
                 offline: bool | None = None, **kwargs: Any):
        super().__init__(project=project, name=name, save_dir=save_dir or ".",
                         offline=not wandb_online_possible() if offline is None else offline, **kwargs)


def log_image_file(logger: Logger, key: str, path: Path, step: int, caption: str | None = None) -> None:
    """Send a PNG that is already saved in the run folder to ``logger`` (W&B media or a TensorBoard image).

    Loggers without images (CSV) keep only the file.
    """
    if isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[str(path)], step=step, caption=[caption] if caption else None)
    elif isinstance(logger, TensorBoardLogger):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        logger.experiment.add_image(key, pixels, step, dataformats="HWC")
