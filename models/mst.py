"""MST: Mask-guided Spectral-wise Transformer (Cai et al., CVPR 2022).

Re-implementation of the official code (caiyuanhao1998/MST,
``simulation/test_code/architecture/MST.py`` at commit 9ff03b93); parameter names are identical, so
official state dicts load without a key mapping. A U-shaped network of MSABs (mask-guided spectral-wise
multi-head self-attention + depth-wise feed-forward, from :mod:`models.mst_blocks`, here with MST's mask
guidance); the attention runs across channels (a d x d map per head), so its cost is linear in the number of
pixels.

Sizes (``create_model`` names, all ``dim=28, stage=2``): ``mst_s`` num_blocks [2, 2, 2] (0.92 M params),
``mst_m`` [2, 4, 4] (1.49 M), ``mst_l`` [4, 7, 5] (2.02 M).

Official behaviour kept on purpose, because it changes outputs:

* the mask guidance shifts its mask features back with per-band column offsets
  ``int(i * (2 / (256 // rows)**2))`` for channel ``i`` of a feature map with ``rows`` rows: the constant
  256 is hard-coded, so at other input sizes the offsets are not those of the real dispersion
  (64 x 64 input: offsets 0..3 instead of 0..54). Inputs taller than 256 px are rejected, the official
  code divides by zero there;
* only the first batch element of the mask is used, for every sample (the official ``mask_attn[0]``);
  ``prepare_inputs`` therefore refuses an operator with different per-sample masks.

Deviations: ``mask`` is required (the official default builds a 256 x 310 zero mask on CUDA); the mask
feature shift-back keeps the input's width (the official keeps ``rows`` columns, which only runs for square
inputs, where both agree); nothing is written in place.

``mst_s_real`` / ``mst_m_real`` / ``mst_l_real``: the real-data variant used on the 660 x 660 captures
(``real/test_code/architecture/MST.py`` at commit 91da6704, built by the same official ``model_generator`` names). It takes the
2-D measurement (B, H, W + 54) instead of the ``H`` cube, shifts it back (step 2, 28 bands) and mixes the
bands with a 3x3 convolution ``fution``; it has no mask guidance at all (no ``mm`` modules, no mask
down-sampling convolutions), so it needs no 256 constant and accepts any size divisible by 4. The
official real test rescales each capture to a maximum of 0.8 and official real training feeds y / 28 * 2
* 1.2 with shot noise; ``prepare_inputs`` gives the toolbox ``Y`` setting (y / 28 * 2) and leaves the
brightness convention to the data pipeline. (A mask-guided real variant in ``real/train_code``, with
``conv_mask`` and mask down-sampling weights, is not provided: the official real test code cannot run it;
its checkpoints fail strict loading with a list of those extra keys.)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cassi.shifts import shift_back
from models.mst_blocks import FeedForward, PreNorm, SpectralMSA
from models.registry import register_model
from models.sizes import SizeRule

BANDS = 28
"""Spectral bands the official networks are built for (input and output channels)."""

OFFICIAL_SHIFT_ROWS = 256
"""Image height hard-coded in the official mask-feature shift-back (see :func:`mask_shift_offsets`)."""


def mask_shift_offsets(channels: int, rows: int) -> list[int]:
    """Official per-channel column offsets of the mask-feature shift-back at a feature map of ``rows`` rows.

    ``int(i * step)`` with ``step = 2 / (256 // rows)**2``: right for the 256 x 256 simulation (offsets
    2i at full size, i/2 and i/8 after each down-sampling), not rescaled for other input sizes.
    """
    down_sample = OFFICIAL_SHIFT_ROWS // rows
    if down_sample == 0:
        raise ValueError(f"MST mask guidance is undefined for feature maps taller than {OFFICIAL_SHIFT_ROWS} "
                         f"rows (official shift-back divides by (256 // rows)**2); got {rows} rows")
    step = 2.0 / float(down_sample * down_sample)
    return [int(step * i) for i in range(channels)]


class MaskGuidedMechanism(nn.Module):
    """Mask attention: (B, C, H, W') shifted mask features -> (B, C, H, width) guidance map."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feat, n_feat, kernel_size=1, bias=True)
        self.conv2 = nn.Conv2d(n_feat, n_feat, kernel_size=1, bias=True)
        self.depth_conv = nn.Conv2d(n_feat, n_feat, kernel_size=5, padding=2, bias=True, groups=n_feat)

    def forward(self, mask_shift: Tensor, width: int) -> Tensor:
        mask_shift = self.conv1(mask_shift)
        attn_map = torch.sigmoid(self.depth_conv(self.conv2(mask_shift)))
        mask_shift = mask_shift * attn_map + mask_shift
        channels, rows = mask_shift.shape[1], mask_shift.shape[2]
        return shift_back(mask_shift, step=mask_shift_offsets(channels, rows), width=width)


class MSAB(nn.Module):
    """``num_blocks`` x (attention + residual, pre-norm feed-forward + residual) on (B, C, H, W)."""

    def __init__(self, dim: int, dim_head: int, heads: int, num_blocks: int, mask_guided: bool = True):
        super().__init__()
        guidance = MaskGuidedMechanism if mask_guided else None
        self.blocks = nn.ModuleList(
            nn.ModuleList([SpectralMSA(dim, dim_head, heads, guidance), PreNorm(dim, FeedForward(dim))])
            for _ in range(num_blocks))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        for attn, ff in self.blocks:
            x = attn(x, mask) + x
            x = ff(x) + x
        return x.permute(0, 3, 1, 2)


class MST(nn.Module):
    """MST U-Net: ``model(x, mask) -> (B, 28, H, W)``.

    ``x`` (B, 28, H, W): input setting ``H`` (shift-back of y / 28 * 2); ``mask`` (B or 1, 28, H, W + 54):
    the shifted 3-D mask ``Phi`` (only ``mask[0]`` is used). H, W divisible by 2**stage, H <= 256
    (:attr:`size_rule`).
    ``mask_guided=False`` drops the mask branch (used by :class:`MSTReal`).
    """

    def __init__(self, dim: int = 28, stage: int = 3, num_blocks: Sequence[int] = (2, 2, 2),
                 mask_guided: bool = True):
        super().__init__()
        if len(num_blocks) != stage + 1:
            raise ValueError(f"num_blocks needs stage + 1 = {stage + 1} entries, got {list(num_blocks)}")
        self.dim = dim
        self.stage = stage
        self.mask_guided = mask_guided
        reason = f"{stage} stride-2 down-samplings" + (
            "; the official mask guidance divides by (256 // rows)**2" if mask_guided else "")
        self.size_rule = SizeRule((2 ** stage, 2 ** stage), max_height=OFFICIAL_SHIFT_ROWS if mask_guided else None,
                                  reason=reason)
        self.embedding = nn.Conv2d(BANDS, dim, 3, 1, 1, bias=False)

        self.encoder_layers = nn.ModuleList()
        dim_stage = dim
        for i in range(stage):
            layer = [MSAB(dim_stage, dim, dim_stage // dim, num_blocks[i], mask_guided),
                     nn.Conv2d(dim_stage, dim_stage * 2, 4, 2, 1, bias=False)]       # features down
            if mask_guided:
                layer.append(nn.Conv2d(dim_stage, dim_stage * 2, 4, 2, 1, bias=False))  # mask down
            self.encoder_layers.append(nn.ModuleList(layer))
            dim_stage *= 2

        self.bottleneck = MSAB(dim_stage, dim, dim_stage // dim, num_blocks[-1], mask_guided)

        self.decoder_layers = nn.ModuleList()
        for i in range(stage):
            self.decoder_layers.append(nn.ModuleList([
                nn.ConvTranspose2d(dim_stage, dim_stage // 2, stride=2, kernel_size=2, padding=0, output_padding=0),
                nn.Conv2d(dim_stage, dim_stage // 2, 1, 1, bias=False),                # skip fusion
                MSAB(dim_stage // 2, dim, dim_stage // 2 // dim, num_blocks[stage - 1 - i], mask_guided),
            ]))
            dim_stage //= 2

        self.mapping = nn.Conv2d(dim, BANDS, 3, 1, 1, bias=False)

    def _check_cube(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != BANDS:
            raise ValueError(f"{type(self).__name__}: x must be (B, {BANDS}, H, W), got {tuple(x.shape)}")
        self.size_rule.check(x.shape[2], x.shape[3], f"{type(self).__name__} input x")

    def _unet(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Embedding, encoder, bottleneck, decoder, mapping + global residual."""
        fea = F.leaky_relu(self.embedding(x), negative_slope=0.1)
        skips, masks = [], []
        for layer in self.encoder_layers:
            fea = layer[0](fea, mask)
            skips.append(fea)
            masks.append(mask)
            fea = layer[1](fea)
            if self.mask_guided:
                mask = layer[2](mask)
        fea = self.bottleneck(fea, mask)
        for i, (up, fusion, msab) in enumerate(self.decoder_layers):
            fea = fusion(torch.cat([up(fea), skips[self.stage - 1 - i]], dim=1))
            fea = msab(fea, masks[self.stage - 1 - i])
        return self.mapping(fea) + x

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        self._check_cube(x)
        if mask.dim() != 4 or mask.shape[1] != self.dim or mask.shape[2] != x.shape[2]:
            raise ValueError(f"MST: mask must be the shifted 3-D mask (B, {self.dim}, {x.shape[2]}, W + 54), "
                             f"got {tuple(mask.shape)}")
        return self._unet(x, mask[:1].to(x.dtype))

    def prepare_inputs(self, y: Tensor, op) -> dict[str, Tensor]:
        """Forward inputs from a measurement ``y`` (B, H, W + 54) and a :class:`cassi.CassiOperator`."""
        if op.bands != BANDS:
            raise ValueError(f"MST is built for {BANDS} bands, the operator has {op.bands}")
        phi = op.mask_setting("Phi", y.shape[0])
        if phi.shape[0] > 1 and not torch.equal(phi, phi[:1].expand_as(phi)):
            raise ValueError("MST uses only the first sample's mask (official behaviour); "
                             "the operator has different per-sample masks")
        return {"x": op.input_setting(y, "H"), "mask": phi}

    @staticmethod
    def reconstruction(output: Tensor) -> Tensor:
        """The cube (B, 28, H, W): the forward's output itself."""
        return output


class MSTReal(MST):
    """Real-data MST (``real/test_code``): ``model(x) -> (B, 28, H, W)`` from the 2-D measurement.

    ``x`` (B, H, W + 54) measurement; band c is columns 2c .. 2c + W - 1, mixed by the 3x3 conv
    ``fution`` before the mask-free U-Net (which adds the mixed cube as global residual).
    ``input_mask`` is accepted and ignored, as in the official forward. H, W divisible by 2**stage (:attr:`size_rule`).
    """

    mask_aware = False
    """The coded mask is not an input (calibration cannot put a candidate operator into it)."""

    def __init__(self, dim: int = 28, stage: int = 3, num_blocks: Sequence[int] = (2, 2, 2)):
        super().__init__(dim, stage, num_blocks, mask_guided=False)
        self.fution = nn.Conv2d(BANDS, BANDS, 3, 1, 1, bias=False)

    def initial_x(self, y: Tensor) -> Tensor:
        """(B, H, W + 54) measurement -> (B, 28, H, W) shifted back and band-mixed by ``fution``."""
        if y.dim() != 3:
            raise ValueError(f"MSTReal: x must be the (B, H, W + {2 * (BANDS - 1)}) measurement, "
                             f"got {tuple(y.shape)}")
        return self.fution(shift_back(y, bands=BANDS, step=2))

    def forward(self, x: Tensor, input_mask: Tensor | None = None) -> Tensor:
        x = self.initial_x(x)
        self._check_cube(x)
        return self._unet(x, None)

    def prepare_inputs(self, y: Tensor, op) -> dict[str, Tensor]:
        """``{"x": y / 28 * 2}`` (toolbox ``Y`` setting); the mask is not an input of this network."""
        if op.bands != BANDS:
            raise ValueError(f"MST is built for {BANDS} bands, the operator has {op.bands}")
        return {"x": op.input_setting(y, "Y")}


def _official(num_blocks: list[int]) -> dict:
    return {"dim": 28, "stage": 2, "num_blocks": num_blocks}


def _build(cls: type[MST], num_blocks: list[int], overrides: dict) -> MST:
    return cls(**{**_official(num_blocks), **overrides})


@register_model("mst_s", official_args=_official([2, 2, 2]))
def mst_s(**kwargs) -> MST:
    """MST-S (0.92 M params)."""
    return _build(MST, [2, 2, 2], kwargs)


@register_model("mst_m", official_args=_official([2, 4, 4]))
def mst_m(**kwargs) -> MST:
    """MST-M (1.49 M params)."""
    return _build(MST, [2, 4, 4], kwargs)


@register_model("mst_l", official_args=_official([4, 7, 5]))
def mst_l(**kwargs) -> MST:
    """MST-L (2.02 M params)."""
    return _build(MST, [4, 7, 5], kwargs)


@register_model("mst_s_real", official_args=_official([2, 2, 2]))
def mst_s_real(**kwargs) -> MSTReal:
    """Real-data MST-S (measurement input, no mask guidance)."""
    return _build(MSTReal, [2, 2, 2], kwargs)


@register_model("mst_m_real", official_args=_official([2, 4, 4]))
def mst_m_real(**kwargs) -> MSTReal:
    """Real-data MST-M (measurement input, no mask guidance)."""
    return _build(MSTReal, [2, 4, 4], kwargs)


@register_model("mst_l_real", official_args=_official([4, 7, 5]))
def mst_l_real(**kwargs) -> MSTReal:
    """Real-data MST-L (measurement input, no mask guidance)."""
    return _build(MSTReal, [4, 7, 5], kwargs)
