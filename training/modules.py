"""LightningModules: thin wrappers that connect a registry network, the simulated instrument and the data.

* :class:`ReconstructionModule`: any registry model, loss per the paper's recipe (:mod:`training.objectives`).
* :class:`JointModule`: joint reconstruction + segmentation (CRSDUN), per-stage MSE + lambda * CE with stage
  weights 0.7^(K-k) (:class:`models.joint_loss.CRSDUNLoss`), validation mIoU.

Per training step the batch's cubes go through :class:`training.simulation.Instrument` (the CASSI operator,
optional mismatch, gain and detector noise), the network gets ``model.prepare_inputs(y, op)`` and the loss
compares its output with the cubes. Validation runs on the datamodule's held-out scenes (never the KAIST test
scenes) and logs PSNR / SSIM / SAM (:class:`cassi.metrics.ReconstructionMetrics`, synced across processes)
overall and per scene.

``train.py test`` runs the KAIST protocol on the datamodule's test scenes exactly as ``eval.py kaist``'s
scenario I: nominal operator with the test mask, no gain or noise, metrics of :func:`cassi.metrics.kaist_metrics`
per scene, logged as ``test/<metric>`` (means) and ``test_scene/<scene>/<metric>``. ``train.py predict`` returns
the reconstructions (written by :class:`training.callbacks.PredictionWriter`).

GPU switches (:mod:`training.acceleration`): ``activation_checkpointing``, ``channels_last``, ``compile``
(``nn.Module.compile``, so the state-dict keys stay those of the network).

Reproducibility: the detector noise of every batch and the global torch RNG before every training step
(dropout, stochastic depth) are seeded from (seed, epoch, batch index, rank) only, so an interrupted run
resumed from its last checkpoint continues exactly as the uninterrupted run (the data are deterministic per
index, see :mod:`data.datamodule`).

Checkpoints store ``model_name`` / ``model_kwargs`` in ``hyper_parameters`` and the network under the
``model.`` prefix of ``state_dict`` (what ``eval.py`` reads); hyper-parameters are plain values only, so the
checkpoint loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassJaccardIndex

from cassi import CassiOperator
from cassi.kaist_table import mean_row, result_row
from cassi.metrics import KAIST_METRICS, ReconstructionMetrics
from cassi.operator_file import status_text
from models import create_model
from models.joint_loss import CRSDUNLoss
from training.acceleration import enable_activation_checkpointing, to_channels_last
from training.callbacks import validation_metrics
from training.objectives import OBJECTIVES, build_objective
from training.simulation import Instrument, derived_seed

SCHEDULERS = ("cosine", "step", "multistep", "constant")
# Seed streams (first entry after the user seed), so that no two uses share random numbers.
_TRAIN_NOISE, _TRAIN_TORCH, _VAL_NOISE = 0, 1, 2


class CassiModule(pl.LightningModule, ABC):
    """Shared machinery: network, instrument, optimiser and schedule, validation metrics and previews.
    Abstract (a subclass defines :meth:`objective`), so ``train.py`` offers only the subclasses as ``--model``.

    Args:
        model_name, model_kwargs: registry name and constructor arguments (``models.create_model``).
        bands, step, mismatch, noise, measurement_gain, operator: the simulated instrument (:class:`Instrument`;
            ``operator``: a calibrated operator file from ``calibrate.py``).
        lr, betas, weight_decay: Adam settings (all papers here: lr 4e-4, betas (0.9, 0.999)).
        scheduler: per-epoch learning-rate schedule: ``cosine`` (``CosineAnnealingLR``, ``T_max`` = the
            trainer's ``max_epochs`` unless given, ``eta_min`` 1e-6 unless given), ``step`` (``StepLR``:
            ``step_size``, ``gamma``), ``multistep`` (``MultiStepLR``: ``milestones``, ``gamma``), ``constant``.
        scheduler_kwargs: keyword arguments of that torch scheduler.
        val_protocol: ``kaist`` (8-bit quantised, as the KAIST tables) or ``float`` metrics.
        seed: seed of the noise and per-step RNG streams.
        activation_checkpointing: recompute the network's blocks in the backward pass instead of storing their
            activations (same outputs and gradients, less memory, one more forward pass of each block).
        channels_last: network parameters and 4-D inputs in channels-last memory layout (faster convolutions on
            tensor-core GPUs, especially with bf16).
        compile: ``torch.compile`` the network (``compile_kwargs``: e.g. ``{mode: max-autotune}``); the first
            steps are slow while it compiles.
    """

    def __init__(self, model_name: str = "mst_s", model_kwargs: dict[str, Any] | None = None, bands: int = 28,
                 step: int = 2, mismatch: dict[str, float] | None = None, noise: dict[str, float] | None = None,
                 measurement_gain: float = 1.0, lr: float = 4e-4, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, scheduler: Literal["cosine", "step", "multistep", "constant"] = "cosine",
                 scheduler_kwargs: dict[str, Any] | None = None, val_protocol: Literal["kaist", "float"] = "kaist",
                 seed: int = 0, operator: str | None = None, activation_checkpointing: bool = False,
                 channels_last: bool = False, compile: bool = False, compile_kwargs: dict[str, Any] | None = None):
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {', '.join(SCHEDULERS)}")
        self.save_hyperparameters()
        self.model = create_model(model_name, **(model_kwargs or {}))     # checks the model protocol
        if activation_checkpointing:
            enable_activation_checkpointing(self.model)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile(**(compile_kwargs or {}))
        self.instrument = Instrument(bands, step, mismatch, noise, measurement_gain, operator)
        self.val_metrics = ReconstructionMetrics(protocol=val_protocol, bands=bands)
        self.scene_metrics = nn.ModuleList()
        self.scene_names: list[str] = []
        # rank 0's first validation crop of every held-out scene seen, for the preview callback
        self.val_samples: list[dict[str, Any]] = []
        self.test_rows: list[dict[str, Any]] = []
        self.test_results: dict[str, Any] | None = None
        # the last validation of the run: {"global_step": S, "metrics": {name: value}} (kept in checkpoints)
        self.last_validation: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def objective(self, output: Any, batch: dict[str, Tensor], op: CassiOperator) -> dict[str, Tensor]:
        """{"loss": scalar to optimise, other terms to log} for one batch."""

    def update_extra_metrics(self, output: Any, batch: dict[str, Tensor]) -> None:
        """Validation metrics beyond the reconstruction ones (segmentation)."""

    def extra_preview(self, output: Any, batch: dict[str, Tensor], index: int) -> dict[str, Tensor]:
        """Further tensors of sample ``index`` for the previews."""
        return {}

    def update_test_metrics(self, output: Any, batch: dict[str, Tensor]) -> None:
        """``train.py test`` metrics beyond the KAIST ones (segmentation, where the test scenes have labels)."""

    def extra_test_results(self) -> dict[str, Any]:
        """Those metrics, logged, for ``test_results``."""
        return {}

    # ------------------------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        names = self._validation_scene_names()
        if names and len(names) != len(self.scene_metrics):
            protocol = self.hparams.val_protocol
            self.scene_metrics = nn.ModuleList(ReconstructionMetrics(protocol=protocol, bands=self.hparams.bands)
                                               for _ in names)
            self.scene_names = names

    def _datamodule(self) -> Any:
        try:
            return getattr(self.trainer, "datamodule", None)
        except RuntimeError:                                 # not attached to a Trainer
            return None

    def _validation_scene_names(self) -> list[str]:
        """Short names of the datamodule's held-out scenes (file stems), or [] without such a datamodule."""
        datamodule = self._datamodule()
        source = getattr(getattr(datamodule, "val_set", None), "source", None)
        if source is None:
            return []
        names = [Path(source.name(k)).stem.replace(" ", "_") for k in range(len(source))]
        return names if len(set(names)) == len(names) else [f"scene{k}" for k in range(len(names))]

    def on_fit_start(self) -> None:
        """Prints once (rank 0) the status and reasons of the calibration whose operator file is the instrument."""
        if self.instrument.calibration is not None and self.trainer.is_global_zero:
            print(f"calibration status of {self.hparams.operator}: {status_text(self.instrument.calibration)}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints name their held-out validation scenes, the status of the instrument's calibration, what an
        operator file's instrument was (``operator_file``: :func:`training.simulation.operator_file_record`, None
        without one) and the run's last validation (its global step and every ``val/*`` metric by name), for release
        model cards."""
        checkpoint["validation_scenes"] = list(self.scene_names)
        checkpoint["operator_calibration"] = self.instrument.calibration
        checkpoint["operator_file"] = self.instrument.operator_file
        metrics = validation_metrics(self.trainer)
        if metrics and self.last_validation is not None:
            self.last_validation["metrics"] = metrics
        checkpoint["last_validation"] = self.last_validation

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run keeps the last validation of the run it continues until it validates itself."""
        self.last_validation = checkpoint.get("last_validation")

    # ------------------------------------------------------------------------------------- steps
    def forward(self, y: Tensor, op: CassiOperator) -> Any:
        """The network's output for a measurement ``y`` (B, H, W + step*(L-1)) taken through ``op``."""
        inputs = self.model.prepare_inputs(y, op)
        if self.hparams.channels_last:
            inputs = {name: to_channels_last(value) for name, value in inputs.items()}
        return self.model(**inputs)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(derived_seed(self.hparams.seed, _TRAIN_TORCH, self.current_epoch, batch_idx,
                                       self.global_rank))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        seed = derived_seed(self.hparams.seed, _TRAIN_NOISE, self.current_epoch, batch_idx, self.global_rank)
        y, op = self.instrument.measure(batch, seed)
        terms = self.objective(self(y, op), batch, op)
        size = batch["cube"].shape[0]
        for name, value in terms.items():
            # per step: this rank's value (no communication); per epoch: the mean over all ranks
            self.log(f"train/{name}", value, prog_bar=name == "loss", on_step=True, on_epoch=False, batch_size=size)
            self.log(f"train/{name}_epoch", value, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return terms["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        y, op = self.instrument.measure(batch, derived_seed(self.hparams.seed, _VAL_NOISE, batch_idx,
                                                            self.global_rank))
        output = self(y, op)
        cube = batch["cube"]
        pred = self.model.reconstruction(output).float()
        self.log("val/loss", self.objective(output, batch, op)["loss"], batch_size=cube.shape[0], sync_dist=True)
        self.val_metrics.update(pred, cube)
        if "scene" in batch and len(self.scene_metrics):
            for k in batch["scene"].unique().tolist():
                chosen = batch["scene"] == k
                self.scene_metrics[k].update(pred[chosen], cube[chosen])
        self.update_extra_metrics(output, batch)
        if self.trainer.is_global_zero:
            self._keep_samples(output, batch, pred)

    def _keep_samples(self, output: Any, batch: dict[str, Tensor], pred: Tensor) -> None:
        """Keep the first crop of every scene (just the first crop when the batches carry no scene index)."""
        if "scene" not in batch:
            if not self.val_samples:
                self.val_samples.append(self._sample(output, batch, pred, 0, ""))
            return
        seen = {sample["index"] for sample in self.val_samples}
        for i, scene in enumerate(batch["scene"].tolist()):
            if scene not in seen:
                seen.add(scene)
                name = self.scene_names[scene] if scene < len(self.scene_names) else f"scene{scene}"
                self.val_samples.append(self._sample(output, batch, pred, i, name, scene))

    def _sample(self, output: Any, batch: dict[str, Tensor], pred: Tensor, i: int, name: str,
                index: int = 0) -> dict[str, Any]:
        extra = {k: v.detach().cpu() for k, v in self.extra_preview(output, batch, i).items()}
        return {"pred": pred[i].detach().cpu(), "target": batch["cube"][i].detach().float().cpu(), "scene": name,
                "index": index, **extra}

    def on_validation_epoch_start(self) -> None:
        self.val_samples = []

    def on_validation_epoch_end(self) -> None:
        # compute() gathers the metric sums of all processes; every rank logs the same values.
        self._log_metrics("val", self.val_metrics, prog_bar=True)
        for name, metrics in zip(self.scene_names, self.scene_metrics):
            self._log_metrics(f"val_scene/{name}", metrics)
        if not self.trainer.sanity_checking:          # its metrics are read when a checkpoint is saved
            self.last_validation = {"global_step": self.global_step}

    def _log_metrics(self, prefix: str, metrics: ReconstructionMetrics, prog_bar: bool = False) -> None:
        with warnings.catch_warnings():  # under DDP a rank may hold no crop of some scene; the sums are synced
            warnings.filterwarnings("ignore", message=".*compute.* was called before the ..update.. method")
            values = metrics.compute()
        metrics.reset()
        for key, value in values.items():
            self.log(f"{prefix}/{key}", value.float(), prog_bar=prog_bar and key == "psnr", sync_dist=True)

    # ----------------------------------------------------------------------------------- test / predict
    def protocol_output(self, batch: dict[str, Tensor]) -> Any:
        """The network's output for ``batch["cube"]`` measured through the nominal operator of ``batch["mask"]``
        (no mismatch, gain or noise): ``eval.py kaist``'s scenario I."""
        cube = batch["cube"]
        op = CassiOperator(batch["mask"].to(cube.dtype), self.hparams.bands, self.hparams.step)
        return self(op(cube), op)

    def _test_scene_name(self, index: int) -> str:
        names = getattr(self._datamodule(), "test_names", None) or []
        return names[index] if index < len(names) else f"scene{index}"

    def on_test_epoch_start(self) -> None:
        self.test_rows, self.test_results = [], None

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Every scene's row of ``eval.py kaist``'s table: its metrics and seconds (the batch's time per scene)."""
        start = time.perf_counter()
        output = self.protocol_output(batch)
        pred = self.model.reconstruction(output).float().cpu()
        seconds = (time.perf_counter() - start) / len(pred)
        self.update_test_metrics(output, batch)
        for i, index in enumerate(batch["scene"].tolist()):
            row = result_row(self._test_scene_name(index), pred[i], batch["cube"][i].float().cpu(), seconds)
            self.test_rows.append(row)

    def on_test_epoch_end(self) -> None:
        """Means over the scenes (``eval.py``'s mean row) and every scene's row, logged."""
        mean = mean_row(self.test_rows)
        self.test_results = {"scenes": list(self.test_rows), "mean": mean, **self.extra_test_results()}
        for key in KAIST_METRICS:
            self.log(f"test/{key}", mean[key])
        for row in self.test_rows:
            for key in KAIST_METRICS:
                self.log(f"test_scene/{row['name']}/{key}", row[key])

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """{"pred": (B, L, H, W), "truth": the cubes, "names": scene names, and :meth:`extra_predictions`}, on the
        CPU."""
        output = self.protocol_output(batch)
        return {"pred": self.model.reconstruction(output).float().cpu(), "truth": batch["cube"].float().cpu(),
                "names": [self._test_scene_name(i) for i in batch["scene"].tolist()],
                **self.extra_predictions(output)}

    def extra_predictions(self, output: Any) -> dict[str, Tensor]:
        """``train.py predict``'s outputs beyond the reconstruction (segmentation), on the CPU."""
        return {}

    # ---------------------------------------------------------------------------------- optimiser
    def schedule_kwargs(self, max_epochs: int | None) -> dict[str, Any]:
        """The keyword arguments of the learning-rate schedule: ``scheduler_kwargs``, and for ``cosine`` ``T_max`` =
        ``max_epochs`` (the trainer's) and ``eta_min`` = 1e-6 unless given. A cosine schedule without ``T_max`` for a
        trainer without an epoch limit (``max_epochs`` None or < 1: ``--trainer.max_epochs null``) is a ValueError
        naming the options that set one (``train.py fit`` asks before any work)."""
        kwargs = dict(self.hparams.scheduler_kwargs or {})
        if self.hparams.scheduler != "cosine":
            return kwargs
        if "T_max" not in kwargs:
            if max_epochs is None or max_epochs < 1:
                raise ValueError("--model.init_args.scheduler cosine anneals the learning rate over "
                                 "--trainer.max_epochs, which is not set (null); set --trainer.max_epochs N, or the "
                                 "schedule's length in epochs with --model.init_args.scheduler_kwargs '{T_max: N}'")
            kwargs["T_max"] = max_epochs
        kwargs.setdefault("eta_min", 1e-6)
        return kwargs

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.model.parameters(), lr=hp.lr, betas=tuple(hp.betas),
                                     weight_decay=hp.weight_decay)
        if hp.scheduler == "constant":
            return {"optimizer": optimizer}
        kwargs = self.schedule_kwargs(self.trainer.max_epochs)
        if hp.scheduler == "cosine":
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **kwargs)
        elif hp.scheduler == "step":
            schedule = torch.optim.lr_scheduler.StepLR(optimizer, **kwargs)
        else:
            schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


class ReconstructionModule(CassiModule):
    """Trains any registry reconstruction network.

    Args:
        model_name: registry name (``models.list_models()``).
        loss: ``rmse`` (MST), ``l1`` (MST real-data), ``charbonnier``, ``s2_mask_aware`` (S²-Transformer's
            L_ME -> L_MA schedule); see :mod:`training.objectives`.
        loss_kwargs: arguments of that loss (e.g. ``{"switch_epoch": 150}`` or ``{"eps": 1e-3}``).
        **kwargs: the shared settings of :class:`CassiModule`.
    """

    def __init__(self, model_name: str = "mst_s", loss: Literal["rmse", "l1", "charbonnier", "s2_mask_aware"] = "rmse",
                 loss_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(model_name=model_name, **kwargs)
        if loss not in OBJECTIVES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(OBJECTIVES)}")
        self.criterion = build_objective(loss, self.model.reconstruction, **(loss_kwargs or {}))

    def objective(self, output: Any, batch: dict[str, Tensor], op: CassiOperator) -> dict[str, Tensor]:
        return self.criterion(output, batch["cube"], op, self.current_epoch)


class JointModule(CassiModule):
    """Joint reconstruction + segmentation (CRSDUN): deep-supervised MSE + ``seg_weight`` * cross-entropy.

    Args:
        model_name: a registry model whose output has ``segmentation(output)`` (``crsdun_3stg`` / ``_5stg``).
        seg_weight: lambda_ce (paper 1e-4). stage_decay: lambda_stage (paper 0.7; stage k of K weighs 0.7^(K-k)).
        **kwargs: the shared settings of :class:`CassiModule`.

    Batches need ``labels`` (B, h, w) int64 class maps (the synthetic scenes and FVgNET have them).
    Validation also tracks the mean IoU (``val/miou``, classes absent from prediction and labels skipped), and so
    does ``train.py test`` on test scenes with labels (``test/miou``: the built-in synthetic ones' material ids).
    """

    def __init__(self, model_name: str = "crsdun_3stg", seg_weight: float = 1e-4, stage_decay: float = 0.7,
                 **kwargs: Any):
        super().__init__(model_name=model_name, **kwargs)
        if not callable(getattr(self.model, "segmentation", None)):
            raise TypeError(f"model '{model_name}' has no segmentation(); JointModule needs a joint model (crsdun_*)")
        self.criterion = CRSDUNLoss(seg_weight=seg_weight, stage_decay=stage_decay)
        self.n_class = int(self.model.n_class)
        self.val_miou = MulticlassJaccardIndex(num_classes=self.n_class, average="macro")
        self.test_miou = MulticlassJaccardIndex(num_classes=self.n_class, average="macro")
        self.test_labelled = False

    def _labels(self, batch: dict[str, Tensor]) -> Tensor:
        if "labels" not in batch:
            raise ValueError("JointModule needs per-pixel 'labels' in the batch; this datamodule gives none "
                             "(the synthetic scenes and --data.source fvgnet have labels, folders of cubes do not)")
        labels = batch["labels"]
        if int(labels.max()) >= self.n_class:
            raise ValueError(f"labels go up to {int(labels.max())} but the model has n_class={self.n_class}; "
                             "set model_kwargs.n_class")
        return labels

    def objective(self, output: Any, batch: dict[str, Tensor], op: CassiOperator) -> dict[str, Tensor]:
        labels = self._labels(batch)
        loss = self.criterion(output, batch["cube"], labels)
        with torch.no_grad():
            rec, seg = self.criterion.terms(output, batch["cube"], labels)
        return {"loss": loss, "rec": rec, "seg": seg}

    def update_extra_metrics(self, output: Any, batch: dict[str, Tensor]) -> None:
        self.val_miou.update(self.model.segmentation(output).argmax(dim=1), self._labels(batch))
        self.log("val/miou", self.val_miou, prog_bar=True)

    def update_test_metrics(self, output: Any, batch: dict[str, Tensor]) -> None:
        if "labels" in batch:
            self.test_miou.update(self.model.segmentation(output).argmax(dim=1), self._labels(batch))
            self.test_labelled = True

    def extra_test_results(self) -> dict[str, Any]:
        if not self.test_labelled:
            return {}
        miou = float(self.test_miou.compute())
        self.test_miou.reset()
        self.test_labelled = False
        self.log("test/miou", miou)
        return {"miou": miou, "classes": self.n_class}

    def extra_predictions(self, output: Any) -> dict[str, Tensor]:
        return {"segmentation": self.model.segmentation(output).argmax(dim=1).cpu()}

    def extra_preview(self, output: Any, batch: dict[str, Tensor], index: int) -> dict[str, Tensor]:
        return {"pred_labels": self.model.segmentation(output)[index].argmax(dim=0), "labels": batch["labels"][index]}
