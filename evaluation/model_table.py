"""``eval.py models``: parameters, fvcore FLOPs and CPU forward time of every registered network.

Each network is built with its official arguments (the fixture build; S2-Transformer with ``img_size``
set to the table's size, as published at 256) or its registered defaults, fed a measurement of a
``size`` x ``size`` random scene of the bands it takes (:func:`models.release.model_bands`, else 28) through
the nominal operator with a random binary mask, and measured:

* FLOPs: fvcore total (one per multiply-accumulate of conv / linear / matmul / einsum) of
  ``model(**prepare_inputs(y, op))``, every output the network computes (CRSDUN's segmentation too); printed in
  G = 1e9 and in G = 2**30 (the MST toolbox's ``my_summary`` divides by 2**30; papers are not consistent about which
  one they print);
* time: median wall-clock seconds of that call over ``repeats`` runs after one warm-up, batch 1, no grad.
"""
from __future__ import annotations

import inspect
import statistics
import time
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from cassi import CassiOperator
from models.flops import PAPER_FIGURES, count_flops, count_parameters
from models.registry import create_model, forward_inputs, get_entry, list_models
from models.release import model_bands


class _Forward(nn.Module):
    """The whole measurement-to-output call as one traceable module (fvcore needs tensor inputs). It returns every
    output: fvcore's trace drops what no output depends on (CRSDUN's segmentation head, when only the cube was
    returned)."""

    def __init__(self, model: nn.Module, op: CassiOperator) -> None:
        super().__init__()
        self.model, self.op = model, op

    def forward(self, y: Tensor) -> Tensor:
        return self.model(**forward_inputs(self.model, y, self.op))


def table_kwargs(name: str, size: int) -> dict[str, Any]:
    """Constructor arguments for the table: official ones where registered, ``img_size`` set to ``size``."""
    entry = get_entry(name)
    kwargs = dict(entry.official_args)
    if "img_size" in inspect.signature(entry.builder).parameters:
        kwargs["img_size"] = size
    return kwargs


def paper_figures(name: str) -> tuple[float | None, float | None]:
    """(params M, GFLOPs) the paper reports, or (None, None) when it reports none for this name."""
    figures = PAPER_FIGURES.get(name) or PAPER_FIGURES.get(name.removeprefix("hsra_"))
    return figures if figures is not None else (None, None)


def measure_model(name: str, size: int = 256, repeats: int = 3, timing: bool = True) -> dict[str, Any]:
    """One row of the table; ``error`` says why a network cannot run at this size."""
    torch.manual_seed(0)
    model = create_model(name, **table_kwargs(name, size)).eval()
    paper_params, paper_gflops = paper_figures(name)
    row: dict[str, Any] = {"name": name, "params": count_parameters(model), "paper_params_m": paper_params,
                           "paper_gflops": paper_gflops, "flops": None, "seconds": None, "error": None}
    generator = torch.Generator().manual_seed(0)
    mask = (torch.rand(size, size, generator=generator) > 0.5).float()
    bands = model_bands(model)              # a network of one's own may take other than 28
    op = CassiOperator(mask) if bands is None else CassiOperator(mask, bands)
    y = op(torch.rand(1, op.bands, size, size, generator=generator))
    call = _Forward(model, op).eval()
    try:
        with torch.no_grad():
            row["flops"] = count_flops(call, {"y": y})     # the trace also warms up the timing
            if timing:
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    call(y)
                    times.append(time.perf_counter() - start)
                row["seconds"] = statistics.median(times)
    except (ValueError, RuntimeError) as err:
        row["error"] = str(err).splitlines()[0]
    return row


def model_table(names: list[str] | None = None, size: int = 256, repeats: int = 3, timing: bool = True,
                verbose: bool = True) -> list[dict[str, Any]]:
    """Rows for ``names`` (default: every registered model), printed as they are measured if ``verbose``."""
    names = names or list_models()
    for name in names:
        get_entry(name)     # an unknown name is the registry's error (the closest known one, how to register one)
    rows = []
    if verbose:
        print(text_header(size))
    for name in tqdm(names, desc="models", unit="model", disable=None if verbose else True):
        rows.append(measure_model(name, size, repeats, timing))
        if verbose:
            tqdm.write(text_line(rows[-1]))
    return rows


COLUMNS = ("model", "params (M)", "paper params (M)", "GFLOPs (1e9)", "GFLOPs (2^30)", "paper GFLOPs @256",
           "CPU s")
WIDTHS = (16, 10, 16, 12, 13, 17, 8)


def _cells(row: dict[str, Any]) -> list[str]:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else fmt.format(value)

    flops = row["flops"]
    return [row["name"], num(row["params"] / 1e6, "{:.3f}"), num(row["paper_params_m"], "{:.2f}"),
            num(None if flops is None else flops / 1e9, "{:.2f}"),
            num(None if flops is None else flops / 2**30, "{:.2f}"), num(row["paper_gflops"], "{:.2f}"),
            num(row["seconds"], "{:.3f}")]


def text_header(size: int) -> str:
    return (f"networks at {size}x{size} (batch 1, {torch.get_num_threads()} CPU threads)\n"
            + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(COLUMNS, WIDTHS))))


def text_line(row: dict[str, Any]) -> str:
    line = "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(_cells(row), WIDTHS)))
    return line + (f"  ({row['error']})" if row["error"] else "")


def markdown(rows: list[dict[str, Any]], size: int) -> str:
    lines = [f"Networks at {size}x{size}, batch 1, {torch.get_num_threads()} CPU threads; FLOPs = fvcore "
             "multiply-accumulates; paper GFLOPs are quoted at 256x256.", "",
             "| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(_cells(r)) + " |" + (f" {r['error']}" if r["error"] else "") for r in rows]
    return "\n".join(lines) + "\n"
