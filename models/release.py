"""Released checkpoints: a folder that fully describes one trained network, loadable without Lightning.

The Hugging Face model-repository layout (``model.safetensors`` + ``config.json`` + ``README.md`` model card),
written by ``python eval.py export`` (see :mod:`evaluation.release`)::

    config.json           {"format": "cassi-release", "format_version": 2,
                           "model": {"name", "kwargs", "module" (a network of one's own: the module that
                                     registered it, which CASSI_MODELS must name to load it)}, "bands", "step",
                           "mask": {"file", "sha256", "shape"},
                           "weights": {"file", "state_sha256", "tensors", "parameters", "aliases"},
                           "training": {...} | null (recipe, data, validation of a train.py checkpoint),
                           "metrics": "metrics.json" | null,
                           "source": {"kind", "path"} (a train.py checkpoint also "epochs_completed",
                                      "batches_into_epoch", "global_step"; releases before: "epoch", "global_step")}
    model.safetensors     the model's state dict (tensors that share storage are stored once: ``aliases``)
    mask.npy              the coded aperture (H, W) float32 the network was trained and evaluated with
    metrics.json          the evaluation table (``eval.py kaist`` results.json), optional
    README.md             model card (Hugging Face front matter; what was trained, on what, what it scored)
    SHA256SUMS            ``sha256sum`` lines for every file above (``sha256sum -c SHA256SUMS`` checks them)

:func:`open_release` refuses a folder whose files do not match their checksums, whose mask or weights
differ from what ``config.json`` records (hash, shape), whose weights do not fit the configured network
(missing / unexpected / mis-shaped tensors) or whose band count differs from the network's. Loading needs
no network access (``models.load_release(folder)``).
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from models.loading import file_sha256, load_state_dict_checked
from models.registry import ARCHITECTURES, USER_MODULES_ENV, create_model, get_entry

FORMAT = "cassi-release"
FORMAT_VERSION = 2       # 2: Hugging Face file names (version 1 stored weights.safetensors)
CONFIG_FILE, WEIGHTS_FILE, MASK_FILE = "config.json", "model.safetensors", "mask.npy"
METRICS_FILE, CARD_FILE, CHECKSUM_FILE = "metrics.json", "README.md", "SHA256SUMS"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, MASK_FILE)


class ReleaseError(ValueError):
    """A release folder that is incomplete, modified, or inconsistent with its configuration."""


@dataclass
class Release:
    """A verified release: the ready model (eval mode), its configuration, its mask (H, W) and metrics."""

    path: Path
    model: nn.Module
    config: dict[str, Any]
    mask: torch.Tensor
    metrics: dict[str, Any] | None


def registering_module(name: str) -> str | None:
    """The module that registered the network ``name`` when it is not one of this project's (a network of one's own,
    registered through ``CASSI_MODELS``): a release records it, as loading the release needs it; None for the
    project's own."""
    module = get_entry(name).builder.__module__
    return None if module in {f"models.{architecture}" for architecture in ARCHITECTURES} else module


def loading_needs(module: str) -> str:
    """What loading a release of a network registered by ``module`` (:func:`registering_module`) needs, in words."""
    if module == "__main__":
        return f"a module that registers it, named in {USER_MODULES_ENV} (a script registered it: __main__)"
    return f"{USER_MODULES_ENV}={module}, its folder on PYTHONPATH"


# ----------------------------------------------------------------------------------------- hashes
def mask_sha256(mask: np.ndarray | torch.Tensor) -> str:
    """SHA-256 of the mask's values as little-endian float32 in C order (independent of the file format)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return hashlib.sha256(np.ascontiguousarray(mask, dtype="<f4").tobytes()).hexdigest()


def mask_identity(mask: np.ndarray | torch.Tensor) -> str:
    """How messages name a mask: "shape (H, W), sha256 <first 12 hex digits>..." (:func:`mask_sha256`)."""
    return f"shape {tuple(mask.shape)}, sha256 {mask_sha256(mask)[:12]}..."


def same_mask(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> bool:
    """Whether two masks are the same: the same shape and the same values (:func:`mask_sha256`)."""
    return tuple(a.shape) == tuple(b.shape) and mask_sha256(a) == mask_sha256(b)


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted (name, dtype, shape, bytes) of every tensor: identifies a set of weights."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def model_bands(model: nn.Module) -> int | None:
    """Spectral band count the network is built for: ``bands`` / ``nC`` / ``in_chans`` or its module's ``BANDS``."""
    for attribute in ("bands", "nC", "in_chans"):
        value = getattr(model, attribute, None)
        if isinstance(value, int):
            return value
    value = getattr(sys.modules.get(type(model).__module__), "BANDS", None)
    return value if isinstance(value, int) else None


# ---------------------------------------------------------------------------------------- reading
def read_checksums(folder: Path) -> dict[str, str]:
    """{file name: sha256} from ``SHA256SUMS``; a malformed line is an error naming it."""
    path = folder / CHECKSUM_FILE
    if not path.is_file():
        raise ReleaseError(f"{folder}: not a release (no {CHECKSUM_FILE})")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        name = parts[1].lstrip("*").strip() if len(parts) == 2 else ""
        if len(parts) != 2 or len(parts[0]) != 64 or not name or "/" in name or name.startswith("."):
            raise ReleaseError(f"{path}: line {number} is not '<sha256>  <file name>': {line!r}")
        sums[name] = parts[0].lower()
    return sums


def verify_checksums(folder: str | Path) -> dict[str, str]:
    """Check every file listed in ``SHA256SUMS`` (and that the required ones are listed); returns the sums."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f"release folder not found: {folder}")
    sums = read_checksums(folder)
    unlisted = [name for name in REQUIRED_FILES if name not in sums]
    if unlisted:
        raise ReleaseError(f"{folder / CHECKSUM_FILE} does not list {unlisted}: the release is incomplete")
    for name, expected in sums.items():
        path = folder / name
        if not path.is_file():
            raise ReleaseError(f"{path}: listed in {CHECKSUM_FILE} but missing")
        actual = file_sha256(path)
        if actual != expected:
            raise ReleaseError(f"{path}: SHA-256 {actual} does not match {CHECKSUM_FILE} ({expected}); "
                               "the file was modified or corrupted")
    return sums


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReleaseError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ReleaseError(f"{path}: not a {FORMAT} configuration")
    if config.get("format_version") != FORMAT_VERSION:
        raise ReleaseError(f"{path}: format_version {config.get('format_version')!r} is not supported "
                           f"(this code reads version {FORMAT_VERSION}); export the release again from its "
                           "training checkpoint with eval.py export")
    for key, kind in (("model", dict), ("mask", dict), ("weights", dict), ("bands", int), ("step", int)):
        if not isinstance(config.get(key), kind):
            raise ReleaseError(f"{path}: '{key}' must be a {kind.__name__}, got {config.get(key)!r}")
    model = config["model"]
    if not isinstance(model.get("name"), str) or not isinstance(model.get("kwargs", {}), dict):
        raise ReleaseError(f"{path}: 'model' must hold a 'name' string and a 'kwargs' object")
    return config


def _read_mask(folder: Path, config: dict[str, Any]) -> torch.Tensor:
    path = folder / MASK_FILE
    try:
        mask = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ReleaseError(f"{path}: not a readable .npy array ({err})") from err
    expected_shape = tuple(config["mask"].get("shape", ()))
    if mask.ndim != 2 or mask.shape != expected_shape:
        raise ReleaseError(f"{path}: mask has shape {mask.shape}, {CONFIG_FILE} records {expected_shape}")
    if mask_sha256(mask) != config["mask"].get("sha256"):
        raise ReleaseError(f"{path}: mask values do not match the sha256 recorded in {CONFIG_FILE}")
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))


def _read_weights(folder: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    try:
        stored = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ReleaseError(f"{path}: not a readable safetensors file ({err})") from err
    aliases = config["weights"].get("aliases", {})
    missing_targets = sorted({target for target in aliases.values() if target not in stored})
    if missing_targets:
        raise ReleaseError(f"{path}: aliases in {CONFIG_FILE} point to absent tensors {missing_targets}")
    state = dict(stored)
    state.update({alias: stored[target] for alias, target in aliases.items()})
    if state_dict_sha256(state) != config["weights"].get("state_sha256"):
        raise ReleaseError(f"{path}: weights do not match the state_sha256 recorded in {CONFIG_FILE}")
    return state


def open_release(folder: str | Path) -> Release:
    """Verify a release folder and build its model (CPU, eval mode). Raises :class:`ReleaseError`."""
    folder = Path(folder)
    verify_checksums(folder)
    config = _read_config(folder)
    mask = _read_mask(folder, config)
    name, kwargs = config["model"]["name"], config["model"].get("kwargs", {})
    try:
        get_entry(name)
    except KeyError as err:
        module = config["model"].get("module")
        said = (f"model '{name}' was registered by the module '{module}' (a network of one's own), which the registry "
                f"has not imported: loading it needs {loading_needs(module)} (README, 'Adding your own model')"
                if isinstance(module, str) else err.args[0])
        raise ReleaseError(f"{folder / CONFIG_FILE}: {said}") from None
    try:
        model = create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise ReleaseError(f"{folder / CONFIG_FILE}: cannot build '{name}' with kwargs {kwargs} ({err})") from err
    bands = model_bands(model)
    if bands is not None and bands != config["bands"]:
        raise ReleaseError(f"{folder / CONFIG_FILE}: records {config['bands']} bands but '{name}' "
                           f"with these kwargs is built for {bands}")
    state = _read_weights(folder, config)
    try:
        load_state_dict_checked(model, state, source=str(folder / WEIGHTS_FILE))
    except ValueError as err:
        raise ReleaseError(str(err)) from err
    metrics = None
    if config.get("metrics"):
        metrics_path = folder / str(config["metrics"])
        if config["metrics"] not in read_checksums(folder):
            raise ReleaseError(f"{metrics_path}: metrics file is not covered by {CHECKSUM_FILE}")
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ReleaseError(f"{metrics_path}: not a readable JSON file ({err})") from err
        if not isinstance(metrics, dict):
            raise ReleaseError(f"{metrics_path}: expected a JSON object (an eval.py results.json), got "
                               f"{type(metrics).__name__}")
    return Release(folder, model.eval(), config, mask, metrics)


def load_release(folder: str | Path) -> nn.Module:
    """The ready model (CPU, eval mode) of a verified release folder; see :func:`open_release`."""
    return open_release(folder).model
