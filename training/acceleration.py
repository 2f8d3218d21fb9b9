"""GPU switches of the training module: activation checkpointing, channels-last, ``torch.compile``, and a clear
error when the requested accelerator is not there.

Activation checkpointing (:func:`enable_activation_checkpointing`) is one switch for every network:

* a network with its own per-block switch (S²-Transformer's ``use_checkpoint``) gets that switch turned on;
* any other network gets its blocks wrapped: walking down from the network through ``nn.ModuleList`` /
  ``nn.Sequential`` containers, every module that has sub-modules (MST's MSABs, HSRA's residual blocks, an
  unfolding stage's prior, CRSDUN's stage modules) recomputes its forward in the backward pass instead of storing
  its activations (``torch.utils.checkpoint``, non-reentrant, RNG state preserved, so dropout and stochastic depth
  draw the same numbers). Single layers (a convolution between blocks) are left alone; a lone block that holds
  the whole network (BiSRNet's binary U-Net) is opened up the same way.

Outputs and gradients are the same as without it (tested for every family). BatchNorm running statistics are
restored after the recomputation, so they are updated once per step, as without checkpointing.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

ACCELERATORS_NEEDING_CUDA = ("gpu", "cuda")
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def check_accelerator(accelerator: Any, devices: Any) -> None:
    """One-line error when ``--trainer.accelerator`` asks for hardware this machine does not have."""
    if not isinstance(accelerator, str):
        return
    name = accelerator.lower()
    if name in ACCELERATORS_NEEDING_CUDA:
        if not torch.cuda.is_available():
            raise ValueError(f"--trainer.accelerator {accelerator}: no CUDA GPU is visible here (torch "
                             f"{torch.__version__}, torch.cuda.is_available() is False); use --trainer.accelerator "
                             "cpu, or install a CUDA build of PyTorch on a machine with a GPU")
        if isinstance(devices, int) and devices > torch.cuda.device_count():
            raise ValueError(f"--trainer.devices {devices}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--trainer.accelerator {accelerator}: Apple MPS is not available on this machine; use "
                         "--trainer.accelerator cpu")
    elif name == "tpu":
        raise ValueError("--trainer.accelerator tpu: this project is not set up for TPUs; use gpu or cpu")


def native_checkpoint_switches(model: nn.Module) -> list[str]:
    """Names of the sub-modules with their own ``use_checkpoint`` switch (S²-Transformer's stages)."""
    return [name for name, module in model.named_modules() if isinstance(getattr(module, "use_checkpoint", None), bool)]


def _blocks_below(module: nn.Module, prefix: str) -> list[str]:
    blocks: list[str] = []
    for name, child in module.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            blocks += _blocks_below(child, f"{prefix}{name}.")
        elif next(child.children(), None) is not None:
            blocks.append(f"{prefix}{name}")
    return blocks


def checkpoint_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks that generic checkpointing wraps (see the module docstring). A lone block holding the
    whole network (BiSRNet's U-Net) is opened up: recomputing everything at once would save no peak memory."""
    blocks = _blocks_below(model, "")
    while len(blocks) == 1:
        inner = _blocks_below(model.get_submodule(blocks[0]), f"{blocks[0]}.")
        if not inner:
            break
        blocks = inner
    return blocks


@contextmanager
def _batchnorm_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of ``module``'s BatchNorm layers on exit (the recomputation's update)."""
    saved = [(norm, {k: v.clone() for k, v in norm.named_buffers(recurse=False)})
             for norm in module.modules() if isinstance(norm, BATCH_NORMS)]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in saved:
                for name, value in buffers.items():
                    getattr(norm, name).copy_(value)


def _checkpointed(module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    has_batchnorm = any(isinstance(m, BATCH_NORMS) for m in module.modules())

    def contexts() -> tuple[Any, Any]:
        return nullcontext(), _batchnorm_statistics_kept(module)

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        if has_batchnorm:
            return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def enable_activation_checkpointing(model: nn.Module) -> list[str]:
    """Turn activation checkpointing on for ``model`` (in place); returns the names of the switched modules."""
    native = native_checkpoint_switches(model)
    if native:
        for name in native:
            model.get_submodule(name).use_checkpoint = True
        return native
    blocks = checkpoint_blocks(model)
    for name in blocks:
        block = model.get_submodule(name)
        block.forward = _checkpointed(block, block.forward)
    return blocks


def to_channels_last(value: Any) -> Any:
    """4-D tensors in channels-last memory layout (other values unchanged)."""
    if isinstance(value, torch.Tensor) and value.dim() == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value
