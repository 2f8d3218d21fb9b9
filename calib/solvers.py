"""The inner solvers a calibration can run: GAP-TV or any registered mask-aware network, frozen.

A solver maps a measurement batch (B, H, W + step*(L-1)) and a :class:`cassi.CassiOperator` to a
cube (B, L, H, W). ``calibrate(..., solver=S)`` ranks candidates and takes gradients through S
(:mod:`calib.solver_score`); ``solver="heldout"`` is the held-out CG criterion of
:mod:`calib.score`, which reconstructs with its own regularised solve (the before / after check then
uses GAP-TV). Every problem with a solver (unknown name, missing or foreign checkpoint, a network
that takes no mask, a size outside its ``size_rule``) is a one-line :class:`cassi.errors.UserError` raised
before any calibration work.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from cassi.errors import UserError, one_line
from cassi.gap_tv import gap_tv
from cassi.operator import CassiOperator
from models.registry import forward_inputs

if TYPE_CHECKING:
    from models.checkpoints import LoadedModel

Solver = Callable[[Tensor, CassiOperator], Tensor]
HELD_OUT = "heldout"
GAP_TV = "gap_tv"


def solver_names() -> list[str]:
    """``heldout``, ``gap_tv`` and the registered network names that can be inner solvers: all but the
    measurement-only ``*_real`` models, which take no mask (refused when loaded)."""
    from models import list_models

    return [HELD_OUT, GAP_TV, *(name for name in list_models() if not name.endswith("_real"))]


def mask_aware_network(name: str) -> str:
    """What to use instead of the measurement-only network ``name``: "a mask-aware network (e.g. mst_s)" naming
    ``name`` without ``_real`` only when that is a registered mask-aware network (a network of one's own is not
    offered back as its own alternative)."""
    from models.registry import create_model, get_entry, list_models

    mask_aware = name.removesuffix("_real")
    if mask_aware != name and mask_aware in list_models():
        try:
            if getattr(create_model(mask_aware, **get_entry(mask_aware).official_args), "mask_aware", True):
                return f"a mask-aware network (e.g. {mask_aware})"
        except ValueError:                                    # a build that fails is no suggestion
            pass
    return "a mask-aware network (one that takes the coded mask: README, 'Adding your own model')"


def gap_tv_solver(iterations: int = 50, tv_weight: float = 0.1) -> Solver:
    """Accelerated GAP-TV with the project's defaults."""
    def solve(y: Tensor, op: CassiOperator) -> Tensor:
        with torch.no_grad():
            return gap_tv(y, op, iterations=iterations, tv_weight=tv_weight)
    return solve


def check_solver_name(name: str) -> None:
    """A :class:`cassi.errors.UserError` unless ``name`` is ``heldout``, ``gap_tv`` or a registered network. The
    message lists :func:`solver_names` (not the measurement-only ``*_real`` models, refused as solvers), suggests the
    closest of them, and says how to register a network of one's own."""
    from models.registry import USER_MODULES_ENV, get_entry

    if name in (HELD_OUT, GAP_TV):
        return
    try:
        get_entry(name)
    except KeyError:
        names = solver_names()
        networks = [n for n in names if n not in (HELD_OUT, GAP_TV)]
        close = difflib.get_close_matches(str(name), names, n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown solver {name!r}; expected one of {HELD_OUT}, {GAP_TV}, or a registered mask-aware "
                        f"network: {', '.join(networks)}{guess}; a network of your own: @register_model({name!r}) in "
                        f"a module named by the environment variable {USER_MODULES_ENV} (README, 'Adding your own "
                        "model')") from None


def load_solver(name: str, checkpoint: str | Path | None, device: str | torch.device = "cpu") -> LoadedModel:
    """The registered network ``name`` with what its weights record (:class:`models.checkpoints.LoadedModel`: the
    coded aperture they come with, their source), its network frozen (eval mode, no parameter gradients, on
    ``device``), from a toolbox ``.pth`` / official state dict, a Lightning ``.ckpt`` of ``train.py`` or a release
    folder (:func:`models.checkpoints.load_weights`, which ``eval.py --ckpt`` uses too: a ``.pth`` is read into the
    network built with the registry's official arguments, a ``.ckpt`` or a release with the arguments they record).
    It must take the coded mask as an input."""
    from models.checkpoints import load_weights
    from models.registry import create_model, get_entry

    check_solver_name(name)
    entry = get_entry(name)
    if not getattr(create_model(name, **entry.official_args), "mask_aware", True):   # its defaults may not build
        raise UserError(f"solver {name} does not take the coded mask (a measurement-only network), so the "
                        f"operator cannot reach it; use {mask_aware_network(name)} or gap_tv / heldout")
    if checkpoint is None:
        raise UserError(f"solver {name} needs a checkpoint (--ckpt PATH: a .pth state dict, a train.py .ckpt or a "
                        "release folder)")
    path = Path(checkpoint)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    try:
        loaded = load_weights(path, name)
    except ValueError as err:
        raise UserError(f"{path} is not a {name} checkpoint: {_about_it(one_line(err), path)}") from err
    loaded.model.to(device).eval()
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    return loaded


def _about_it(message: str, path: Path) -> str:
    """A loader's ``message`` about ``path`` with the path said once by the caller: "PATH: detail" -> "detail",
    "PATH is ..." -> "it is ..."; a message that does not start with the path, whole."""
    about = re.fullmatch(rf"{re.escape(str(path))}(?:: (?P<detail>.*)| (?P<predicate>.*))", message, re.DOTALL)
    if about is None:
        return message
    return about["detail"] if about["detail"] is not None else f"it {about['predicate']}"


def load_network(name: str, checkpoint: str | Path | None, device: str | torch.device = "cpu") -> nn.Module:
    """:func:`load_solver`'s frozen network alone."""
    return load_solver(name, checkpoint, device).model


def network_solver(model: nn.Module) -> Solver:
    """A frozen network as a solver (no gradients): ``model.reconstruction(model(**model.prepare_inputs(y, op)))``,
    the inputs checked against the forward (:func:`models.registry.forward_inputs`)."""
    def solve(y: Tensor, op: CassiOperator) -> Tensor:
        with torch.no_grad():
            return model.reconstruction(model(**forward_inputs(model, y, op)))
    return solve


def check_network_inputs(network: nn.Module, name: str, y: Tensor, op: CassiOperator, role: str = "solver") -> None:
    """Refuse, before any work (calibrate.py's search, eval.py's reconstructions), a network that cannot reconstruct
    ``y`` (1, H, Wm) through ``op``: a scene size outside its ``size_rule`` (:mod:`models.sizes`: multiples of 4,
    at most 256 rows, ...), an operator its inputs do not fit (band count, step: ``prepare_inputs``) or inputs its
    forward does not take (:func:`models.registry.forward_inputs`). No forward pass runs: at a real capture's size
    one costs seconds to minutes on a CPU. GAP-TV takes any size and needs no check. ``role``: what the message calls
    the network ("solver mst_s cannot reconstruct a 30x30 scene ...")."""
    try:
        network.size_rule.check(op.height, op.width, "its input")
        forward_inputs(network, y, op)
    except ValueError as err:
        raise UserError(f"{role} {name} cannot reconstruct a {op.height}x{op.width} scene "
                        f"(measurement {tuple(y.shape[-2:])}): {one_line(err)}") from err


def residual(y: Tensor, op: CassiOperator, x: Tensor) -> float:
    """Relative measurement residual ``||y - A x|| / ||y||``."""
    with torch.no_grad():
        return float((y - op(x)).norm() / y.norm().clamp_min(1e-30))
