"""The KAIST results table: a row per scene (name, the four KAIST metrics, seconds), the mean row, and the
fixed-width text that ``eval.py kaist`` and ``train.py test`` print."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from cassi.metrics import KAIST_METRICS, kaist_metrics

COLUMNS = ("name", *KAIST_METRICS, "seconds")
FORMATS = {"psnr": "{:.2f}", "ssim": "{:.4f}", "sam": "{:.2f}", "ergas": "{:.2f}", "seconds": "{:.2f}"}
HEADERS = {"name": "scene", "psnr": "PSNR (dB)", "ssim": "SSIM", "sam": "SAM (deg)", "ergas": "ERGAS",
           "seconds": "seconds"}


def format_cell(key: str, value: Any) -> str:
    """``value`` of column ``key`` as the tables print it ("-" for a missing or NaN value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return FORMATS[key].format(value) if key in FORMATS else str(value)


def result_row(name: str, pred: Tensor, target: Tensor, seconds: float) -> dict[str, Any]:
    """One row of the table: name, the four metrics of ``pred`` against ``target`` (L, H, W), seconds."""
    # eval.py and train.py hand band-first cubes (a network's (B, L, H, W) output, a dataset's (L, H, W) scene):
    # stating L lets a scene narrower than its band count through kaist_metrics' (H, W, L) refusal
    return {"name": name, **kaist_metrics(pred, target, bands=target.shape[0]), "seconds": seconds}


def mean_row(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every metric and of the seconds over ``rows`` (NaN for an empty list)."""
    keys = (*KAIST_METRICS, "seconds")
    if not rows:
        return {k: math.nan for k in keys}
    return {k: float(torch.tensor([float(r[k]) for r in rows], dtype=torch.float64).mean()) for k in keys}


def table_rows(rows: list[dict[str, Any]], mean: dict[str, Any], missing: list[str] = ()) -> list[list[str]]:
    """Formatted cells: one line per scene, "-" for each scene not reconstructed (``missing``: "NAME (calibration
    failed)"), then the mean (over the scenes reconstructed, counted when some are missing)."""
    lines = [[format_cell(k, row[k]) for k in COLUMNS] for row in rows]
    lines += [[f"{name} (calibration failed)", *["-"] * (len(COLUMNS) - 1)] for name in missing]
    label = f"mean of {len(rows)}/{len(rows) + len(missing)}" if missing else "mean"
    return lines + [[label, *[format_cell(k, mean[k]) for k in COLUMNS[1:]]]]


def text_table(rows: list[dict[str, Any]], mean: dict[str, Any], missing: list[str] = ()) -> str:
    """Fixed-width table for the console (``missing``: as :func:`table_rows`)."""
    cells = [[HEADERS[k] for k in COLUMNS], *table_rows(rows, mean, missing)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in cells)
