"""Reconstruction metrics, batched: inputs (B, L, H, W), outputs (B,) float64 tensors.

KAIST protocol (``kaist_psnr``, ``kaist_ssim``): what the toolbox's MATLAB script
(MST ``simulation/test_code/Quality_Metrics/Cal_quality_assessment.m``) reports: the prediction is clipped to
[0, 1], both cubes are converted with ``im2uint8`` (8-bit, round half up), then
    PSNR = mean over bands of 10 log10(255^2 / MSE_band)                                      (``csnr.m``)
    SSIM = mean over bands of Wang's ``ssim_index``: 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01,
           K2 = 0.03, L = 255, 'valid' filtering (the map is (H-10) x (W-10)), plain mean of the map.
The toolbox's Python training logs (``torch_psnr``: round(x*256) without clipping; ``torch_ssim``: zero-padded
'same' window on unquantised data) are not these numbers. Measured on pseudo_kaist cubes: for a blurred
prediction (errors inside [0, 1]) they differ by ~0.035 dB and ~0.003 SSIM; for additive noise of std 0.02-0.05
(negative values that the MATLAB path clips) by 0.4-1.4 dB and 0.02-0.07 SSIM.
Library versions were tested against these numbers (``tests/test_metrics.py``) and are not used: ``torchmetrics``
SSIM averages a reflect-padded full-size map, so it does not match 'valid' (its map cropped to the valid part
agrees to 1e-10 but took 14x the CPU time of the separable-Gaussian SSIM here on one 256 x 256 x 28 scene);
``torchmetrics`` PSNR per band agrees only to ~1e-6 dB (it converts to decibels with a float32 log(10)), not to
the last bit of ``csnr.m``.

Float metrics (no clipping or quantisation): ``psnr``, ``ssim`` (same window, constants scaled by
``data_range``), ``sam`` (degrees), ``ergas``. A band with zero error has infinite PSNR, as in MATLAB.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from cassi.operator import check_tensor

MATLAB_EPS = 2.220446049250313e-16  # eps('double'), used by the toolbox's SpectAngMapper.m


def _check_pair(pred: Tensor, target: Tensor) -> None:
    check_tensor("pred", pred, "(B, L, H, W)")
    check_tensor("target", target, "(B, L, H, W)")
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"expected pred and target of the same shape (B, L, H, W), got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")


def quantize_8bit(x: Tensor) -> Tensor:
    """MATLAB ``im2uint8`` of data in [0, 1]: clip, then floor(255 x + 0.5); float64 values 0..255."""
    return torch.floor(x.double().clamp(0.0, 1.0) * 255.0 + 0.5)


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean over bands of the per-band PSNR 10 log10(data_range^2 / MSE) in dB, (B,)."""
    _check_pair(pred, target)
    mse = ((pred.double() - target.double()) ** 2).mean(dim=(2, 3))
    return (10.0 * torch.log10(data_range ** 2 / mse)).mean(dim=1)


def _valid_filter_matrix(n: int, window: int, sigma: float, like: Tensor) -> Tensor:
    """(n - window + 1, n) banded matrix M with (M @ v)[i] = sum_k g[k] v[i + k]: 'valid' 1-D Gaussian filtering.

    g is the normalised Gaussian whose outer product is MATLAB ``fspecial('gaussian', window, sigma)``.
    """
    r = torch.arange(window, dtype=like.dtype, device=like.device) - (window - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    m = torch.zeros(n - window + 1, n, dtype=like.dtype, device=like.device)
    for k in range(window):
        m.diagonal(k).fill_(g[k])
    return m


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean over bands of Gaussian-window SSIM with 'valid' filtering (Wang's ``ssim_index``), (B,).

    The separable filter is applied as two banded matrix products (faster than conv2d for one channel).
    """
    _check_pair(pred, target)
    b, bands, h, w = pred.shape
    if h < window or w < window:
        raise ValueError(f"SSIM needs images of at least {window} x {window} px, got {h} x {w}")
    x, y = pred.double(), target.double()
    rows, cols = _valid_filter_matrix(h, window, sigma, x), _valid_filter_matrix(w, window, sigma, x)

    def blur(z: Tensor) -> Tensor:
        return rows @ z @ cols.T

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)


def kaist_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """KAIST-protocol PSNR (dB): 8-bit quantised, clipped to [0, 1] first, per band, averaged, (B,)."""
    return psnr(quantize_8bit(pred), quantize_8bit(target), data_range=255.0)


def kaist_ssim(pred: Tensor, target: Tensor) -> Tensor:
    """KAIST-protocol SSIM: ``ssim_index`` (L = 255) on the 8-bit quantised bands, averaged, (B,)."""
    return ssim(quantize_8bit(pred), quantize_8bit(target), data_range=255.0)


def sam(pred: Tensor, target: Tensor, eps: float = MATLAB_EPS) -> Tensor:
    """Mean spectral angle in degrees, (B,), as the toolbox's ``SpectAngMapper.m``.

    Per pixel: acos(clip((<x, y> + eps) / ((|x| + eps)(|y| + eps)), -1, 1)), computed in float64.
    Zero spectra: two zero spectra give 0 deg; one zero spectrum gives acos(min(1, 1 / (|other| + eps))),
    i.e. close to 90 deg only when the other spectrum has norm >> 1 (8-bit data), so such pixels are not
    meaningful on [0, 1] data. The clip reproduces MATLAB's ``real(acos(.))``.
    """
    _check_pair(pred, target)
    x, y = pred.double(), target.double()
    cos = ((x * y).sum(dim=1) + eps) / ((x.norm(dim=1) + eps) * (y.norm(dim=1) + eps))
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0))).mean(dim=(1, 2))


def ergas(pred: Tensor, target: Tensor, ratio: float = 1.0) -> Tensor:
    """ERGAS = 100 * ratio * sqrt(mean over bands of (RMSE_band / mean(target_band))^2), (B,).

    ``ratio`` is the ratio of pixel sizes (high / low resolution) of the original definition; CASSI has no
    resolution change, and the toolbox (``quality_assessment.m`` as called by MST) uses ratio = 1.
    A band whose target mean is 0 gives inf / nan.
    """
    _check_pair(pred, target)
    x, y = pred.double(), target.double()
    rmse = ((x - y) ** 2).mean(dim=(2, 3)).sqrt()
    return 100.0 * ratio * ((rmse / y.mean(dim=(2, 3))) ** 2).mean(dim=1).sqrt()


KAIST_METRICS = ("psnr", "ssim", "sam", "ergas")
LOWER_IS_BETTER = frozenset({"sam", "ergas"})   # of KAIST_METRICS: errors; PSNR and SSIM are higher-better


def kaist_metrics(pred: Tensor, target: Tensor, *, bands: int | None = None) -> dict[str, float]:
    """The KAIST table's numbers for one reconstruction ``pred`` against ``target``, both (L, H, W):
    PSNR and SSIM of the protocol (``kaist_psnr``, ``kaist_ssim``), SAM (degrees) and ERGAS of the same
    8-bit cubes (what ``quality_assessment.m`` receives). ``eval.py kaist`` and ``train.py test`` both use it.

    The band axis is the first. A cube whose last axis is shorter than the other two looks like (H, W, L) and is
    refused (its numbers would be those of H bands of W x L images); ``bands`` (L) states the layout instead:
    ``pred.shape[0]`` must equal it, which lets through an (L, H, W) cube narrower than its band count."""
    check_tensor("pred", pred, "(L, H, W)")
    check_tensor("target", target, "(L, H, W)")
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} must both "
                         "be (L, H, W) of the same shape")
    shape = tuple(pred.shape)
    if bands is not None and shape[0] != bands:
        raise ValueError(f"prediction and ground truth are {shape}, not (L, H, W) with L = bands = {bands}"
                         + (" (an (H, W, L) cube? permute both, x.permute(2, 0, 1))" if shape[2] == bands else ""))
    if bands is None and shape[2] < min(shape[:2]):
        raise ValueError(f"prediction and ground truth are {shape}: kaist_metrics takes (L, H, W) cubes, and a last "
                         "axis shorter than the other two is the band axis of an (H, W, L) cube: permute both, "
                         "x.permute(2, 0, 1) (an (L, H, W) cube narrower than its band count: pass bands=L)")
    pred, target = pred[None], target[None]
    pred8, target8 = quantize_8bit(pred), quantize_8bit(target)
    return {"psnr": float(kaist_psnr(pred, target)[0]), "ssim": float(kaist_ssim(pred, target)[0]),
            "sam": float(sam(pred8, target8)[0]), "ergas": float(ergas(pred8, target8)[0])}


def __getattr__(name: str) -> Any:
    # ReconstructionMetrics subclasses torchmetrics' Metric; torchmetrics imports torchvision, matplotlib
    # and more, so it is loaded when the class is first asked for, not by the metric functions above
    if name == "ReconstructionMetrics":
        return _reconstruction_metrics()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def _reconstruction_metrics() -> type:
    from torchmetrics import Metric

    class ReconstructionMetrics(Metric):
        """Dataset means of PSNR, SSIM and SAM over all samples seen (sums synced across DDP ranks).

        ``protocol="kaist"``: the three metrics on 8-bit quantised cubes (``kaist_psnr``, ``kaist_ssim``, and SAM
        of the quantised cubes, as ``quality_assessment.m``); ``"float"``: ``psnr``, ``ssim``, ``sam`` on the raw
        values with ``data_range``. ``compute()`` returns {"psnr", "ssim", "sam"} as 0-d float64 tensors.
        ``bands``: the band count L, when known: a batch whose dimension 1 is not L is refused, naming its shape
        (a channels-last (B, H, W, L) batch would otherwise be scored over the wrong axis).
        """

        full_state_update = False

        def __init__(self, protocol: str = "kaist", data_range: float = 1.0, bands: int | None = None, **kwargs):
            super().__init__(**kwargs)
            if protocol not in ("kaist", "float"):
                raise ValueError(f"protocol must be 'kaist' or 'float', got {protocol!r}")
            self.protocol, self.data_range, self.bands = protocol, data_range, bands
            for name in ("psnr_sum", "ssim_sum", "sam_sum", "count"):
                self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

        def update(self, pred: Tensor, target: Tensor) -> None:
            shape = tuple(pred.shape)
            if self.bands is not None and (len(shape) != 4 or shape[1] != self.bands):
                raise ValueError(f"prediction {shape}: expected (B, L, H, W) with L = bands = {self.bands}"
                                 + (" (a (B, H, W, L) batch? permute it, x.permute(0, 3, 1, 2))"
                                    if len(shape) == 4 and shape[3] == self.bands else ""))
            pred, target = pred.detach(), target.detach()
            if self.protocol == "kaist":
                pred, target, data_range = quantize_8bit(pred), quantize_8bit(target), 255.0
            else:
                data_range = self.data_range
            self.psnr_sum += psnr(pred, target, data_range).sum()
            self.ssim_sum += ssim(pred, target, data_range).sum()
            self.sam_sum += sam(pred, target).sum()
            self.count += pred.shape[0]

        def compute(self) -> dict[str, Tensor]:
            n = self.count if self.count > 0 else torch.tensor(math.nan, dtype=torch.float64)
            return {"psnr": self.psnr_sum / n, "ssim": self.ssim_sum / n, "sam": self.sam_sum / n}

    # importable (and picklable) as cassi.metrics.ReconstructionMetrics
    ReconstructionMetrics.__module__, ReconstructionMetrics.__qualname__ = __name__, "ReconstructionMetrics"
    return ReconstructionMetrics
