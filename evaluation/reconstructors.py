"""Reconstruction methods behind one call signature: ``method(y, op) -> cube``.

``y`` is a measurement (B, H, W + step*(L-1)) and ``op`` the :class:`cassi.CassiOperator` the method should
assume (nominal, calibrated or true); the result is the cube (B, L, H, W) as float32 on the CPU.

``uses_mask``: the result depends on the operator's mask and mismatch (False for a measurement-only network,
whose operator fixes the geometry only). ``fits_measurement``: the cube is fitted to ``y`` through the operator
(GAP-TV), so ``op(x)`` is on the scale of ``y``; a network's cube is not (it has the scale it was trained on).
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from calib.solvers import check_network_inputs, mask_aware_network
from cassi import CassiOperator
from cassi.errors import UserError
from cassi.gap_tv import gap_tv
from models.checkpoints import LoadedModel, load_weights
from models.registry import forward_inputs, get_entry, probe_measurement


class Reconstructor(Protocol):
    name: str
    uses_mask: bool
    fits_measurement: bool

    def __call__(self, y: Tensor, op: CassiOperator) -> Tensor: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class GapTV:
    """GAP-TV (:func:`cassi.gap_tv.gap_tv`) with fixed settings."""

    iterations: int = 50
    tv_weight: float = 0.1
    tv_iterations: int = 5
    name: str = "gap_tv"
    uses_mask: ClassVar[bool] = True
    fits_measurement: ClassVar[bool] = True

    def __call__(self, y: Tensor, op: CassiOperator) -> Tensor:
        with torch.no_grad():
            return gap_tv(y, op, self.iterations, self.tv_weight, self.tv_iterations).float().cpu()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": {"iterations": self.iterations, "tv_weight": self.tv_weight,
                                              "tv_iterations": self.tv_iterations}}


class Network:
    """A registered network: ``model.reconstruction(model(**model.prepare_inputs(y, op)))``, the inputs checked against
    the forward (:func:`models.registry.forward_inputs`: a ValueError naming both, not a TypeError in the call)."""

    fits_measurement = False

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu") -> None:
        self.loaded = loaded
        self.name = loaded.name
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self._copies: weakref.WeakKeyDictionary[CassiOperator, CassiOperator] = weakref.WeakKeyDictionary()

    def on_device(self, op: CassiOperator) -> CassiOperator:
        """``op`` on the network's device: ``op`` itself where its mask is there, else a copy made once per operator.
        The caller's operator is never moved (``nn.Module.to`` moves in place, and the caller goes on measuring
        CPU scenes through it)."""
        if op.mask.device == self.device:
            return op
        if op not in self._copies:
            self._copies[op] = copy.deepcopy(op).to(self.device)
        return self._copies[op]

    def __call__(self, y: Tensor, op: CassiOperator) -> Tensor:
        with torch.no_grad():
            inputs = forward_inputs(self.model, y.to(self.device), self.on_device(op))
            return self.model.reconstruction(self.model(**inputs)).float().cpu()

    @property
    def uses_mask(self) -> bool:
        """False for a measurement-only network (``mask_aware = False``, e.g. ``*_real``)."""
        return getattr(self.model, "mask_aware", True)

    def describe(self) -> dict[str, Any]:
        return self.loaded.describe()


def check_uses_mask(method: Reconstructor, what: str) -> None:
    """:class:`UserError` naming ``what`` (the option that asks for it) when ``method`` ignores the operator's
    mask and mismatch: reconstructing through another operator would repeat its nominal reconstruction."""
    if not method.uses_mask:
        raise UserError(f"{what}: {method.name} does not take the coded mask (a measurement-only network; the "
                        "operator fixes only the band count and step), so a reconstruction through another operator "
                        f"would repeat the nominal one; use gap_tv or {mask_aware_network(method.name)}")


def check_reconstructs(method: Reconstructor, mask: Tensor, bands: int, step: int) -> None:
    """:class:`UserError`, before any reconstruction, when the network ``method`` cannot reconstruct scenes of the
    size of ``mask`` (H, W) through an operator of ``bands`` / ``step``: a size outside its ``size_rule``, inputs that
    do not fit its forward (:func:`calib.solvers.check_network_inputs`; no forward pass runs). GAP-TV takes any."""
    if isinstance(method, Network):
        op = CassiOperator(mask, bands, step).to(method.device)
        check_network_inputs(method.model, method.name, probe_measurement(op), op, role="network")


def make_reconstructor(model: str = "gap_tv", ckpt: str | None = None, release: str | None = None,
                       device: str | torch.device = "cpu", gap: dict[str, Any] | None = None) -> Reconstructor:
    """GAP-TV when ``model == "gap_tv"`` and no weights are given; else the network from ``ckpt`` / ``release``.

    A network needs weights: evaluating a randomly initialised model is refused (export one as a release
    if that is really what you want to measure).
    """
    if ckpt and release:
        raise ValueError("give either --ckpt or --release, not both")
    source = release or ckpt
    if source is None:
        if model != "gap_tv":
            get_entry(model)                    # an unknown name is said so first (KeyError naming the known ones)
            raise ValueError(f"model '{model}' needs weights: pass --ckpt PATH or --release DIR")
        return GapTV(**(gap or {}))
    return Network(load_weights(source, None if model == "gap_tv" else model), device)
