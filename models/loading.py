"""Loading weights: official fixture state dicts and toolbox ``.pth`` checkpoints."""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from models.registry import create_model, get_entry


class KnownCheckpoint(NamedTuple):
    """A published weights file: what it is, and the registered model it belongs to."""

    name: str
    model: str


# sha256 of published weights files. Both BiSRNets have the same keys and shapes, so only the weights tell
# a simulation checkpoint from a real-data one: a known file loads into its own model only (checked before the file
# is read, so that a file torch cannot read as weights is named too).
KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    "a06452f8d4f68f575809afb374ff15ca56956bd12dcbe9472081116a5782fad0": KnownCheckpoint(
        "the official BiSRNet simulation weights (BiSCI simulation/test_code/model_zoo/bisrnet.pth)", "bisrnet"),
    "1cc171b6c541be216adc91450216046358281fdead159498365583fc1080e2ca": KnownCheckpoint(
        "the official BiSRNet real-data weights (BiSCI real/test_code/model_zoo/bisrnet.pth)", "bisrnet_real"),
    "fa36a9c9f0d3ad744d7c3034f57ae3c0858846fea98823122d810f93414a80f0": KnownCheckpoint(
        "the official BiSRNet real-data weights (bisrnet_real_state_dict.pth, the state dict of BiSCI "
        "real/test_code/model_zoo/bisrnet.pth)", "bisrnet_real"),
}

# state_dict_sha256 of the published state dicts (official key names, as the files hold them): the same weights
# given in memory (from_official) or in a file saved otherwise (wrapped, ``module.`` prefixes) load into their own
# model only.
KNOWN_STATE_DICTS: dict[str, KnownCheckpoint] = {
    "306164544e13dce314ee8b941ee3647a7eb5a8c5dc348129d2dcddbf456729de": KnownCheckpoint(
        "the official BiSRNet simulation weights (BiSCI simulation/test_code/model_zoo/bisrnet.pth)", "bisrnet"),
    "419880400a6307300baf9a256dc9109279bd3caceecfadee8d798bb89eebe0fc": KnownCheckpoint(
        "the official BiSRNet real-data weights (the state dict of BiSCI real/test_code/model_zoo/bisrnet.pth)",
        "bisrnet_real"),
}


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The sha256 of a state dict's tensors: every key in sorted order with its tensor's dtype, shape and bytes
    (wherever the tensors are: the same weights on a GPU or a CPU, in any key order, have one digest)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _refuse_another_models(known: KnownCheckpoint | None, name: str, subject: str) -> None:
    """Error when published weights (``known``) are given to another model than their own: "<subject> <known.name>,
    which belong to model <theirs>, not to <name>"."""
    if known is not None and known.model != name:
        raise ValueError(f"{subject} {known.name}, which belong to model {known.model}, not to {name}")


def _is_tabled(name: str, table: Mapping[str, KnownCheckpoint]) -> bool:
    """Whether ``name`` is the model of published weights in ``table`` (other models' weights are never hashed)."""
    return name in {known.model for known in table.values()}


def check_known_checkpoint(name: str, path: Path) -> None:
    """Refuse a published weights file (:data:`KNOWN_CHECKPOINTS`) given to another model than its own; the
    file is hashed only when ``name`` is one of the table's models."""
    if _is_tabled(name, KNOWN_CHECKPOINTS):
        _refuse_another_models(KNOWN_CHECKPOINTS.get(file_sha256(path)), name, f"{path} is")


def check_known_state_dict(name: str, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse published weights (:data:`KNOWN_STATE_DICTS`, by :func:`state_dict_sha256`) given to another model than
    their own, naming ``source`` and both models; hashed only when ``name`` is one of the table's models."""
    if _is_tabled(name, KNOWN_STATE_DICTS):
        _refuse_another_models(KNOWN_STATE_DICTS.get(state_dict_sha256(state_dict)), name, f"{source} holds")


class WeightsMismatch(ValueError):
    """Weights whose tensor names or shapes are not the network's: another model's, or another build's of it."""


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                            source: str = "state dict") -> nn.Module:
    """``load_state_dict(strict=True)`` with an error that lists missing, unexpected and mis-shaped keys
    (:class:`WeightsMismatch`), or the tensors holding NaN / Inf."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    misshaped = sorted(k for k in set(own) & set(state_dict)
                       if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or misshaped:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
        lines = [f"{source} does not match {type(model).__name__} (weights of another model or another size?):"]
        if missing:
            lines.append(f"  missing keys: {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {show(unexpected)}")
        if misshaped:
            lines.append("  shape mismatches: " + show(
                [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in misshaped]))
        raise WeightsMismatch("\n".join(lines))
    bad = sorted(k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise ValueError(f"{source}: {len(bad)} tensor(s) hold NaN or Inf values (e.g. {', '.join(bad[:3])}); "
                         "these weights cannot reconstruct anything")
    model.load_state_dict(dict(state_dict), strict=True)
    return model


def from_official(name: str, state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> nn.Module:
    """The project's ``name`` model built like the official fixture, with official weights loaded strictly, in eval
    mode.

    ``state_dict`` uses the official code's key names; the registered key mapping (if any) renames them. Published
    weights of another model are refused (:func:`check_known_state_dict`).
    """
    return _from_official(name, state_dict, f"the state dict given for model {name}", overrides)


def _from_official(name: str, state_dict: Mapping[str, torch.Tensor], source: str,
                   overrides: Mapping[str, Any]) -> nn.Module:
    """:func:`from_official` of weights read from ``source`` (a file's path, or what the caller gave), which the
    errors name: published weights of another model, weights that do not match the network (not "official weights":
    a toolbox ``.pth`` may be the user's own)."""
    check_known_state_dict(name, state_dict, source)
    entry = get_entry(name)
    model = create_model(name, **{**entry.official_args, **overrides})
    mapped = entry.map_official_keys(dict(state_dict)) if entry.map_official_keys else dict(state_dict)
    return load_state_dict_checked(model, mapped, source=source).eval()


ZIP_MAGIC, PICKLE_PROTOCOL = b"PK\x03\x04", b"\x80"    # how torch.save's files begin: a zip archive, an old pickle
WEIGHTS_ONLY_REFUSED = "cannot read as a weights-only torch checkpoint"   # a torch file, whole, that torch refused


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch could not read ``path``, said of the file: torch's own message for a file that is no checkpoint
    at all is meaningless (a text file: '101', the KeyError of the pickle opcode its first letter happens to be)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        return "the file is empty, not a torch checkpoint"
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTOCOL)):
        return "not a torch checkpoint (torch.save writes a zip archive, or a pickle before torch 1.6)"
    if head.startswith(ZIP_MAGIC) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                return "a zip archive without the data.pkl of torch.save (an .npz?), not a torch checkpoint"
    if isinstance(error, EOFError):
        return "the torch checkpoint ends early (truncated?)"
    return f"{WEIGHTS_ONLY_REFUSED} ({error})"


class PickledObjectsError(ValueError):
    """A torch checkpoint (zip or pre-1.6 pickle format) holding pickled objects other than tensors and plain
    containers, which only ``torch.load(weights_only=False)`` reads (running its pickled code)."""


def torch_load_weights(path: str | Path, mmap: bool = False, label: str | None = None) -> Any:
    """``torch.load`` of ``path`` onto the CPU, weights only (pickled objects other than tensors and plain containers
    are never loaded); a file torch cannot read is a ``ValueError`` naming it (as ``label``, default the path) and
    saying what it is, with torch's error as its ``__cause__``: a :class:`PickledObjectsError` where it is a torch
    checkpoint of other objects. ``mmap`` maps a zip-format file (torch.save's since torch 1.6, the only kind torch
    maps) instead of reading it whole; any other file is read as without."""
    path = Path(path)
    try:
        if mmap:
            with open(path, "rb") as handle:
                mmap = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for corrupt, foreign or pickled-object files
        why = _unreadable(path, err)
        if isinstance(err, pickle.UnpicklingError) and why.startswith(WEIGHTS_ONLY_REFUSED):
            raise PickledObjectsError(f"{label or path}: {why}") from err
        raise ValueError(f"{label or path}: {why}") from err


def unwrap_checkpoint(obj: Any, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """A plain state dict from a toolbox ``.pth``: unwraps ``state_dict``/``model`` and strips ``module.``."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict (expected a mapping of tensor names to tensors)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_toolbox_checkpoint(name: str, path: str | Path, **overrides: Any) -> nn.Module:
    """Build ``name`` and load an MST-toolbox ``.pth`` (with or without wrapper / ``module.`` prefixes), in eval mode;
    published weights of another model are refused (:func:`check_known_checkpoint`, :func:`check_known_state_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    check_known_checkpoint(name, path)
    return _from_official(name, unwrap_checkpoint(torch_load_weights(path), path), str(path), overrides)
