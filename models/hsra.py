"""HSRA: the Hierarchical Scale-Reconciling Architecture (Han, ICML poster), as a reconstruction prior.

Built from the poster alone (no public code): a three-level U-Net whose blocks reconcile scales
local -> mid -> global, each tied to one factor of the CASSI model ``A = S o D o M``:

* **MK-PTM** (multi-kernel partial token mixing; local sufficiency, ~ mask modulation M): depthwise
  convolutions of several kernel sizes over a fraction ``r`` of the channels (poster's choice:
  r = 1, kernels {3, 9}).
* **LWIM** (latent window interaction; mid scale, ~ dispersion D): full-resolution queries modulated
  by a latent grid (``pool`` x downsampled) whose tokens attend within windows that span more
  columns than rows, so one window covers the 54-px dispersion footprint of 28 bands (step 2).
* **HM-SSA** (hierarchical multi-scale spectral-spatial attention; global coherence, ~ D o S):
  window attention with window ``w``, then with the expanded window ``2w``, then spectral
  (channel-wise, spatially global) attention.

Poster: "Stage 1 of encoder: MK-PTM, LWIM; other stages of encoder/decoder: HM-SSA", so the
full-resolution encoder level holds MK-PTM blocks followed by LWIM blocks and every other level
(encoder level 2, bottleneck, both decoder levels) holds HM-SSA blocks. Around them: 3x3 embedding,
stride-2 4x4 downsampling convs, 2x2 transposed-conv upsampling with 1x1 skip fusion, 3x3 mapping back
to L bands plus the input (residual). The end-to-end networks (hsra_s/m/l) are mask-aware: the poster
does not say how the mask enters, and concatenating the 3-D mask to the "H" input is our reading.

Tensors inside blocks are channels-last (B, H, W, C); the network maps cubes (B, L, H, W) to cubes.
The pre-norm residuals and MST's feed-forward come from :mod:`models.mst_blocks` (windows: Swin's reshapes).
HSRA's spectral attention is its own (fused qkv, q k^T affinity, one depth-wise positional conv), not MS-MSA.
FLOPs (fvcore, multiply-accumulates / 2**30 as the MST toolbox prints them) scale linearly in the
pixel count because every attention is windowed or spectral.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.mst_blocks import FeedForward, PreNorm, window_merge, window_partition
from models.registry import register_model
from models.sizes import SizeRule

if TYPE_CHECKING:  # the operator is only passed through, never built here
    from cassi.operator import CassiOperator


def _to_channels_first(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _to_channels_last(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


class MultiKernelTokenMixer(nn.Module):
    """MK-PTM token mixer on (B, H, W, C).

    Reading of the poster (ablation rows "MK-PTM, r=0.5", "3x3 only", "r=1, kernels {3, 9}"):
    ``r`` is the fraction of channels that are spatially mixed ("partial" token mixing, the rest
    pass through unchanged) and the mixed channels are split evenly over depthwise convolutions
    with the given kernel sizes; pointwise projections before and after mix the channels.
    """

    def __init__(self, dim: int, kernels: Sequence[int] = (3, 9), ratio: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"MK-PTM ratio must be in (0, 1], got {ratio}")
        mixed = int(round(dim * ratio))
        if mixed < len(kernels):
            raise ValueError(f"MK-PTM mixes {mixed} channels, fewer than its {len(kernels)} kernels")
        base, extra = divmod(mixed, len(kernels))
        self.splits = [base + (i < extra) for i in range(len(kernels))] + [dim - mixed]
        self.project_in = nn.Linear(dim, dim, bias=False)
        self.act = nn.GELU()
        self.depthwise = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
            for c, k in zip(self.splits, kernels))
        self.project_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        groups = _to_channels_first(self.act(self.project_in(x))).split(self.splits, dim=1)
        mixed = [conv(g) for conv, g in zip(self.depthwise, groups)] + [groups[-1]]
        return self.project_out(_to_channels_last(torch.cat(mixed, dim=1)))


class WindowSelfAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping (wh, ww) windows of (B, H, W, C)."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int]) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.window = heads, window
        self.scale = (dim // heads) ** -0.5
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens = window_partition(x, self.window)
        q, k, v = rearrange(self.to_qkv(tokens), "n t (three h d) -> three n h t d",
                            three=3, h=self.heads)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = rearrange(attn @ v, "n h t d -> n t (h d)")
        return window_merge(self.proj(out), self.window, (x.shape[1], x.shape[2]))


class SpectralSelfAttention(nn.Module):
    """Spectral (channel-wise) attention on (B, H, W, C): each head's d x d channel affinity is
    computed over all pixels (spatially global), with a learned temperature, plus a depthwise
    positional term on the values."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(dim, dim)
        self.position = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        qkv = self.to_qkv(x)
        q, k, v = rearrange(qkv, "b x y (three h d) -> three b h d (x y)", three=3, h=self.heads)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1)
        out = rearrange(attn @ v, "b h d (x y) -> b x y (h d)", x=h, y=w)
        values = rearrange(v, "b h d (x y) -> b (h d) x y", x=h, y=w)
        return self.proj(out) + _to_channels_last(self.position(values))


class LatentWindowInteraction(nn.Module):
    """LWIM on (B, H, W, C): mid-scale context from a latent grid modulates full-resolution queries.

    Reading of the poster ("efficient mid-scale latent interaction for dispersion-aware reasoning"):
    a depthwise ``pool`` x ``pool`` stride-``pool`` convolution summarises the features on a latent
    grid; latent tokens attend within ``latent_window`` windows (rows, cols) of that grid -- a
    (pool * rows) x (pool * cols) pixel region, wider than tall so that it covers the dispersion
    footprint -- and the upsampled latent context multiplies a full-resolution query projection.
    """

    def __init__(self, dim: int, heads: int, pool: int = 4,
                 latent_window: tuple[int, int] = (8, 16)) -> None:
        super().__init__()
        self.pool = pool
        self.to_query = nn.Linear(dim, dim, bias=False)
        self.to_latent = nn.Conv2d(dim, dim, pool, stride=pool, groups=dim, bias=False)
        self.latent_norm = nn.LayerNorm(dim)
        self.latent_attention = WindowSelfAttention(dim, heads, latent_window)
        self.to_context = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        latent = _to_channels_last(self.to_latent(_to_channels_first(x)))
        latent = latent + self.latent_attention(self.latent_norm(latent))
        context = F.interpolate(_to_channels_first(latent), scale_factor=self.pool, mode="nearest")
        return self.proj(self.to_query(x) * self.to_context(_to_channels_last(context)))


def pre_norm_residual(dim: int, fn: nn.Module) -> PreNorm:
    """``x + fn(LayerNorm(x))`` on channels-last features."""
    return PreNorm(dim, fn, residual=True)


def mkptm_block(dim: int, ffn_mult: int, kernels: Sequence[int], ratio: float) -> nn.Sequential:
    """Local block: MK-PTM token mixer, then feed-forward."""
    return nn.Sequential(pre_norm_residual(dim, MultiKernelTokenMixer(dim, kernels, ratio)),
                         pre_norm_residual(dim, FeedForward(dim, ffn_mult)))


def lwim_block(dim: int, heads: int, ffn_mult: int, pool: int,
               latent_window: tuple[int, int]) -> nn.Sequential:
    """Mid-scale block: LWIM, then feed-forward."""
    return nn.Sequential(pre_norm_residual(dim, LatentWindowInteraction(dim, heads, pool, latent_window)),
                         pre_norm_residual(dim, FeedForward(dim, ffn_mult)))


def hmssa_block(dim: int, heads: int, ffn_mult: int, window: int) -> nn.Sequential:
    """Global-coherence block: window attention (w), expanded window attention (2w), spectral
    attention, feed-forward -- the attention granularity grows from sub-layer to sub-layer.

    Reading: the poster's "expanding windows" and the ablation row "w/o large-window SA (2w)" are
    taken as two successive window attentions of size w and 2w; the spectral attention (whose
    affinity spans the whole image) is the last, global, granularity.
    """
    return nn.Sequential(pre_norm_residual(dim, WindowSelfAttention(dim, heads, (window, window))),
                         pre_norm_residual(dim, WindowSelfAttention(dim, heads, (2 * window, 2 * window))),
                         pre_norm_residual(dim, SpectralSelfAttention(dim, heads)),
                         pre_norm_residual(dim, FeedForward(dim, ffn_mult)))


class HSRA(nn.Module):
    """HSRA reconstruction network: cube estimate (B, L, H, W) -> refined cube (B, L, H, W).

    Args:
        bands: spectral bands L.
        dim: channels at full resolution (doubled at each of the two downsamplings).
        local_blocks, mid_blocks: MK-PTM and LWIM blocks of encoder level 1 (full resolution).
        blocks: HM-SSA blocks of (encoder level 2, bottleneck); decoder level 2 mirrors encoder level 2.
        decoder_blocks: HM-SSA blocks of decoder level 1 (full resolution).
        mask_aware: concatenate the 3-D mask (B, L, H, W) to the input (the end-to-end networks);
            False for the unfolding priors, which see only the current estimate, ``Z = f(X)``.
        window: HM-SSA window w (the expanded window is 2w); kernels, ratio: MK-PTM settings;
        pool, latent_window: LWIM settings; ffn_mult: feed-forward expansion.

    Spatial sizes must be multiples of ``size_rule.multiple`` (rows, cols); nothing is padded.
    """

    def __init__(self, bands: int = 28, dim: int = 28, local_blocks: int = 1, mid_blocks: int = 1,
                 blocks: tuple[int, int] = (1, 1), decoder_blocks: int = 1, mask_aware: bool = True,
                 window: int = 8, kernels: Sequence[int] = (3, 9), ratio: float = 1.0, pool: int = 4,
                 latent_window: tuple[int, int] = (8, 16), ffn_mult: int = 2) -> None:
        super().__init__()
        self.bands, self.mask_aware = bands, mask_aware
        head_dim = dim  # one attention head per ``dim`` channels at every level, as in MST
        down = 4  # two stride-2 downsamplings
        rows, cols = (math.lcm(down * 2 * window, pool * lw) for lw in latent_window)
        self.size_rule = SizeRule((rows, cols), reason="windows and downsampling; this network does not pad")

        self.embedding = nn.Conv2d(2 * bands if mask_aware else bands, dim, 3, padding=1, bias=False)
        self.encoder1 = nn.Sequential(
            *[mkptm_block(dim, ffn_mult, kernels, ratio) for _ in range(local_blocks)],
            *[lwim_block(dim, dim // head_dim, ffn_mult, pool, latent_window) for _ in range(mid_blocks)])
        self.down1 = nn.Conv2d(dim, 2 * dim, 4, stride=2, padding=1, bias=False)
        self.encoder2 = nn.Sequential(
            *[hmssa_block(2 * dim, 2 * dim // head_dim, ffn_mult, window) for _ in range(blocks[0])])
        self.down2 = nn.Conv2d(2 * dim, 4 * dim, 4, stride=2, padding=1, bias=False)
        self.bottleneck = nn.Sequential(
            *[hmssa_block(4 * dim, 4 * dim // head_dim, ffn_mult, window) for _ in range(blocks[1])])
        self.up2 = nn.ConvTranspose2d(4 * dim, 2 * dim, 2, stride=2)
        self.fuse2 = nn.Conv2d(4 * dim, 2 * dim, 1, bias=False)
        self.decoder2 = nn.Sequential(
            *[hmssa_block(2 * dim, 2 * dim // head_dim, ffn_mult, window) for _ in range(blocks[0])])
        self.up1 = nn.ConvTranspose2d(2 * dim, dim, 2, stride=2)
        self.fuse1 = nn.Conv2d(2 * dim, dim, 1, bias=False)
        self.decoder1 = nn.Sequential(
            *[hmssa_block(dim, dim // head_dim, ffn_mult, window) for _ in range(decoder_blocks)])
        self.mapping = nn.Conv2d(dim, bands, 3, padding=1, bias=False)

    def _check_inputs(self, x: Tensor, mask: Tensor | None) -> None:
        if x.dim() != 4 or x.shape[1] != self.bands:
            raise ValueError(f"HSRA input x must be (B, {self.bands}, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        self.size_rule.check(h, w, "HSRA input x")
        if self.mask_aware and mask is None:
            raise ValueError("this HSRA is mask-aware: forward needs mask (B, L, H, W)")
        if not self.mask_aware and mask is not None:
            raise ValueError("this HSRA prior is not mask-aware (mask_aware=False) but got a mask")
        if mask is not None and (mask.dim() != 4 or mask.shape[1:] != x.shape[1:]
                                 or mask.shape[0] not in (1, x.shape[0])):
            raise ValueError(f"HSRA mask must be (B or 1, {self.bands}, {h}, {w}), "
                             f"got shape {tuple(mask.shape)}")

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Refined cube (B, L, H, W) from the estimate ``x`` (and, if mask-aware, the 3-D mask)."""
        self._check_inputs(x, mask)
        features = x if mask is None else torch.cat([x, mask.expand_as(x).to(x.dtype)], dim=1)
        f1 = self.encoder1(_to_channels_last(self.embedding(features)))
        f2 = self.encoder2(_to_channels_last(self.down1(_to_channels_first(f1))))
        f3 = self.bottleneck(_to_channels_last(self.down2(_to_channels_first(f2))))
        d2 = torch.cat([self.up2(_to_channels_first(f3)), _to_channels_first(f2)], dim=1)
        d2 = self.decoder2(_to_channels_last(self.fuse2(d2)))
        d1 = torch.cat([self.up1(_to_channels_first(d2)), _to_channels_first(f1)], dim=1)
        d1 = self.decoder1(_to_channels_last(self.fuse1(d1)))
        return self.mapping(_to_channels_first(d1)) + x

    def prepare_inputs(self, y: Tensor, op: CassiOperator) -> dict[str, Tensor]:
        """End-to-end use: x = the toolbox's "H" input (shift-back of y/L*2), mask = the 3-D mask."""
        inputs = {"x": op.input_setting(y, "H")}
        if self.mask_aware:
            inputs["mask"] = op.mask_setting("Mask", batch=y.shape[0])
        return inputs

    def reconstruction(self, output: Tensor) -> Tensor:
        return output


# Sizes chosen so that the fvcore count at 256 x 256 lands on the poster's GFLOPs (S 9.01, M 13.05,
# L 27.34); the poster gives no block counts or widths. Feed-forward expansion 2 throughout.
HSRA_SIZES: dict[str, dict] = {
    "s": dict(dim=28, local_blocks=1, mid_blocks=1, blocks=(1, 1), decoder_blocks=1, ffn_mult=2),
    "m": dict(dim=28, local_blocks=1, mid_blocks=1, blocks=(2, 2), decoder_blocks=1, ffn_mult=2),
    "l": dict(dim=28, local_blocks=2, mid_blocks=2, blocks=(4, 7), decoder_blocks=2, ffn_mult=2),
}


@register_model("hsra_s")
def hsra_s(**kwargs) -> HSRA:
    """HSRA-S, end-to-end (mask-aware): ~9.2 GFLOPs at 256 x 256 (poster 9.01)."""
    return HSRA(**{**HSRA_SIZES["s"], **kwargs})


@register_model("hsra_m")
def hsra_m(**kwargs) -> HSRA:
    """HSRA-M, end-to-end (mask-aware): ~13.1 GFLOPs at 256 x 256 (poster 13.05)."""
    return HSRA(**{**HSRA_SIZES["m"], **kwargs})


@register_model("hsra_l")
def hsra_l(**kwargs) -> HSRA:
    """HSRA-L, end-to-end (mask-aware): ~27.0 GFLOPs at 256 x 256 (poster 27.34)."""
    return HSRA(**{**HSRA_SIZES["l"], **kwargs})
