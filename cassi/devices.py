"""The ``--device`` option of the command-line tools: a torch device this machine has, or one line saying why not.

torch is imported when the option is checked, not with this module, so the entry points answer ``--help`` at once.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cassi.errors import UserError

if TYPE_CHECKING:
    import torch


def strict_float32(device: "torch.device") -> None:
    """Where ``device`` is a CUDA device, turn TF32 off for cuDNN convolutions and cuBLAS matrix products, so that
    float32 on the GPU is float32; on any other device nothing changes. PyTorch lets cuDNN convolutions round their
    inputs to TF32 by default: on an H200 that moved BiSRNet's mean PSNR on three scenes by +0.04 dB against the
    CPU, and with TF32 off the GPU gave the CPU's 27.29 dB (``benchmarks/bench_devices.py``). Legacy flags, which
    every torch >= 2.1 takes."""
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def check_device(name: str) -> "torch.device":
    """The torch device ``name`` ("cpu", "cuda", "cuda:N"); :class:`UserError` naming it when this machine
    does not have it. A CUDA device also gets :func:`strict_float32`: the tools that report metrics and
    estimates (eval.py, calibrate.py) compute in full float32 wherever they run."""
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
    strict_float32(device)
    return device
