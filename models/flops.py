"""Model cost: fvcore FLOPs (multiply-accumulates), parameter counts, and the papers' reported figures."""
from __future__ import annotations

import logging
import warnings
from typing import Mapping

import torch
from torch import Tensor, nn

PAPER_FIGURES: dict[str, tuple[float | None, float]] = {
    # name: (params in millions or None where the paper gives none, GFLOPs at 256 x 256)
    "mst_s": (0.93, 12.96),            # MST README / paper table
    "mst_m": (1.50, 18.07),
    "mst_l": (2.03, 28.15),
    "s2_transformer": (1.80, 27.21),   # S2-Transformer paper, Table 3
    "crsdun_3stg": (4.02, 59.49),      # CRSDUN paper, main results table
    "crsdun_5stg": (6.73, 99.07),
    "hsra_s": (None, 9.01),            # HSRA poster, simulation table (GFLOPs only)
    "hsra_m": (None, 13.05),
    "hsra_l": (None, 27.34),
    "dum_3stg": (None, 37.39),         # HSRA-DUM
    "dum_4stg": (None, 49.82),
}
"""Published (params M, GFLOPs) per model; the GFLOPs are fvcore-style multiply-accumulate counts."""


class _KeywordCall(nn.Module):
    """Positional-argument adapter so fvcore's tracer can call ``model(**inputs)``."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args: Tensor):
        return self.model(**dict(zip(self.names, args)))


def count_flops(model: nn.Module, inputs: Mapping[str, Tensor]) -> int:
    """fvcore total for ``model(**inputs)``: one per multiply-accumulate of conv/linear/matmul/einsum.

    Element-wise ops (add, mul, softmax, norms, activations) are not counted, as in the papers' tables;
    fvcore's unsupported-op warnings and tracer warnings are silenced.
    """
    names = list(inputs)
    fvcore_logger = logging.getLogger("fvcore")
    level = fvcore_logger.level
    fvcore_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")          # fvcore import (torch.jit) and tracer warnings
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(_KeywordCall(model, names), tuple(inputs[n] for n in names))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(analysis.total())
    finally:
        fvcore_logger.setLevel(level)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
