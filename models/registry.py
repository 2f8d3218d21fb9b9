"""Model registry (timm style): ``create_model(name, **kwargs)``, ``from_official(name, state_dict)``.

Every registered network follows one small protocol so training, evaluation and calibration can use
any of them without special cases:

* ``model.prepare_inputs(y, op) -> dict``: the forward keyword arguments built from a measurement
  ``y`` (B, H, W + step*(L-1)) and a :class:`cassi.CassiOperator` (the paper's input and mask
  settings, made by the operator, never re-implemented here);
* ``model(**inputs)``: the published forward, argument names as in the official code;
* ``model.reconstruction(output) -> Tensor``: the final cube (B, L, H, W) from the forward's output;
* ``model.size_rule``: the cube sizes H x W it takes (:class:`models.sizes.SizeRule`; ``size_rule.check(H, W, what)``
  raises a ValueError stating the rule), checked by its forward and by ``train.py`` before a run.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its builder and how to load the official code's weights."""

    name: str
    builder: Callable[..., nn.Module]
    official_args: Mapping[str, Any] = field(default_factory=dict)
    map_official_keys: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


_REGISTRY: dict[str, ModelEntry] = {}
# the modules that register the published architectures, imported on the registry's first lookup
ARCHITECTURES = ("bisrnet", "crsdun", "mst", "hsra", "hsra_unfolding", "s2_transformer")


def _registered() -> dict[str, ModelEntry]:
    """The registry, after importing every architecture module (once)."""
    for module in ARCHITECTURES:
        importlib.import_module(f"models.{module}")
    return _REGISTRY


def register_model(name: str, *, official_args: Mapping[str, Any] | None = None,
                   map_official_keys: Callable[[dict], dict] | None = None) -> Callable:
    """Decorator registering a builder (class or function) under ``name``.

    ``official_args`` are the constructor arguments of the official fixture build;
    ``map_official_keys`` renames an official state dict to this project's names (identity if None).
    """
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, dict(official_args or {}), map_official_keys)
        return builder
    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_registered())


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; a clear error lists the known names."""
    try:
        return _registered()[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(list_models())}") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with constructor keyword arguments ``kwargs``.

    Arguments the architecture cannot be built with (an unknown name, ``dim=0``, a size that does not
    divide) are a ``ValueError`` naming the model and the arguments.
    """
    entry = get_entry(name)
    try:
        return entry.builder(**kwargs)
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as err:
        raise ValueError(f"cannot build model '{name}' with {kwargs}: {type(err).__name__}: {err}") from err
