"""Reading ../shared/fixtures (official-code weights and input/output pairs) in tests."""
from __future__ import annotations

import json
from typing import Any

import torch

from conftest import shared_path


def fixture(model: str, file: str) -> Any:
    """``fixtures/<model>/<file>``: parsed JSON or a weights-only torch load; skips when absent."""
    path = shared_path("fixtures", model, file)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return torch.load(path, map_location="cpu", weights_only=True)


def official_state_dict(model: str, perturbed: bool = False) -> dict[str, torch.Tensor]:
    """The fixture weights; ``perturbed`` applies ``state_dict_perturbed_delta.pt`` on top."""
    state = fixture(model, "state_dict.pt")
    if perturbed:
        state.update(fixture(model, "state_dict_perturbed_delta.pt"))
    return state


def flatten(tree: Any) -> list[torch.Tensor]:
    """Tensors of nested lists/tuples, depth first (how the fixtures store multi-output forwards)."""
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in flatten(item)]
    return [tree]
