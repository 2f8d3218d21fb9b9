"""Callbacks: validation previews (images in the run folder and the loggers) and the end-of-run summary."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from matplotlib.figure import Figure
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from data.io import voc_palette
from cassi.files import save_figure
from evaluation.previews import save_comparison, save_spectra
from training.loggers import log_image_file


def save_segmentation(path: Path, pred: np.ndarray, labels: np.ndarray, n_class: int, title: str) -> Path:
    """Predicted | true class maps (H, W) side by side in the PASCAL-VOC palette."""
    palette = voc_palette(n_class)
    figure = Figure(figsize=(7, 3.6), layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, classes, name in zip(axes, (pred, labels), ("predicted classes", "true classes")):
        axis.imshow(palette[np.clip(classes, 0, n_class - 1)])
        axis.set_title(name)
        axis.set_axis_off()
    figure.suptitle(title)
    return save_figure(figure, path, dpi=100)


class ValidationPreviews(pl.Callback):
    """After validation (rank 0): the first held-out crop's reconstruction next to its ground truth with the
    error map, spectra at four probe pixels and, for joint models, the class maps.

    PNGs go to ``<default_root_dir>/previews/epochNNN_*.png`` (atomic writes) and to every logger that takes
    images (W&B media, TensorBoard).

    Args:
        every_n_epochs: render every n-th validation epoch (0: never).
    """

    def __init__(self, every_n_epochs: int = 1):
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        preview = getattr(pl_module, "preview", None)
        epoch = trainer.current_epoch
        if (trainer.sanity_checking or not trainer.is_global_zero or preview is None or not self.every_n_epochs
                or epoch % self.every_n_epochs):
            return
        folder = Path(trainer.default_root_dir) / "previews"
        title = f"epoch {epoch}, step {trainer.global_step}" + (f", {preview['scene']}" if preview["scene"] else "")
        files = {
            "preview/reconstruction": save_comparison(folder / f"epoch{epoch:03d}_comparison.png",
                                                      preview["pred"], preview["target"], title),
            "preview/spectra": save_spectra(folder / f"epoch{epoch:03d}_spectra.png",
                                            preview["pred"], preview["target"], title),
        }
        if "pred_labels" in preview:
            files["preview/segmentation"] = save_segmentation(
                folder / f"epoch{epoch:03d}_segmentation.png", preview["pred_labels"].numpy(),
                preview["labels"].numpy(), int(pl_module.n_class), title)
        for logger in trainer.loggers:
            for key, path in files.items():
                log_image_file(logger, key, path, trainer.global_step, caption=title)


class RunSummary(pl.Callback):
    """Prints where the results are when fitting ends: best validation PSNR, checkpoints, logs."""

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        print(summary_text(trainer))


def summary_text(trainer: pl.Trainer) -> str:
    lines = [f"Training finished after {trainer.current_epoch} epoch(s), {trainer.global_step} step(s)."]
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None:
        score = checkpoint.best_model_score
        if score is not None:
            lines.append(f"  best {checkpoint.monitor}: {float(score):.3f}  ->  {checkpoint.best_model_path}")
        if checkpoint.last_model_path:
            lines.append(f"  last checkpoint: {checkpoint.last_model_path}")
        lines.append("  resume with: python train.py fit --config <same config> --ckpt_path last")
    lines.append(f"  run folder: {Path(trainer.default_root_dir).resolve()}")
    for logger in trainer.loggers:
        lines.append(f"  {_logger_location(logger)}")
    return "\n".join(lines)


def _logger_location(logger: Any) -> str:
    if isinstance(logger, WandbLogger):
        run_dir = Path(logger.experiment.dir).parent
        if getattr(logger.experiment, "offline", False):
            return f"W&B offline run: {run_dir}  (upload: wandb sync {run_dir})"
        return f"W&B run: {logger.experiment.url}"
    return f"{type(logger).__name__}: {logger.log_dir}"
