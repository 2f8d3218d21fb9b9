"""Training loss of joint reconstruction + segmentation networks (CRSDUN).

As in the official ``train.py`` of zjhe02/CRSDUN (and the paper, Sec. "Loss & Training"):

    L = sum_k 0.7^(K-1-k) * MSE(x_k, x)  +  1e-4 * sum_k 0.7^(K-1-k) * CE(theta_k, labels)

for stages k = 0 .. K-1 (the last stage has weight 1). MSE and cross-entropy are means over all
elements / labelled pixels (``nn.MSELoss()``, ``nn.CrossEntropyLoss()`` defaults, ignore index -100).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CRSDUNLoss(nn.Module):
    """Deep-supervised joint loss over the ``[x_list, theta_list]`` output of CRSDUN.

    ``forward(output, cube, labels)``: ``cube`` (B, L, H, W) ground-truth spectra, ``labels``
    (B, H, W) integer class map (values in [0, n_class) or ``ignore_index``). Returns the scalar loss;
    :meth:`terms` gives the two stage-weighted sums separately (for logging).
    """

    def __init__(self, seg_weight: float = 1e-4, stage_decay: float = 0.7, ignore_index: int = -100):
        super().__init__()
        self.seg_weight = seg_weight
        self.stage_decay = stage_decay
        self.ignore_index = ignore_index

    def stage_weights(self, stages: int) -> list[float]:
        """Weight of each stage, first to last: ``decay^(K-1-k)``."""
        return [self.stage_decay ** (stages - 1 - k) for k in range(stages)]

    def terms(self, output: Sequence[Sequence[Tensor]], cube: Tensor,
              labels: Tensor) -> tuple[Tensor, Tensor]:
        """(stage-weighted MSE sum, stage-weighted cross-entropy sum)."""
        if len(output) != 2:
            raise ValueError("output must be [x_list, theta_list] as returned by CRSDUN")
        x_list, theta_list = output
        if len(x_list) != len(theta_list) or not x_list:
            raise ValueError(f"output has {len(x_list)} reconstructions and {len(theta_list)} "
                             "segmentation maps; expected the same non-zero number")
        if labels.dtype != torch.long:
            raise ValueError(f"labels must be an int64 class map, got dtype {labels.dtype}")
        for x, theta in zip(x_list, theta_list):
            if x.shape != cube.shape:
                raise ValueError(f"reconstruction shape {tuple(x.shape)} != cube shape {tuple(cube.shape)}")
            if theta.dim() != 4 or theta.shape[:1] + theta.shape[2:] != labels.shape:
                raise ValueError(f"segmentation logits {tuple(theta.shape)} do not match labels "
                                 f"{tuple(labels.shape)} (expected (B, n_class, H, W) and (B, H, W))")
        weights = self.stage_weights(len(x_list))
        rec = sum(wk * F.mse_loss(x, cube) for wk, x in zip(weights, x_list))
        seg = sum(wk * F.cross_entropy(theta, labels, ignore_index=self.ignore_index)
                  for wk, theta in zip(weights, theta_list))
        return rec, seg

    def forward(self, output: Sequence[Sequence[Tensor]], cube: Tensor, labels: Tensor) -> Tensor:
        rec, seg = self.terms(output, cube, labels)
        return rec + self.seg_weight * seg
