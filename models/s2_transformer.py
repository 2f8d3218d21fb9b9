"""S²-Transformer (Wang et al., "S2-Transformer for mask-aware hyperspectral image reconstruction").

:class:`S2Transformer` re-implements the official ``SpaSpe_Attn_Net`` with
``attention_type='Parall_CatSS_Attn'`` (the published model) of Jiamian-Wang/S2-transformer-HSI,
``network.py`` (commit 49593391). Module attribute names, hence state-dict keys, are the official
ones: official checkpoints load strictly with no key mapping (after stripping the DataParallel
``module.`` prefix, as :func:`models.loading.unwrap_checkpoint` does).

Structure (C = embed_dim, L = in_chans bands, H x W a multiple of the window):

* ``conv_first`` 3x3 (L -> C), tokens (B, HW, C), ``patch_embed.norm`` LayerNorm;
* ``layers``: K residual stages (RSTB); stage k runs ``depths[k]`` Parall-SS blocks (paper Eq. 11):
  ``z = z + chl_reduce([Spa-MSA(LN1 z), Spe-MSA(LN2 z)])``, ``z = z + MLP(LN3 z)``, then a 3x3 conv
  and a stage residual. Spa-MSA is (shifted) 8x8-window attention whose queries and keys are
  multiplied by a mask embedding ``softmax_W(ms_conv2(ms_conv1(physc_mask)))`` (softmax over the
  image width, as in the official code); Spe-MSA is channel attention over all pixels plus a
  depth-wise convolutional position embedding of the values;
* after each stage a 1x1 "pin" conv (``RSTB_pin``, shared) maps the stage's features to L bands:
  the intermediate outputs used by the mask-aware losses (:mod:`models.losses`);
* ``norm``, ``conv_after_body`` + long skip, ``conv_last`` and a global residual on the input.

Spa-MSA's window attention and Spe-MSA (MST's MS-MSA without mask guidance) come from
:mod:`models.mst_blocks`; the MLP and drop-path (below), the initialisation and the window reshapes compute what
timm's do, without importing timm.

Forward ``model(x, physc_mask) -> (x_out (B, L, H, W), [K tensors (B, L, H, W)])``.

Deviations from the official code, none changing the output for inputs it accepts:

* Official modules that this configuration never uses are kept only so that checkpoints load
  (``ms_conv3``, ``ms_conv4``, ``win_wrap_spatial2``, ``chl_msa2`` in every block: 1.54 M of the
  4.15 M parameters). The official forward also runs ``ms_conv3/4`` and discards the result; here
  they are not run.
* ``img_size`` only sizes the persistent shifted-window ``attn_mask`` buffers (as officially); the
  buffers of all shifted blocks share one tensor at construction (16 MiB instead of 384 MiB at
  img_size=256; ``.to(device)`` copies them separately, like the official buffers). For other input
  sizes the mask is computed once per forward (officially: once per block).
* Inputs whose size is not a multiple of the window raise a ValueError (the official forward
  reflect-pads ``x`` but not ``physc_mask`` and then fails); the batch of ``physc_mask`` must match.
* Only the HSI head (``upsampler=''``, ``upscale=1``), ``resi_connection='1conv'`` and
  ``attention_type='Parall_CatSS_Attn'`` are implemented; the official ablation switches that the
  published model leaves at their defaults (``ape``, ``patch_size``, ``spe_split``,
  ``spe_mask_eff``, ``mask_RSTB``) are not accepted; the RGB mean subtraction of the SR code (zero
  for in_chans != 3) is omitted.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.mst_blocks import SpectralMSA, WindowAttention, trunc_normal_, window_merge, window_partition
from models.registry import register_model
from models.sizes import SizeRule


# ------------------------------------------------------------------ timm's MLP and drop-path, same numbers
class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> linear -> dropout, (..., dim) -> (..., dim) (timm's ``Mlp``: the official
    code's, with its state-dict keys ``fc1`` / ``fc2`` and its construction order)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(F.gelu(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth (timm's ``DropPath``): in training, each sample's residual branch is zeroed with
    probability ``p`` and the kept ones scaled by 1 / (1 - p), one Bernoulli draw per sample (same stream)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * (keep.div_(1 - self.p) if self.p < 1 else keep)


# ------------------------------------------------------------------ token / window layout helpers
def tokens_to_image(tokens: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) feature map."""
    height, width = size
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def shifted_window_mask(size: tuple[int, int], window: int, shift: int,
                        device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """Attention mask (nW, window^2, window^2) of shifted windows: 0 inside a region, -100 across.

    After the cyclic shift by ``shift`` a window at the bottom/right border holds pixels of up to
    three image regions per axis ([0, S-window), [S-window, S-shift), [S-shift, S)); tokens of
    different regions must not attend to each other.
    """
    def region(length: int) -> Tensor:
        pos = torch.arange(length, device=device)
        return (pos >= length - window).long() + (pos >= length - shift).long()

    h, w = size
    label = (region(h)[:, None] * 3 + region(w)[None, :]).to(dtype)
    label_windows = window_partition(label[None, :, :, None], window).squeeze(-1)  # (nW, window^2)
    different = label_windows[:, None, :] != label_windows[:, :, None]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(different, -100.0)


# ------------------------------------------------------------------------------ attention modules
class ShiftedWindowAttention(nn.Module):
    """Spa-MSA (official ``WindowWrapSpatial``) on an image of tokens: cyclic shift, window
    partition, :class:`WindowAttention`, merge.

    ``attn_mask`` (persistent buffer, shifted blocks only) is the shift mask for ``input_resolution``;
    other sizes use the mask passed to :meth:`forward`.
    """

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window: int,
                 shift: int, stored_shift_mask: Tensor | None, drop: float = 0.0, **attn_kwargs: Any) -> None:
        super().__init__()
        self.input_resolution, self.window, self.shift = input_resolution, window, shift
        self.attn = WindowAttention(dim, window, num_heads, proj_drop=drop, **attn_kwargs)
        if shift > 0:
            self.register_buffer("attn_mask", stored_shift_mask)

    def forward(self, x: Tensor, size: tuple[int, int], mask_embedding: Tensor,
                shift_mask: Tensor | None) -> Tensor:
        """x (B, HW, C), mask_embedding (B, H, W, C), shift_mask for ``size`` if it is not
        ``input_resolution`` -> (B, HW, C)."""
        b, hw, c = x.shape
        x = x.view(b, *size, c)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask_embedding = torch.roll(mask_embedding, shifts=(-self.shift, -self.shift), dims=(1, 2))
            shift_mask = self.attn_mask if tuple(size) == tuple(self.input_resolution) else shift_mask
        else:
            shift_mask = None
        out = self.attn(window_partition(x, self.window), window_partition(mask_embedding, self.window), shift_mask)
        out = window_merge(out, self.window, size)
        if self.shift > 0:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        return out.reshape(b, hw, c)


class SpatialSpectralBlock(nn.Module):
    """Parall-SS block (Eq. 11) with the mask embedding that modulates its spatial attention."""

    def __init__(self, dim: int, mask_chl: int, input_resolution: tuple[int, int], num_heads: int,
                 window: int, shift: int, stored_shift_mask: Tensor | None, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, mask_eff: str = "both_qk",
                 spe_dim_head: int = 10) -> None:
        super().__init__()
        self.ms_conv1 = nn.Conv2d(mask_chl, dim, kernel_size=1, bias=True)
        self.ms_conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=True)
        # ms_conv3/4, win_wrap_spatial2 and chl_msa2 exist in the official block but this
        # configuration never uses them: kept only so that official checkpoints load.
        self.ms_conv3 = nn.Conv2d(mask_chl, dim, kernel_size=1, bias=True)
        self.ms_conv4 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=True)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.chl_reduce = nn.Linear(dim * 2, dim, bias=False)
        spatial = dict(dim=dim, input_resolution=input_resolution, num_heads=num_heads, window=window,
                       shift=shift, stored_shift_mask=stored_shift_mask, drop=drop, qkv_bias=qkv_bias,
                       qk_scale=qk_scale, attn_drop=attn_drop, mask_eff=mask_eff)
        self.win_wrap_spatial = ShiftedWindowAttention(**spatial)
        self.win_wrap_spatial2 = ShiftedWindowAttention(**spatial)
        self.chl_msa = SpectralMSA(dim, spe_dim_head, dim // spe_dim_head)
        self.chl_msa2 = SpectralMSA(dim, spe_dim_head, dim // spe_dim_head)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor, size: tuple[int, int], physc_mask: Tensor,
                shift_mask: Tensor | None) -> Tensor:
        """x (B, HW, C), physc_mask (B, mask_chl, H, W) -> (B, HW, C)."""
        mask_embedding = self.ms_conv2(self.ms_conv1(physc_mask)).softmax(dim=-1).permute(0, 2, 3, 1)
        spatial = self.win_wrap_spatial(self.norm1(x), size, mask_embedding, shift_mask)
        b, hw, c = x.shape
        spectral = self.chl_msa(self.norm2(x).view(b, *size, c)).view(b, hw, c)
        x = x + self.chl_reduce(torch.cat((self.drop_path(spatial), self.drop_path(spectral)), dim=2))
        return x + self.drop_path(self.mlp(self.norm3(x)))


class StageBlocks(nn.Module):
    """A stage's blocks, alternately without and with window shift (official ``BasicLayer``)."""

    def __init__(self, blocks: Sequence[SpatialSpectralBlock], use_checkpoint: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: Tensor, size: tuple[int, int], physc_mask: Tensor,
                shift_mask: Tensor | None) -> Tensor:
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, size, physc_mask, shift_mask, use_reentrant=False)
            else:
                x = block(x, size, physc_mask, shift_mask)
        return x


class ResidualStage(nn.Module):
    """Residual stage (official ``RSTB``): blocks, 3x3 conv on the feature map, residual over the stage."""

    def __init__(self, dim: int, blocks: Sequence[SpatialSpectralBlock], use_checkpoint: bool = False) -> None:
        super().__init__()
        self.residual_group = StageBlocks(blocks, use_checkpoint)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: Tensor, size: tuple[int, int], physc_mask: Tensor,
                shift_mask: Tensor | None) -> Tensor:
        out = tokens_to_image(self.residual_group(x, size, physc_mask, shift_mask), size)
        return self.conv(out).flatten(2).transpose(1, 2) + x


class TokenEmbedding(nn.Module):
    """(B, C, H, W) -> tokens (B, HW, C), then LayerNorm (``patch_norm``) or nothing.
    (Official ``PatchEmbed`` with patch size 1.)"""

    def __init__(self, dim: int, patch_norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if patch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


# --------------------------------------------------------------------------------------- network
def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@register_model("s2_transformer", official_args=dict(
    upscale=1, in_chans=28, img_size=32, window_size=8, img_range=1.0, depths=[6, 6, 6, 6], embed_dim=60,
    num_heads=[6, 6, 6, 6], mlp_ratio=4, upsampler="", resi_connection="1conv",
    attention_type="Parall_CatSS_Attn"))
class S2Transformer(nn.Module):
    """S²-Transformer (official ``SpaSpe_Attn_Net``). ``model(x, physc_mask) -> (x_out, [stage outputs])``.

    Args (official names; the published model: in_chans=28, img_size=256, window_size=8,
    depths=[6]*4, embed_dim=60, num_heads=[6]*4, mlp_ratio=4):
        in_chans: spectral bands L (input and output channels).
        img_size: int or (H, W); the size whose shift masks are stored as buffers (any multiple of
            the window runs; other sizes compute the mask on the fly).
        window_size: attention window (8); shifted blocks shift by window_size // 2.
        embed_dim, depths, num_heads, mlp_ratio: width, blocks per stage, spatial heads, MLP ratio.
        img_range: input scale factor (outputs are divided by it).
        mask_chl: channels of ``physc_mask`` (1: the 2-D mask).
        mask_eff: which of q/k/v the mask embedding modulates ('both_qk' published, 'only_q',
            'only_k', 'only_v', 'omit').
        spe_dim_head: channels per head of the spectral attention (10).
        qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, patch_norm: as in Swin/SwinIR.
        use_checkpoint: gradient checkpointing per block (saves memory when training).
        upscale, upsampler, resi_connection, attention_type: only the published values
            (1, '', '1conv', 'Parall_CatSS_Attn') are implemented.
    """

    def __init__(self, img_size: int | Sequence[int] = 64, in_chans: int = 28, embed_dim: int = 96,
                 mask_chl: int = 1, depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, patch_norm: bool = True, use_checkpoint: bool = False,
                 upscale: int = 1, img_range: float = 1.0, upsampler: str = "", resi_connection: str = "1conv",
                 attention_type: str = "Parall_CatSS_Attn", mask_eff: str = "both_qk",
                 spe_dim_head: int = 10) -> None:
        super().__init__()
        unsupported = {"upscale": (upscale, 1), "upsampler": (upsampler, ""),
                       "resi_connection": (resi_connection, "1conv"),
                       "attention_type": (attention_type, "Parall_CatSS_Attn")}
        for name, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(f"S2Transformer: {name}={value!r} is not implemented (only {supported!r})")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        if embed_dim % spe_dim_head or any(embed_dim % h for h in num_heads):
            raise ValueError(f"embed_dim={embed_dim} must be divisible by spe_dim_head={spe_dim_head} "
                             f"and by every num_heads {list(num_heads)}")
        self.img_size = _pair(img_size)
        self.in_chans, self.mask_chl, self.img_range = in_chans, mask_chl, img_range
        # Official rule: an image no larger than the window is one unshifted window.
        if min(self.img_size) <= window_size:
            window_size, shift = min(self.img_size), 0
        else:
            shift = window_size // 2
        self.window_size, self.shift_size = window_size, shift
        self.size_rule = SizeRule((window_size, window_size), reason=f"attention windows of window_size={window_size}")
        stored_mask = shifted_window_mask(self.img_size, window_size, shift) if shift else None

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = TokenEmbedding(embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path = [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        self.layers = nn.ModuleList()
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            first = sum(depths[:stage])
            blocks = [SpatialSpectralBlock(
                embed_dim, mask_chl, self.img_size, heads, window_size, 0 if i % 2 == 0 else shift,
                stored_mask, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, drop_path=drop_path[first + i], mask_eff=mask_eff,
                spe_dim_head=spe_dim_head) for i in range(depth)]
            self.layers.append(ResidualStage(embed_dim, blocks, use_checkpoint))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
        self.apply(self._init_weights)
        # Stage outputs ("pins") for the mask-aware losses; shared by all stages.
        self.RSTB_pin = nn.Conv2d(embed_dim, in_chans, 1, 1, bias=False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _check_inputs(self, x: Tensor, physc_mask: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x must be (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        self.size_rule.check(h, w, "S2Transformer input x")
        if tuple(physc_mask.shape) != (b, self.mask_chl, h, w):
            raise ValueError(f"physc_mask must be (B, mask_chl, H, W) = {(b, self.mask_chl, h, w)} "
                             f"to match x {tuple(x.shape)}, got {tuple(physc_mask.shape)}")

    def forward(self, x: Tensor, physc_mask: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x (B, L, H, W) (the "HM" input), physc_mask (B, mask_chl, H, W) ->
        (reconstruction (B, L, H, W), list of the K stage outputs (B, L, H, W))."""
        self._check_inputs(x, physc_mask)
        size = (x.shape[2], x.shape[3])
        shift_mask = None
        if self.shift_size and size != self.img_size:
            shift_mask = shifted_window_mask(size, self.window_size, self.shift_size, x.device, x.dtype)
        x = x * self.img_range
        first = self.conv_first(x)
        tokens = self.pos_drop(self.patch_embed(first))
        stage_outputs = []
        for layer in self.layers:
            tokens = layer(tokens, size, physc_mask, shift_mask)
            stage_outputs.append(self.RSTB_pin(tokens_to_image(tokens, size)) / self.img_range)
        body = self.conv_after_body(tokens_to_image(self.norm(tokens), size)) + first
        return (x + self.conv_last(body)) / self.img_range, stage_outputs

    # -------------------------------------------------------------- registry protocol
    def prepare_inputs(self, y: Tensor, op: Any) -> dict[str, Tensor]:
        """Forward arguments from a measurement y (B, H, W + step*(L-1)) and a CassiOperator:
        ``x`` = shift-back of y / L * 2 times the 3-D mask ("HM"); ``physc_mask`` = the (warped)
        2-D mask as (B, 1, H, W) (``mask_chl=1``)."""
        if self.mask_chl != 1:
            raise ValueError(f"prepare_inputs builds a 1-channel physc_mask; this model has mask_chl={self.mask_chl}")
        x = op.input_setting(y, "HM")
        physc_mask = op.mask3d[:, :1].to(x.dtype).expand(x.shape[0], -1, -1, -1)
        return {"x": x, "physc_mask": physc_mask}

    @staticmethod
    def reconstruction(output: tuple[Tensor, list[Tensor]]) -> Tensor:
        """The final cube (B, L, H, W) of the forward's output."""
        return output[0]
