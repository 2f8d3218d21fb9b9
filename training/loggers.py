"""Experiment loggers: W&B by default (offline without an API key), image logging for any logger, and the W&B
pieces of a run: resolved config, per-scene validation table, spectra as line plots, the run id of a checkpoint."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger

from cassi.files import write_bytes
from data.previews import probe_spectra
from data.render import cube_to_rgb, error_map
from data.synthetic import wavelengths


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
        log_model: log checkpoints as W&B artifacts: ``True`` at the end of training, ``"all"`` every time one
            is saved. Offline runs keep them in the run folder until ``wandb sync`` uploads them (Lightning's own
            logger refuses ``log_model`` offline; this one runs W&B with ``mode="offline"`` instead).
        id: W&B run id (W&B resumes a run whose id exists); ``train.py fit --ckpt_path`` sets it to continue the
            run that wrote the checkpoint.
        **kwargs: further :class:`WandbLogger` / ``wandb.init`` arguments.
    """

    def __init__(self, project: str = "cassi", name: str | None = None, save_dir: str | None = None,
                 offline: bool | None = None, log_model: bool | Literal["all"] = False, id: str | None = None,
                 **kwargs: Any):
        if (not wandb_online_possible() if offline is None else offline):
            kwargs["mode"] = "offline"
        super().__init__(project=project, name=name, save_dir=save_dir or ".", log_model=log_model, id=id,
                         offline=False, **kwargs)
        # Lightning's default; wandb warns that it has no effect. Lightning's private _wandb_init is the only way to
        # drop it (tests/test_layers.py, PRIVATE_ATTRIBUTES_ALLOWED, says why)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @property
    def experiment(self) -> Any:
        """The W&B run, started on first use in the run folder, which is made first: wandb looks there for a git
        repository as it starts, and warned 'git root <run folder> does not exist' of a folder it was about to make.
        (The code's commit is in the run's config either way: :class:`training.callbacks.RunConfig`.)"""
        if self.save_dir and "://" not in self.save_dir:
            os.makedirs(self.save_dir, exist_ok=True)
        return super().experiment


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


TABLE_METRICS = ("psnr", "ssim", "sam")


def _rgb_error(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The per-pixel RMSE map in the magma colour map (as the PNG previews), scaled to its maximum, uint8."""
    error = error_map(pred, target)
    scaled = error / error.max() if error.max() > 0 else error
    return (colormaps["magma"](scaled)[..., :3] * 255).astype(np.uint8)


def log_validation_scenes(logger: WandbLogger, samples: Sequence[Mapping[str, Any]],
                          metrics: Mapping[str, Mapping[str, float]], step: int) -> None:
    """W&B: the table ``val/scenes`` (one row per held-out scene: its metrics, reconstruction, ground truth and
    error thumbnails) and, per scene, ``val_spectra/<scene>`` line plots of the spectra at the four probes
    (truth and reconstruction), which W&B renders as interactive charts."""
    import wandb

    logged = {key for row in metrics.values() for key in row}
    names = [key for key in TABLE_METRICS if key in logged] + sorted(logged - set(TABLE_METRICS))
    rows = []
    for sample in samples:
        pred, target = sample["pred"].numpy(), sample["target"].numpy()
        scene = sample["scene"] or "scene0"
        rows.append([scene, *[metrics.get(scene, {}).get(name) for name in names],
                     wandb.Image(cube_to_rgb(pred), caption="reconstruction"),
                     wandb.Image(cube_to_rgb(target), caption="ground truth"),
                     wandb.Image(_rgb_error(pred, target), caption=f"error, max {error_map(pred, target).max():.3f}")])
        wl = wavelengths(pred.shape[0]).tolist()
        curves, keys = [], []
        for k, (row, col, truth, recon) in enumerate(probe_spectra(pred, target)):
            curves += [truth.tolist(), recon.tolist()]
            keys += [f"{k + 1} truth ({row}, {col})", f"{k + 1} recon."]
        chart = wandb.plot.line_series(xs=wl, ys=curves, keys=keys, title=f"{scene}: spectra at the probes",
                                       xname="wavelength (nm)")
        logger.log_metrics({f"val_spectra/{scene}": chart}, step=step)
    logger.log_table("val/scenes", columns=["scene", *names, "reconstruction", "ground truth", "error"], data=rows,
                     step=step)


def log_run_config(logger: WandbLogger, config: Mapping[str, Any], file: Path) -> None:
    """W&B: the whole resolved run configuration on the run (``config``) and ``file`` uploaded with it. The file is
    copied into the run's files folder first: ``save`` of a file outside it links it there and warned 'Symlinked 1
    file into the W&B run directory; call wandb.save again to sync new files' (it is written once)."""
    logger.experiment.config.update(dict(config), allow_val_change=True)
    copy = write_bytes(Path(logger.experiment.dir) / file.name, file.read_bytes())
    logger.experiment.save(str(copy), base_path=logger.experiment.dir, policy="now")
