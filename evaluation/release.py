"""``eval.py export``: write a release folder (format in :mod:`models.release`) from any weights source.

The folder is assembled in a private staging folder and renamed into place as one unit
(:class:`cassi.files.OutputFolder`), so a reader never sees a half-written release. ``--results`` (an
``eval.py kaist`` results.json) is embedded as metrics.json only if it was computed with these exact weights
(its ``method.weights_sha256``) and its rows give its means; the model card is :mod:`evaluation.model_card`.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from cassi.files import OutputFolder, save_npy, write_bytes, write_json, write_text
from evaluation.model_card import check_consistency, model_card
from models.checkpoints import LoadedModel
from models.flops import count_parameters
from models.release import (CARD_FILE, CHECKSUM_FILE, CONFIG_FILE, FORMAT, FORMAT_VERSION, MASK_FILE,
                            METRICS_FILE, WEIGHTS_FILE, file_sha256, mask_sha256, model_bands, open_release,
                            registering_module, state_dict_sha256)


def split_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to store (contiguous CPU copies) and aliases {name: stored name} for tensors sharing storage."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        stored[name] = tensor.detach().cpu().contiguous().clone()
    return stored, aliases


def check_results(results_path: str | Path, loaded: LoadedModel) -> dict[str, Any]:
    """A results.json evaluated with exactly these weights, whose rows give its means (else a clear error)."""
    path = Path(results_path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable results.json ({err})") from err
    if not isinstance(results, dict) or not isinstance(results.get("scenes"), list) or "mean" not in results:
        raise ValueError(f"{path}: not an eval.py results.json (needs 'scenes' and 'mean')")
    evaluated = results.get("method", {}).get("weights_sha256")
    if evaluated != loaded.weights_sha256:
        raise ValueError(f"{path}: these results were computed with other weights (weights_sha256 "
                         f"{evaluated}) than the checkpoint being exported ({loaded.weights_sha256})")
    check_consistency(results, str(path))
    return results


def released_bands(loaded: LoadedModel) -> int:
    """The spectral bands the network takes: its own (:func:`models.release.model_bands`), else those of the
    instrument a ``train.py`` checkpoint was trained through; else a ValueError saying what to add."""
    bands = model_bands(loaded.model)
    if bands is None:
        bands = ((loaded.training or {}).get("hyper_parameters") or {}).get("bands")
    if not isinstance(bands, int):
        kind = type(loaded.model)
        raise ValueError(f"cannot tell how many spectral bands '{loaded.name}' is built for: its network "
                         f"{kind.__module__}.{kind.__qualname__} has no int attribute bands (nor nC / in_chans, nor "
                         f"its module a BANDS) and the weights record no train.py training; set self.bands in its "
                         "__init__")
    return bands


def export_release(loaded: LoadedModel, mask: np.ndarray | torch.Tensor, out_dir: str | Path,
                   results_path: str | Path | None = None, step: int = 2, force: bool = False,
                   inputs: Sequence[str | Path | None] = ()) -> Path:
    """Write the release of ``loaded`` with coded aperture ``mask`` (H, W) to ``out_dir``; returns the folder.

    ``out_dir`` is written as one unit (:class:`cassi.files.OutputFolder`): an existing non-empty folder
    is an error unless ``force``, which replaces an earlier release as a whole but never a folder that
    holds one of ``inputs`` (the checkpoint, mask and results files the release is made from).
    """
    out_dir = Path(out_dir)
    folder = OutputFolder(out_dir, CONFIG_FILE, force, [loaded.source.get("path"), results_path, *inputs])
    mask_np = np.ascontiguousarray(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask,
                                   dtype=np.float32)
    if mask_np.ndim != 2:
        raise ValueError(f"the release mask must be (H, W), got shape {mask_np.shape}")
    bands = released_bands(loaded)
    module = registering_module(loaded.name)          # a network of one's own: CASSI_MODELS must name it to load
    state = loaded.model.state_dict()
    stored, aliases = split_shared(state)
    metrics = check_results(results_path, loaded) if results_path is not None else None
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": {"name": loaded.name, "kwargs": loaded.kwargs, **({"module": module} if module else {})},
        "bands": bands, "step": step,
        "mask": {"file": MASK_FILE, "sha256": mask_sha256(mask_np), "shape": list(mask_np.shape)},
        "weights": {"file": WEIGHTS_FILE, "state_sha256": state_dict_sha256(state), "tensors": len(state),
                    "parameters": count_parameters(loaded.model), "aliases": aliases},
        "training": loaded.training,
        "metrics": METRICS_FILE if metrics is not None else None,
        "source": loaded.source,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    with folder as staging:
        write_bytes(staging / WEIGHTS_FILE, safetensors_bytes(stored, metadata={"format": FORMAT}))
        save_npy(staging / MASK_FILE, mask_np)
        write_json(staging / CONFIG_FILE, config)
        if metrics is not None:
            write_json(staging / METRICS_FILE, metrics)
        write_text(staging / CARD_FILE, model_card(config, metrics))
        sums = "".join(f"{file_sha256(p)}  {p.name}\n" for p in sorted(staging.iterdir()))
        write_text(staging / CHECKSUM_FILE, sums)
        open_release(staging)                        # what we wrote must load back
    return out_dir
