"""Building blocks of CRSDUN (He et al., CVPR 2026; official code zjhe02/CRSDUN, ``models/CRSDUN.py``).

Every block works on feature maps ``(B, C, H, W)``. Sub-module attribute names follow the official
code so that official state dicts load without renaming. Initialisation follows the official code
too (same calls in the same order), so a model built after ``torch.manual_seed(s)`` has the same
weights as the official one built after the same seed.

Groups:

* pre-norm and feed-forward on maps, shared by every branch (the MST-family blocks of
  :mod:`models.mst_blocks`; windows and relative position indices are Swin's);
* reconstruction branch: spectral window attention (WSSA) + convolutional mixing (CMB, SAB), i.e.
  the SSRB encoder block and the ARB refinement block;
* segmentation branch: a Swin block (window attention with relative position bias, no shift mask);
* cross-aggregation super-token attention (CASTA / CASTAB), the block joining the two branches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.mst_blocks import (FeedForward, PreNorm, WindowAttention, apply_channel_norm, trunc_normal_,
                               window_merge, window_partition)


def _trunc_normal_conv_weights(module: nn.Module, zero_bias: bool) -> None:
    """Official init of the reconstruction blocks: conv weights ~ N(0, 0.02) truncated to [-2, 2]."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            trunc_normal_(m.weight, std=0.02)
            if zero_bias and m.bias is not None:
                nn.init.zeros_(m.bias)


def map_prenorm(dim: int, fn: nn.Module, norm: str = "ln") -> PreNorm:
    """``fn(norm(x))`` on maps (B, C, H, W) (official ``PreNorm``; ``norm`` 'ln', 'bn' or 'gn')."""
    return PreNorm(dim, fn, norm, channels_last=False)


def map_ffn(dim: int) -> FeedForward:
    """MST's feed-forward on maps (B, C, H, W) (official ``FFN``): 1x1 x4, GELU, depth-wise 3x3, GELU, 1x1."""
    return FeedForward(dim, channels_last=False)


class PairPreNorm(nn.Module):
    """``fn(norm1(x1), norm2(x2))`` with two LayerNorms (official ``PreNorm2``, used only with 'ln')."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.fn(apply_channel_norm(self.norm1, x1), apply_channel_norm(self.norm2, x2))


# ---------------------------------------------------------------- reconstruction branch

class MaskEmbedding(nn.Module):
    """``cnn(x) * (1 + mask(mask3d))``: features modulated by the coded mask (official ``Mask_embedding``)."""

    def __init__(self, ch: int):
        super().__init__()
        self.cnn = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.mask = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.cnn(x) * (1 + self.mask(mask))


class WSSA(nn.Module):
    """Window spectral self-attention: in each 8x8 window a C x C attention between channels.

    The softmax scale is ``dim_head ** -0.5`` (the official code passes ``dim_head = bands`` at
    every level); the windows are never shifted in CRSDUN.
    """

    def __init__(self, dim: int, dim_head: int, window_size: int = 8):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.window_size = window_size
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(dim, dim, 1)
        _trunc_normal_conv_weights(self, zero_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        ws = self.window_size
        q, k, v = (rearrange(t, "b c (nh h) (nw w) -> b (nh nw) c (h w)", h=ws, w=ws)
                   for t in self.to_qkv(x).chunk(3, dim=1))
        # einsum as in the official code (fvcore counts einsum and matmul slightly differently)
        attn = torch.einsum("b n i d, b n j d -> b n i j", q * self.scale, k).softmax(dim=-1)  # (B, n, C, C)
        out = torch.einsum("b n i j, b n j d -> b n i d", attn, v)
        out = rearrange(out, "b (nh nw) c (h w) -> b c (nh h) (nw w)", nh=x.shape[2] // ws, h=ws, w=ws)
        return self.to_out(out)


class ERB(nn.Module):
    """Spectral attention residual block: ``x + WSSA(LN x)`` then ``x + FFN(GN x)``."""

    def __init__(self, dim: int, dim_head: int):
        super().__init__()
        self.WSSA = map_prenorm(dim, WSSA(dim, dim_head))
        self.FFN = map_prenorm(dim, map_ffn(dim), "gn")

    def forward(self, x: Tensor) -> Tensor:
        x = self.WSSA(x) + x
        return self.FFN(x) + x


class CMB(nn.Module):
    """Convolutional modulation: ``to_out(dw11x11(pw(x)) * pw(x))``."""

    def __init__(self, dim: int):
        super().__init__()
        self.to_a = nn.Sequential(
            nn.Conv2d(dim, dim, 1, 1, 0, bias=False),
            nn.Conv2d(dim, dim, 11, 1, 5, groups=dim, bias=False),
        )
        self.to_v = nn.Conv2d(dim, dim, 1, 1, 0, bias=False)
        self.to_out = nn.Conv2d(dim, dim, 1, 1, 0)
        _trunc_normal_conv_weights(self, zero_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.to_out(self.to_a(x) * self.to_v(x))


class SAB(nn.Module):
    """Spatial attention: a per-pixel gate (GELU of a 3x3 conv to one channel) times a depthwise sigmoid."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 1, 1, 0, bias=False)
        self.Estimator = nn.Sequential(nn.Conv2d(dim, 1, 3, 1, 1, bias=False), nn.GELU())
        self.SW = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False), nn.Sigmoid())
        self.out = nn.Conv2d(dim, dim, 1, 1, 0)
        _trunc_normal_conv_weights(self, zero_bias=False)

    def forward(self, f: Tensor) -> Tensor:
        f = self.conv(f)
        return self.out(self.SW(f) * self.Estimator(f))


class ARB(nn.Module):
    """Convolutional residual block: ``x + CMB(LN x)`` then ``x + SAB(GN x)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.CMB = map_prenorm(dim, CMB(dim))
        self.SAB = map_prenorm(dim, SAB(dim), "gn")

    def forward(self, x: Tensor) -> Tensor:
        x = self.CMB(x) + x
        return self.SAB(x) + x


class SSRB(nn.Module):
    """Reconstruction encoder block: depthwise 5x5 position conv (residual), ERB, ARB."""

    def __init__(self, dim: int, dim_head: int):
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.SARB = ERB(dim, dim_head)
        self.SRB = ARB(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pos(x) + x
        return self.SRB(self.SARB(x))


# ---------------------------------------------------------------- segmentation branch

class MapWindowAttention(WindowAttention):
    """Window attention with relative position bias on maps (B, C, H, W) (official ``WindowAttention``):
    ``window_size`` x ``window_size`` windows, no mask modulation, no shift mask."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 8):
        super().__init__(dim, window_size, num_heads, mask_eff="omit")

    def forward(self, x: Tensor) -> Tensor:
        tokens = window_partition(x.permute(0, 2, 3, 1), self.window)              # (B * nW, ws*ws, C)
        return window_merge(super().forward(tokens), self.window, x.shape[2:]).permute(0, 3, 1, 2)


class SwinBlock(nn.Module):
    """``num_blocks`` window-attention + FFN residual pairs; odd pairs run on the map rolled by
    ``-shift_size`` (and rolled back), without an attention mask, as in the official code."""

    def __init__(self, dim: int, heads: int, num_blocks: int, shift_size: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList([
            nn.ModuleList([map_prenorm(dim, MapWindowAttention(dim, num_heads=heads)), map_prenorm(dim, map_ffn(dim))])
            for _ in range(num_blocks)])
        self.shift_size = shift_size

    def forward(self, x: Tensor) -> Tensor:
        s = self.shift_size
        for i, (attn, ff) in enumerate(self.blocks):
            shifted = s > 0 and i % 2 == 1
            if shifted:
                x = torch.roll(x, shifts=(-s, -s), dims=(2, 3))
            x = attn(x) + x
            x = ff(x) + x
            if shifted:
                x = torch.roll(x, shifts=(s, s), dims=(2, 3))
        return x


# ---------------------------------------------------------------- cross-aggregation super-token attention

class Unfold(nn.Module):
    """The 3x3 neighbourhood of every position: (B, C, h, w) -> (B, h*w, C, 9), zero padded.

    ``weights`` (9 one-hot 3x3 kernels) is a frozen ``nn.Parameter`` as in the official code, so it is
    part of the state dict and of ``parameters()``.
    """

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        eye = torch.eye(kernel_size ** 2).reshape(kernel_size ** 2, 1, kernel_size, kernel_size)
        self.weights = nn.Parameter(eye, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        patches = F.conv2d(x.reshape(b * c, 1, h, w), self.weights, padding=self.kernel_size // 2)
        return patches.reshape(b, c, self.kernel_size ** 2, h * w).permute(0, 3, 1, 2)


class Fold(nn.Module):
    """Adjoint of :class:`Unfold`: (N, 9, h, w) per-neighbour values -> (N, 1, h, w), summed back."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        eye = torch.eye(kernel_size ** 2).reshape(kernel_size ** 2, 1, kernel_size, kernel_size)
        self.weights = nn.Parameter(eye, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.weights, padding=self.kernel_size // 2)


class SuperTokenAttention(nn.Module):
    """Multi-head self-attention among super-tokens (B, C, h, w) (official ``Attention``).

    The official layout is kept: the qkv channels are grouped per head (q, k, v of head j are
    consecutive), attention is ``softmax_over_keys(k^T q)`` and the output is ``v @ attn``.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, self.num_heads, 3 * c // self.num_heads, h * w).chunk(3, dim=2)
        attn = ((k.transpose(-1, -2) @ q) * self.scale).softmax(dim=-2)         # (B, heads, N, N)
        return self.proj((v @ attn).reshape(b, c, h, w))


class CASTA(nn.Module):
    """Cross-aggregation super-token attention.

    ``pixels`` (B, C, H, W) are grouped into super-tokens of ``stoken_size``^2 pixels whose initial
    features are the average-pooled ``guide`` (the other branch's features). Each pixel is softly
    assigned to the 9 super-tokens around its own (affinity computed without gradient, as in the
    official code, one iteration), super-tokens are re-estimated as affinity-weighted pixel means,
    refined by self-attention and scattered back to the pixels with the same affinities.
    H and W must be multiples of ``stoken_size``.
    """

    def __init__(self, dim: int, stoken_size: int, num_heads: int):
        super().__init__()
        self.stoken_size = stoken_size
        self.scale = dim ** -0.5
        self.unfold = Unfold(3)
        self.fold = Fold(3)
        self.stoken_refine = SuperTokenAttention(dim, num_heads=num_heads)

    def forward(self, pixels: Tensor, guide: Tensor) -> Tensor:
        b, c, h, w = pixels.shape
        s = self.stoken_size
        nh, nw = h // s, w // s
        pix = rearrange(pixels, "b c (nh sh) (nw sw) -> b (nh nw) (sh sw) c", sh=s, sw=s)
        with torch.no_grad():
            init_tokens = self.unfold(F.adaptive_avg_pool2d(guide, (nh, nw)))      # (B, n, C, 9)
            affinity = (pix @ init_tokens * self.scale).softmax(-1)                # (B, n, s*s, 9)
            weight = self.fold(affinity.sum(2).transpose(1, 2).reshape(b, 9, nh, nw))  # (B, 1, nh, nw)
        tokens = (pix.transpose(-1, -2) @ affinity).permute(0, 2, 3, 1).reshape(b * c, 9, nh, nw)
        tokens = self.fold(tokens).reshape(b, c, nh, nw) / (weight + 1e-12)
        tokens = self.stoken_refine(tokens)
        out = self.unfold(tokens) @ affinity.transpose(-1, -2)                     # (B, n, C, s*s)
        return rearrange(out, "b (nh nw) c (sh sw) -> b c (nh sh) (nw sw)", nh=nh, sh=s)


class CASTAB(nn.Module):
    """CASTA block: shared depthwise position conv on ``[x, guide]``, then ``num_blocks`` pairs of
    ``x + CASTA(LN, LN)`` and ``x + FFN(norm x)`` (BatchNorm in CRSDUN).

    ``guide_as_pixels=False`` (reconstruction branch): ``x`` gives the pixel features and ``guide``
    initialises the super-tokens. ``True`` (segmentation branch, official ``switch``): the roles swap.
    The residual always updates ``x``.
    """

    def __init__(self, dim: int, heads: int, stoken_size: int, num_blocks: int, norm_type: str = "bn"):
        super().__init__()
        self.pos = nn.Conv2d(dim * 2, dim * 2, 5, 1, 2, groups=dim * 2)
        self.blocks = nn.ModuleList([
            nn.ModuleList([PairPreNorm(dim, CASTA(dim, stoken_size=stoken_size, num_heads=heads)),
                           map_prenorm(dim, map_ffn(dim), norm_type)])
            for _ in range(num_blocks)])

    def forward(self, x: Tensor, guide: Tensor, guide_as_pixels: bool = False) -> Tensor:
        both = torch.cat([x, guide], dim=1)
        x, guide = (self.pos(both) + both).chunk(2, dim=1)
        for attn, ff in self.blocks:
            x = (attn(guide, x) if guide_as_pixels else attn(x, guide)) + x
            x = ff(x) + x
        return x
