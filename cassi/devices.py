"""The ``--device`` option of the command-line tools: a torch device this machine has, or one line saying why not.

torch is imported when the option is checked, not with this module, so the entry points answer ``--help`` at once.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cassi.errors import UserError

if TYPE_CHECKING:
    import torch


def check_device(name: str) -> "torch.device":
    """The torch device ``name`` ("cpu", "cuda", "cuda:N"); :class:`UserError` naming it when this machine
    does not have it."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name; use cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda[:N] are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available on this machine "
                            "(torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
