"""Turning a weights source into a ready network: a release folder, a Lightning ``.ckpt`` or a toolbox ``.pth``.

Every loader returns a :class:`LoadedModel` that records what was loaded (registry name, constructor
kwargs, where from, a hash of the weights) so reports and releases can say exactly which network they show.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from cassi.errors import UserError, one_line
from cassi.progress import fit_progress
from models.loading import WeightsMismatch, load_state_dict_checked, load_toolbox_checkpoint, torch_load_weights
from models.registry import create_model, get_entry
from models.release import mask_identity, open_release, same_mask, state_dict_sha256


@dataclass
class LoadedModel:
    """A network in eval mode and its provenance.

    ``mask``: the coded aperture (H, W) the weights come with (a release's ``mask.npy``, a Lightning
    checkpoint's training mask), else None and ``mask_error`` says why.
    ``training``: how a ``train.py`` checkpoint was trained (see :func:`lightning_training`), else None.
    ``source``: ``kind``, ``path`` and, from a Lightning checkpoint, how far it had trained (:func:`training_progress`).
    """

    model: nn.Module
    name: str
    kwargs: dict[str, Any]
    source: dict[str, Any]
    mask: torch.Tensor | None = None
    metrics: dict[str, Any] | None = field(default=None, repr=False)
    mask_error: str | None = None
    training: dict[str, Any] | None = field(default=None, repr=False)

    def require_mask(self) -> torch.Tensor:
        """The coded aperture the weights come with, or a clear error asking for ``--mask FILE``."""
        if self.mask is None:
            why = self.mask_error or f"{self.source.get('path', self.name)} does not record its coded aperture"
            raise UserError(f"{why}: pass --mask FILE (the mask the network was trained with)")
        return self.mask

    def mask_warning(self, mask: torch.Tensor, used: str) -> str | None:
        """A sentence when ``mask`` (H, W), named ``used`` ("the evaluation mask"), is not the coded aperture the
        weights come with (a mask-aware network trained on one code reconstructs another one worse); None when
        it is, or when the weights record none (:func:`other_mask_warning`)."""
        return other_mask_warning(self.mask, mask, used)

    @property
    def weights_sha256(self) -> str:
        return state_dict_sha256(self.model.state_dict())

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity of the network (for results.json and model cards)."""
        return {"name": self.name, "kwargs": self.kwargs, "source": self.source,
                "weights_sha256": self.weights_sha256}


def other_mask_warning(released: torch.Tensor | None, mask: torch.Tensor, used: str) -> str | None:
    """The sentence of :meth:`LoadedModel.mask_warning`: ``mask`` (H, W), named ``used``, is not ``released``, the
    coded aperture the weights come with; None when it is, or when ``released`` is None."""
    if released is None or same_mask(released, mask):
        return None
    return f"{used} ({mask_identity(mask)}) is not the mask released with the network ({mask_identity(released)})"


def _lightning_model_spec(hparams: Mapping[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    """(registry name, kwargs) from ``hyper_parameters['model_name']`` / ``['model_kwargs']`` (training.CassiModule)."""
    model, kwargs = hparams.get("model_name"), hparams.get("model_kwargs")
    if not isinstance(model, str):
        raise ValueError(f"{path}: hyper_parameters do not name the model ('model_name' holding a registry "
                         f"name); found keys {sorted(hparams)}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ValueError(f"{path}: hyper_parameters 'model_kwargs' must be a mapping, got {type(kwargs).__name__}")
    return model, dict(kwargs or {})


def _lightning_mask(raw: Mapping[str, Any], path: Path) -> tuple[torch.Tensor | None, str | None]:
    """The coded aperture the run trained with, rebuilt by the datamodule from its saved hyper-parameters
    (a mask file, or the seeded random mask); (None, None) without datamodule hyper-parameters; (None, why)
    when the mask cannot be rebuilt (its file has moved): the caller decides whether it needs the mask."""
    hparams = raw.get("datamodule_hyper_parameters")
    if not isinstance(hparams, Mapping):
        return None, None
    from data.datamodule import CassiDataModule

    try:
        datamodule = CassiDataModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
        return torch.from_numpy(datamodule.training_mask()), None
    except (OSError, TypeError, ValueError) as err:
        return None, (f"{path}: cannot rebuild the training mask from datamodule_hyper_parameters "
                      f"({one_line(err)})")


def _plain(value: Any) -> Any:
    """JSON-ready copy: tensors become numbers, tuples lists."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def training_progress(raw: Mapping[str, Any]) -> dict[str, int | None]:
    """How far training had run when a Lightning checkpoint was saved (:func:`cassi.progress.fit_progress` of its
    ``loops.fit_loop`` and ``global_step``)."""
    return fit_progress((raw.get("loops") or {}).get("fit_loop"), raw.get("global_step"))


def lightning_training(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What a ``train.py`` checkpoint records about its training: the module class and hyper-parameters (loss,
    optimiser, schedule, instrument), the datamodule's (data source, crop, batch, held-out scenes), the completed
    epochs and steps (:func:`training_progress`), the validation score of these very weights and the run's best
    (``ModelCheckpoint`` state: ``monitor``, ``score``, ``best``), every metric of the run's last validation by
    name and the global step it validated (``metrics``, ``metrics_step``; absent from checkpoints written before),
    the held-out scene names, the status of the instrument's calibration (an operator file's; None without one or
    in checkpoints written before), what the operator file's instrument was (``operator_file``: its path and
    sha256, the mismatch estimate and its units, the forward model N, K, its mask's shape and sha256; see
    ``training.simulation.operator_file_record``; None without one or in checkpoints written before) and the W&B
    run id."""
    hparams = dict(raw.get("hyper_parameters") or {})
    data = dict(raw.get("datamodule_hyper_parameters") or {})
    validation: dict[str, Any] = {"scenes": _plain(raw.get("validation_scenes"))}
    for key, state in (raw.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, Mapping) and state.get("monitor"):
            validation.update(monitor=state["monitor"], score=_plain(state.get("current_score")),
                              best=_plain(state.get("best_model_score")))
            break
    last = raw.get("last_validation")
    if isinstance(last, Mapping):                    # absent in checkpoints written before train.py kept it
        validation.update(metrics=_plain(last.get("metrics")), metrics_step=last.get("global_step"))
    return {"module": hparams.get("_class_path"),
            "hyper_parameters": _plain({k: v for k, v in hparams.items() if not k.startswith("_")}),
            "data": _plain({k: v for k, v in data.items() if not k.startswith("_")}),
            **training_progress(raw), "validation": validation,
            "operator_calibration": _plain(raw.get("operator_calibration")),
            "operator_file": _plain(raw.get("operator_file")),
            "wandb_run_id": (raw.get("wandb") or {}).get("run_id")}


def _strip_prefix(state: Mapping[str, torch.Tensor], wanted: set[str], path: Path) -> dict[str, torch.Tensor]:
    """The sub-dict of ``state`` under the one prefix (e.g. ``model.``) whose keys are exactly ``wanted``."""
    anchor = min(wanted)
    prefixes = {key[: len(key) - len(anchor)] for key in state if key.endswith(anchor)}
    matches = []
    for prefix in sorted(prefixes):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if set(sub) == wanted:
            matches.append((prefix, sub))
    if len(matches) == 1:
        return matches[0][1]
    if not matches:
        raise ValueError(f"{path}: no prefix of the checkpoint's state_dict holds exactly the network's "
                         f"{len(wanted)} tensors (e.g. '{anchor}'); is this checkpoint for that model?")
    names = [prefix or "(none)" for prefix, _ in matches]
    preferred = [sub for prefix, sub in matches if prefix == "model."]
    if preferred:
        return preferred[0]
    raise ValueError(f"{path}: several copies of the network's weights under prefixes {names}")


def load_lightning_checkpoint(path: str | Path, name: str | None = None) -> LoadedModel:
    """A network from a Lightning ``.ckpt`` of ``train.py``: model name and kwargs from ``hyper_parameters``,
    weights from the ``state_dict`` entries under the module's prefix (``model.``), the training mask from
    the datamodule's hyper-parameters. ``name``, if given, must agree."""
    path = Path(path)
    raw = torch_load_weights(path)
    if not isinstance(raw, Mapping) or "state_dict" not in raw:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    hparams = raw.get("hyper_parameters")
    if not isinstance(hparams, Mapping):
        raise ValueError(f"{path}: Lightning checkpoint without 'hyper_parameters'; cannot tell which model "
                         "it holds (export it from a toolbox-style .pth with --model instead)")
    found, kwargs = _lightning_model_spec(hparams, path)
    if name is not None and name != found:
        raise ValueError(f"{path}: checkpoint holds model '{found}', but '{name}' was requested")
    get_entry(found)
    model = create_model(found, **kwargs)
    state = _strip_prefix(raw["state_dict"], set(model.state_dict()), path)
    load_state_dict_checked(model, state, source=str(path))
    source = {"kind": "lightning", "path": str(path), **training_progress(raw)}
    mask, mask_error = _lightning_mask(raw, path)
    return LoadedModel(model.eval(), found, kwargs, source, mask, mask_error=mask_error,
                       training=lightning_training(raw))


def lightning_training_mask(checkpoint: Mapping[str, Any], path: str | Path) -> torch.Tensor | None:
    """The coded aperture (H, W) a ``train.py`` ``.ckpt`` was trained with, rebuilt from the datamodule
    hyper-parameters of ``checkpoint`` (the file ``path``, already loaded: memory-mapped will do) as
    :func:`load_lightning_checkpoint` does, without building the network; None when the checkpoint records none or
    it cannot be rebuilt (its mask file has moved)."""
    return _lightning_mask(checkpoint, Path(path))[0]


def load_toolbox(path: str | Path, name: str) -> LoadedModel:
    """A network from an official toolbox ``.pth`` (built with the registry's official arguments: a ``.pth`` does
    not record its own, so weights of another build are a :class:`models.loading.WeightsMismatch` saying so)."""
    kwargs = dict(get_entry(name).official_args)
    try:
        model = load_toolbox_checkpoint(name, path)
    except WeightsMismatch as err:
        raise WeightsMismatch(f"{err}\n  a .pth is read into {name} built with the registry's official arguments "
                              f"{kwargs} (a .pth does not record its own): weights of another build load from a "
                              "train.py .ckpt or a release folder, which record theirs") from err
    return LoadedModel(model.eval(), name, kwargs, {"kind": "toolbox", "path": str(path)})


def load_release_model(path: str | Path, name: str | None = None) -> LoadedModel:
    """A verified release folder (see :mod:`models.release`); ``name``, if given, must agree."""
    release = open_release(path)
    found = release.config["model"]["name"]
    if name is not None and name != found:
        raise ValueError(f"{path}: release holds model '{found}', but '{name}' was requested")
    return LoadedModel(release.model, found, dict(release.config["model"].get("kwargs", {})),
                       {"kind": "release", "path": str(path)}, release.mask, release.metrics,
                       training=release.config.get("training"))


def recorded_model_name(path: str | Path) -> str | None:
    """The registry name of the network that the weights at ``path`` record (a release folder's config.json, a
    ``train.py`` ``.ckpt``'s hyper-parameters); None for a toolbox ``.pth`` (it does not say) or what cannot be
    read as either."""
    path = Path(path)
    try:
        if path.is_dir():
            return open_release(path).config["model"]["name"]
        if path.suffix.lower() == ".ckpt" and path.is_file():
            hparams = torch_load_weights(path).get("hyper_parameters")
            return _lightning_model_spec(hparams, path)[0] if isinstance(hparams, Mapping) else None
    except (OSError, ValueError, AttributeError):       # ReleaseError is a ValueError; a .ckpt not a mapping
        return None
    return None


def load_weights(path: str | Path, name: str | None = None) -> LoadedModel:
    """Dispatch on the source: a folder is a release, ``.ckpt`` is Lightning, ``.pth`` / ``.pt`` is toolbox."""
    path = Path(path)
    if path.is_dir():
        return load_release_model(path, name)
    if not path.is_file():
        raise FileNotFoundError(f"no release folder or checkpoint file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".ckpt":
        return load_lightning_checkpoint(path, name)
    if suffix in (".pth", ".pt"):
        if name is None:
            raise ValueError(f"{path}: a toolbox checkpoint does not say which network it is; pass --model NAME")
        return load_toolbox(path, name)
    raise ValueError(f"{path}: unknown checkpoint type '{suffix}' (expected a release folder, .ckpt or .pth)")
