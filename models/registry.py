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

:func:`create_model` refuses a network without these (:func:`check_protocol`). Optional: ``model.bands`` (int, the
spectral bands it takes; ``eval.py export`` records it, else the training's), ``model.mask_aware = False`` for a
network that does not take the coded mask (refused as a calibration solver and for reconstructions through
another operator), ``model.segmentation(output)`` and ``model.n_class`` for ``training.JointModule``.

A network of your own is registered with ``@register_model("name")`` in a module of yours, which the registry
imports on its first lookup when the environment variable ``CASSI_MODELS`` names it (comma-separated importable
module names, e.g. ``PYTHONPATH=/tmp/mynet CASSI_MODELS=mynet python train.py ...``): ``train.py``, ``eval.py``
and ``calibrate.py`` then know the name (README, "Adding your own model").
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn

from models.sizes import SizeRule

if TYPE_CHECKING:  # the operator is only passed through
    from cassi.operator import CassiOperator


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
USER_MODULES_ENV = "CASSI_MODELS"   # comma-separated modules of the user's own registered networks


def user_modules() -> list[str]:
    """The module names listed in the environment variable ``CASSI_MODELS`` (empty entries skipped)."""
    return [name.strip() for name in os.environ.get(USER_MODULES_ENV, "").split(",") if name.strip()]


def _import_user_module(name: str) -> None:
    """Import ``name`` from ``CASSI_MODELS``; a module that is not found (or a file path given instead of a module
    name) is a ValueError naming the variable. Errors raised by the module's own code keep their traceback."""
    if name.endswith(".py") or "/" in name or "\\" in name:
        folder, _, file = name.replace("\\", "/").rpartition("/")
        raise ValueError(f"{USER_MODULES_ENV}={os.environ[USER_MODULES_ENV]!r}: {name!r} is a file; name its module "
                         f"and put its folder on the path: PYTHONPATH={folder or '.'} "
                         f"{USER_MODULES_ENV}={file.removesuffix('.py')}")
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
            raise                       # the module was found; something it imports is missing
        raise ValueError(f"{USER_MODULES_ENV}={os.environ[USER_MODULES_ENV]!r}: cannot import module {name!r} "
                         f"(is its folder on PYTHONPATH?)") from None


def _registered() -> dict[str, ModelEntry]:
    """The registry, after importing every architecture module and those named by ``CASSI_MODELS`` (once each)."""
    for module in ARCHITECTURES:
        importlib.import_module(f"models.{module}")
    for module in user_modules():
        _import_user_module(module)
    return _REGISTRY


def register_model(name: str, *, official_args: Mapping[str, Any] | None = None,
                   map_official_keys: Callable[[dict], dict] | None = None) -> Callable:
    """Decorator registering a builder (class or function) under ``name``.

    ``official_args`` are the constructor arguments of the official fixture build;
    ``map_official_keys`` renames an official state dict to this project's names (identity if None).
    """
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            first = _REGISTRY[name].builder
            where = [f"{b.__module__}.{b.__qualname__}" for b in (first, builder)]
            hint = ("one file imported as two modules: run as a script (__main__) and named in CASSI_MODELS?"
                    if first.__qualname__ == builder.__qualname__ else "choose another name for one of them")
            raise ValueError(f"model '{name}' is registered twice, by {where[0]} and by {where[1]} ({hint})")
        _REGISTRY[name] = ModelEntry(name, builder, dict(official_args or {}), map_official_keys)
        return builder
    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_registered())


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; a clear error lists the known names, the closest first when one is close."""
    try:
        return _registered()[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list_models(), n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        raise KeyError(f"unknown model '{name}'{guess}; known models: {', '.join(list_models())} (a network of your "
                       f"own: @register_model('{name}') in a module named by the environment variable "
                       f"{USER_MODULES_ENV}; README, 'Adding your own model')") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with constructor keyword arguments ``kwargs``.

    Arguments the architecture cannot be built with (an unknown name, ``dim=0``, a size that does not
    divide) are a ``ValueError`` naming the model and the arguments; so is a built model that does not follow the
    protocol (:func:`check_protocol`), naming what it lacks.
    """
    entry = get_entry(name)
    try:
        model = entry.builder(**kwargs)
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as err:
        raise ValueError(f"cannot build model '{name}' with {kwargs}: {type(err).__name__}: {err}") from err
    check_protocol(model, name)
    return model


def check_protocol(model: Any, name: str) -> None:
    """ValueError naming what ``model`` (built by the registered ``name``) lacks of the protocol in this module's
    docstring: an ``nn.Module`` with ``prepare_inputs`` and ``reconstruction`` methods and a ``size_rule``."""
    kind = type(model)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model '{name}': its registered builder returned a {kind.__module__}.{kind.__qualname__}, "
                         "not a torch.nn.Module")
    methods = {"prepare_inputs": "prepare_inputs(y, op) -> the forward's keyword arguments",
               "reconstruction": "reconstruction(output) -> the cube (B, L, H, W)"}
    missing = [f"no {method}() method ({purpose})" for method, purpose in methods.items()
               if not callable(getattr(model, method, None))]
    rule = getattr(model, "size_rule", None)
    if not isinstance(rule, SizeRule):
        missing.append("no size_rule (a models.sizes.SizeRule: the sizes H x W it takes; SizeRule() takes any)"
                       if rule is None else f"a size_rule that is a {type(rule).__name__}, not a models.sizes.SizeRule")
    if missing:
        raise ValueError(f"model '{name}' ({kind.__module__}.{kind.__qualname__}) does not follow the model protocol: "
                         f"it has {'; '.join(missing)} (README, 'Adding your own model')")


def probe_measurement(op: CassiOperator) -> torch.Tensor:
    """A measurement (1, H, Wm) of ones on ``op``'s device, to check a network's inputs before any work with
    :func:`forward_inputs` (not zeros: ``bisrnet_real`` rescales each measurement to its maximum)."""
    return torch.ones(1, op.height, op.measurement_width, device=op.mask.device)


def forward_inputs(model: nn.Module, y: torch.Tensor, op: CassiOperator) -> dict[str, Any]:
    """``model.prepare_inputs(y, op)``, checked against the forward's signature: keyword arguments the forward does
    not take, or required ones it is not given, are a ValueError naming both (not a TypeError deep in the call)."""
    inputs = model.prepare_inputs(y, op)
    kind = type(model).__qualname__
    if not isinstance(inputs, Mapping):
        raise ValueError(f"{kind}.prepare_inputs(y, op) returned a {type(inputs).__name__}, not a dict of the "
                         "forward's keyword arguments")
    signature = inspect.signature(model.forward)
    try:
        signature.bind(**inputs)
    except TypeError as err:
        params = signature.parameters
        by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        any_name = any(param.kind == param.VAR_KEYWORD for param in params.values())
        unexpected = [key for key in inputs if not any_name and (key not in params or params[key].kind not in by_name)]
        missing = [key for key, param in params.items()
                   if key not in inputs and param.default is param.empty and param.kind in by_name]
        said = "; ".join(filter(None, [unexpected and f"it takes no {', '.join(unexpected)}",
                                       missing and f"it needs {', '.join(missing)}"])) or str(err)
        raise ValueError(f"{kind}.prepare_inputs(y, op) returns the keyword arguments {', '.join(inputs)}, which do "
                         f"not fit {kind}.forward{signature}: {said} (README, 'Adding your own model')") from None
    return dict(inputs)
