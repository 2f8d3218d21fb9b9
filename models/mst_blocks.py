"""Blocks shared by the MST-family networks: MST, S²-Transformer, HSRA, CRSDUN and BiSRNet.

Every network builds its layers from these, under its own official attribute names, so the state-dict keys of
each network are unchanged (``net`` of a feed-forward, ``fn`` / ``norm`` of a pre-norm, ``to_q`` / ``to_k`` /
``to_v`` / ``rescale`` / ``proj`` / ``pos_emb`` of the spectral attention). Where a network's block genuinely
differs the block takes a parameter instead of being copied: the feed-forward's conv stack (BiSRNet's is
binarised), the pre-norm's layout, norm and residual (CRSDUN normalises channel-first maps with Layer-, Batch- or
GroupNorm; HSRA adds the residual inside), the spectral attention's mask guidance (MST's, built by a factory).

Window partitioning, relative position indices and the truncated-normal initialisation are Swin's / timm's
(``timm.models.swin_transformer``, ``timm.layers.trunc_normal_``), written here with the same numbers and the
same random stream (tests/test_mst_blocks.py): importing timm loads its whole model zoo (with
huggingface_hub and wandb), about 1 s of every network run's start-up.

Layouts: "tokens" are channels-last (B, H, W, C); "maps" are channels-first (B, C, H, W).
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormKind = Literal["ln", "bn", "gn"]
MASK_EFFECTS = ("both_qk", "only_q", "only_k", "only_v", "omit")
"""Which of q / k / v the mask embedding multiplies in :class:`WindowAttention` ('omit': none)."""


# ------------------------------------------------------------------------------- initialisation
def trunc_normal_(tensor: Tensor, std: float, bound: float = 2.0) -> Tensor:
    """Fill ``tensor`` in place with N(0, std^2) truncated to [-bound, bound] (absolute bounds, as the official
    ``trunc_normal_(w, std=.02)`` calls) by the official codes' inverse-CDF sampler (timm's): u uniform on
    [2 Phi(-bound/std) - 1, 2 Phi(bound/std) - 1], then sqrt(2) std erfinv(u), clamped. Same seed, same numbers
    as those codes (recent ``nn.init.trunc_normal_`` samples differently), so seeded builds reproduce them."""
    def phi(z: float) -> float:                                         # standard normal CDF
        return (1.0 + math.erf(z / math.sqrt(2.0))) / 2.0

    with torch.no_grad():
        tensor.uniform_(2 * phi(-bound / std) - 1, 2 * phi(bound / std) - 1)
        return tensor.erfinv_().mul_(std * math.sqrt(2.0)).clamp_(min=-bound, max=bound)


# --------------------------------------------------------------------------------- normalisation
def channel_norm(kind: NormKind, dim: int) -> nn.Module:
    """'ln': LayerNorm over channels, 'bn': BatchNorm2d, 'gn': GroupNorm with one group per channel."""
    if kind == "ln":
        return nn.LayerNorm(dim)
    if kind == "bn":
        return nn.BatchNorm2d(dim)
    if kind == "gn":
        return nn.GroupNorm(dim, dim)
    raise ValueError(f"unknown norm type '{kind}' (expected 'ln', 'bn' or 'gn')")


def apply_channel_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """Normalise a map ``x`` (B, C, H, W); a LayerNorm acts on the channel axis of each pixel."""
    if isinstance(norm, nn.LayerNorm):
        return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return norm(x)


class PreNorm(nn.Module):
    """``fn(norm(x))``, or ``x + fn(norm(x))`` when ``residual``; the norm acts on the channels.

    ``channels_last=True``: x is tokens (B, H, W, C) and the norm a LayerNorm (MST, BiSRNet, HSRA);
    False: x is a map (B, C, H, W) and ``norm`` is 'ln', 'bn' or 'gn' (CRSDUN).
    """

    def __init__(self, dim: int, fn: nn.Module, norm: NormKind = "ln", channels_last: bool = True,
                 residual: bool = False):
        super().__init__()
        if channels_last and norm != "ln":
            raise ValueError(f"PreNorm on channels-last tokens needs a LayerNorm, got norm '{norm}'")
        self.fn = fn
        self.norm = channel_norm(norm, dim)
        self.channels_last, self.residual = channels_last, residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.fn(self.norm(x) if self.channels_last else apply_channel_norm(self.norm, x))
        return x + out if self.residual else out


# ---------------------------------------------------------------------------------- feed-forward
def conv_feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """1x1 conv expanding to ``dim * mult`` channels, GELU, depth-wise 3x3, GELU, 1x1 conv back; no biases."""
    hidden = dim * mult
    return nn.Sequential(
        nn.Conv2d(dim, hidden, 1, 1, bias=False),
        nn.GELU(),
        nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False, groups=hidden),
        nn.GELU(),
        nn.Conv2d(hidden, dim, 1, 1, bias=False),
    )


class FeedForward(nn.Module):
    """MST's feed-forward: :func:`conv_feed_forward` (or the given conv stack ``net``) applied to tokens
    (B, H, W, C) -> (B, H, W, C), or to maps (B, C, H, W) when ``channels_last=False`` (CRSDUN)."""

    def __init__(self, dim: int, mult: int = 4, channels_last: bool = True, net: nn.Module | None = None):
        super().__init__()
        self.net = conv_feed_forward(dim, mult) if net is None else net
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        if not self.channels_last:
            return self.net(x)
        return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------- spectral attention
class SpectralMSA(nn.Module):
    """Spectral-wise multi-head self-attention on tokens (B, H, W, C) -> (B, H, W, C): MST's MS-MSA,
    S²-Transformer's Spe-MSA.

    Each head attends over its ``dim_head`` channels: a dim_head x dim_head map from queries and keys
    L2-normalised along the pixels, times a learned per-head ``rescale``, softmax, applied to the values;
    a depth-wise conv positional branch (``pos_emb``) acts on the values before any modulation.
    ``guidance``: a factory ``guidance(dim) -> module`` (MST's mask-guided mechanism, stored as ``mm``);
    ``mm(mask, width)`` (B, C, H, W) then multiplies the values, the first sample's for every sample
    (the official ``mask_attn[0]``).
    """

    def __init__(self, dim: int, dim_head: int, heads: int, guidance: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.num_heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_k = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_v = nn.Linear(dim, dim_head * heads, bias=False)
        self.rescale = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(dim_head * heads, dim, bias=True)
        self.pos_emb = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False, groups=dim),
        )
        self.mm = guidance(dim) if guidance is not None else None

    def _heads(self, t: Tensor) -> Tensor:
        """(B, N, heads * d) -> (B, heads, d, N)."""
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.dim_head).permute(0, 2, 3, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, H, W, C); mask: the guidance input (MST: mask features (1, C, H, W')), unused without it."""
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        q, k, v_inp = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        v = self._heads(v_inp)
        if self.mm is not None:
            guidance = self.mm(mask, width=w)[:1]                     # (1, C, H, W): first sample only
            v = v * self._heads(guidance.permute(0, 2, 3, 1).reshape(1, h * w, c))
        q = F.normalize(self._heads(q), dim=-1, p=2)
        k = F.normalize(self._heads(k), dim=-1, p=2)
        attn = ((k @ q.transpose(-2, -1)) * self.rescale).softmax(dim=-1)     # (B, heads, d, d)
        out = (attn @ v).permute(0, 3, 1, 2).reshape(b, h * w, self.num_heads * self.dim_head)
        out_c = self.proj(out).view(b, h, w, c)
        out_p = self.pos_emb(v_inp.reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return out_c + out_p


# ------------------------------------------------------------------------------------- windows
def window_partition(x: Tensor, window: int | tuple[int, int]) -> Tensor:
    """Tokens (B, H, W, C) -> windows of tokens (B * nW, wh * ww, C), windows in row-major order (Swin's)."""
    wh, ww = (window, window) if isinstance(window, int) else window
    b, h, w, c = x.shape
    return x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)


def window_merge(windows: Tensor, window: int | tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, wh * ww, C) -> tokens (B, H, W, C) (Swin's reverse)."""
    wh, ww = (window, window) if isinstance(window, int) else window
    (h, w), c = size, windows.shape[-1]
    return windows.view(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> Tensor:
    """(N, N) index, N = window^2, of the relative position (dy, dx) of token j from token i inside a window
    (row-major tokens) into a (2 window - 1)^2 bias table: (dy + window - 1) (2 window - 1) + dx + window - 1."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    dy = rows.flatten()[:, None] - rows.flatten()[None, :]
    dx = cols.flatten()[:, None] - cols.flatten()[None, :]
    return (dy + window - 1) * (2 * window - 1) + dx + window - 1


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias table (Swin): S²-Transformer's
    mask-modulated Spa-MSA (Eq. 8), CRSDUN's segmentation-branch attention (``mask_eff='omit'``).

    Queries are scaled by ``qk_scale`` or ``head_dim ** -0.5``; then q and/or k or v (``mask_eff``) are multiplied
    element-wise by the windowed mask embedding. The bias table is initialised ~ N(0, 0.02) truncated to
    [-2, 2] (:func:`trunc_normal_`), after the linear layers are created, as in both official codes.
    """

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 mask_eff: str = "both_qk") -> None:
        super().__init__()
        if mask_eff not in MASK_EFFECTS:
            raise ValueError(f"mask_eff must be one of {MASK_EFFECTS}, got {mask_eff!r}")
        self.dim, self.window, self.num_heads, self.mask_eff = dim, window, num_heads, mask_eff
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask_embedding: Tensor | None = None, shift_mask: Tensor | None = None) -> Tensor:
        """x, mask_embedding: windows of tokens (B*nW, N, C); shift_mask: (nW, N, N) or None -> (B*nW, N, C)."""
        bw, n, c = x.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        q, k, v = self.qkv(x).reshape(bw, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * self.scale
        if self.mask_eff != "omit":
            m = mask_embedding.reshape(bw, n, heads, head_dim).transpose(1, 2)
            if self.mask_eff in ("both_qk", "only_q"):
                q = q * m
            if self.mask_eff in ("both_qk", "only_k"):
                k = k * m
            if self.mask_eff == "only_v":
                v = v * m
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = q @ k.transpose(-2, -1) + bias.view(n, n, heads).permute(2, 0, 1).unsqueeze(0)
        if shift_mask is not None:
            nw = shift_mask.shape[0]
            attn = (attn.view(bw // nw, nw, heads, n, n) + shift_mask[None, :, None]).view(bw, heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c)))


# ------------------------------------------------------------------------------------------ U-Net
def encode(fea: Tensor, encoder_layers: nn.ModuleList) -> tuple[Tensor, list[Tensor]]:
    """Run a U-Net encoder of (block, down-sampling) pairs: the bottom features and the skips, top level first."""
    skips = []
    for block, down in encoder_layers:
        fea = block(fea)
        skips.append(fea)
        fea = down(fea)
    return fea, skips
