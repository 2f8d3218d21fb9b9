"""BiSRNet: binarised spectral-redistribution network (Cai et al., "Binarized Spectral Compressive Imaging",
NeurIPS 2023).

Re-implementation of the official code (caiyuanhao1998/BiSCI at commit c633d951,
``simulation/test_code/architecture/BiSRNet.py`` and ``real/test_code/architecture/BiSRNet.py``, identical
in their train_code folders). Parameter names are the official ones: the official state dicts
(``bisrnet_simulation.pth``; ``bisrnet_real_state_dict.pth``, see ``../shared/data/SOURCES.md``) load strictly
with no key mapping. Built as ``BiSRNet(in_channels=28, out_channels=28, n_feat=28, stage=1,
num_blocks=[1, 1, 1])`` (BiSCI ``model_generator``): 659,319 parameters.

Structure (channels C = ``n_feat``):

* 32-bit ends: ``fution`` (1x1 conv mixing the ``H`` cube with the 3-D mask, 2*28 -> 28), ``conv_in`` and
  ``conv_out`` (3x3), and a global residual from ``conv_in``'s output to the end;
* ``body``: ``stage`` binarised U-Nets in sequence, each with two down-samplings (C -> 2C -> 4C), one
  block per level (``num_blocks``), and a residual from its input. Every binarised layer is a
  :class:`BinaryConv2d`: learnable per-channel affine (``move0``), sign activation, convolution with the
  sign of the weights scaled by their mean magnitude per output channel, RPReLU, and an identity shortcut
  (so it keeps its channel count). Channel changes are made by pairs of them (:class:`BinaryConvPair`:
  concatenate two branches to widen, average two halves to narrow); down-sampling is a 2x2 average pool,
  up-sampling bilinear (x2);
* a block is ``x + FFN(LayerNorm(x))``: MST's pre-norm and feed-forward (:mod:`models.mst_blocks`) with a
  binarised conv stack (C -> 2C -> 4C by pairs, RPReLU, grouped 3x3 binary conv with 4 channels per group,
  RPReLU, 4C -> 2C -> C); BiSRNet has no attention.

Sizes: any H, W >= 5. The official forward reflect-pads the cube to multiples of 8 (torch's reflect padding
needs pad < size, which fails below 5 px) and crops the output back.

Gradients (used when a frozen network sits inside calibration): the forward values are exactly binary
(``sign``), and the backward pass is the official straight-through surrogate -- the activation ``sign(z)``
is differentiated as ``tanh(beta * z)`` (d/dz = beta * (1 - tanh(beta z)^2), never zero, at most beta),
the weight binarisation as ``clamp(w, -1, 1)`` (weights only). These surrogates act in eval mode too
(they do not depend on ``training``), so input gradients are those of the smooth surrogate network, not of
the piecewise-constant function the forward computes (whose true derivative through a sign is zero almost
everywhere). Every binary layer also has an identity shortcut, and the mask reaches the 32-bit ``fution``
conv directly, so the gradient with respect to the mask is never blocked.

Official behaviour kept: the straight-through expressions are evaluated as in the official code
(``tanh + (sign - tanh)`` and ``clamp(w) + (scale * sign(w) - clamp(w))``, bitwise the same values), since a
binarised network flips signs on last-bit differences; ``sign(0) = 0``.

Deviations: ``Phi`` is required (the official default is a random CUDA mask); the constructor defaults are
the published build (the official class defaults to ``stage=3``, never used); ``num_blocks`` must have 3
entries (the official body hard-codes two down-samplings); ``fution`` maps ``2 * in_channels`` to
``in_channels`` (officially 56 -> 28, the same for 28 bands); nothing is written in place.

``bisrnet_real`` (``real/test_code``): the same network without the mask. Its forward takes the 2-D
measurement (B, H, W + 54) (or the official (B, 1, H, W + 54)), reads band c from columns 2c .. 2c + W - 1
(the official ``y2x``, which builds an H x H cube, i.e. W = H for the 660 x 714 captures; here W is the
measurement width minus 54, the same for square inputs) and never uses ``fution``, which is kept only so
that the official state dict loads and is frozen (``requires_grad=False``). A mask passed to it is an error.
The official real test clips each capture to [0, 1] and rescales it to a maximum of 0.8
(``prepare_inputs`` does the rescaling; ``input_max=None`` gives the toolbox ``Y`` setting y / 28 * 2
instead, the input of the official real *training*, where y is simulated with a gain of 1.2 and shot noise).
The simulation and real weights have the same keys and shapes: they cannot be told apart by structure.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cassi.shifts import shift_back
from models.mst_blocks import FeedForward, PreNorm, encode
from models.registry import register_model
from models.sizes import SizeRule

BANDS = 28
"""Spectral bands of the published builds (the real model's split and the 56 -> 28 ``fution`` assume it)."""

STEP = 2
"""Dispersion step (px per band) of the real model's measurement split."""

PAD_MULTIPLE = 8
"""The official forward reflect-pads the cube to multiples of this."""



# ------------------------------------------------------------------------------- binarised units
class LearnableBias(nn.Module):
    """``x + bias`` with a per-channel ``bias`` (1, C, 1, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class ReDistribution(nn.Module):
    """Per-channel affine ``x * k + b`` before binarisation (the paper's redistribution)."""

    def __init__(self, channels: int):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.k = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.k + self.b


class RPReLU(nn.Module):
    """PReLU between two learnable per-channel shifts."""

    def __init__(self, channels: int):
        super().__init__()
        self.pr_bias0 = LearnableBias(channels)
        self.pr_prelu = nn.PReLU(channels)
        self.pr_bias1 = LearnableBias(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.pr_bias1(self.pr_prelu(self.pr_bias0(x)))


class SpectralBinaryActivation(nn.Module):
    """Value ``sign(x)``; gradient that of ``tanh(beta * x)`` (straight-through, learnable ``beta``).

    When no gradient is needed only ``sign(x)`` is computed (a quarter of the forward time): for beta > 0
    (every layer of both official checkpoints) the official ``t + (sign(x) - t)``, t = tanh(beta x), rounds
    to exactly sign(x), since |t| <= 1 has the sign of x; for beta <= 0 it is within one unit in the last place.
    """

    def __init__(self):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and (x.requires_grad or self.beta.requires_grad)):
            return torch.sign(x)
        surrogate = torch.tanh(x * self.beta)
        return surrogate + (torch.sign(x) - surrogate).detach()


class HardBinaryConv(nn.Conv2d):
    """Convolution with weights ``mean|w| * sign(w)`` per output channel (the scale is not differentiated);
    the weight gradient is that of ``clamp(w, -1, 1)``. Inputs are differentiated through the binary weights."""

    def binary_weight(self) -> Tensor:
        # mean over the kernel columns, rows, then input channels, in the official order (same rounding)
        scale = self.weight.abs().mean(3, keepdim=True).mean(2, keepdim=True).mean(1, keepdim=True).detach()
        clipped = torch.clamp(self.weight, -1.0, 1.0)
        return clipped + (scale * torch.sign(self.weight) - clipped).detach()

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.binary_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class BinaryConv2d(nn.Module):
    """Binary conv unit, C -> C: ``x + RPReLU(binconv(sign(k * x + b)))``."""

    def __init__(self, channels: int, kernel_size: int, padding: int = 0, groups: int = 1):
        super().__init__()
        self.move0 = ReDistribution(channels)
        self.binary_activation = SpectralBinaryActivation()
        self.binary_conv = HardBinaryConv(channels, channels, kernel_size, padding=padding, groups=groups,
                                          bias=False)
        self.relu = RPReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.binary_conv(self.binary_activation(self.move0(x)))) + x


Resample = Literal["none", "down", "up"]


class BinaryConvPair(nn.Module):
    """Two :class:`BinaryConv2d` branches of ``channels`` channels that change the channel count.

    ``merge="concat"``: both branches see the whole input (C channels), outputs concatenated (2C);
    ``merge="average"``: the input (2C channels) is split in halves, one per branch, outputs averaged (C).
    ``resample`` first: ``"down"`` 2x2 average pool, ``"up"`` bilinear x2. The official Down / Up /
    Fusion_Increase / Fusion_Decrease modules are (down, concat) / (up, average) / (none, concat) /
    (none, average).
    """

    def __init__(self, channels: int, kernel_size: int, merge: Literal["concat", "average"],
                 resample: Resample = "none"):
        super().__init__()
        if merge not in ("concat", "average") or resample not in ("none", "down", "up"):
            raise ValueError(f"unknown merge {merge!r} or resample {resample!r}")
        self.merge, self.resample = merge, resample
        self.biconv_1 = BinaryConv2d(channels, kernel_size, padding=kernel_size // 2)
        self.biconv_2 = BinaryConv2d(channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
        elif self.resample == "up":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if self.merge == "concat":
            return torch.cat([self.biconv_1(x), self.biconv_2(x)], dim=1)
        first, second = x.chunk(2, dim=1)
        return (self.biconv_1(first) + self.biconv_2(second)) / 2


def binary_feed_forward(dim: int) -> nn.Sequential:
    """BiSRNet's binarised feed-forward conv stack on (B, C, H, W): C -> 2C -> 4C by pairs, RPReLU, grouped 3x3
    binary conv (C groups of 4 channels), RPReLU, 4C -> 2C -> C (it replaces MST's 1x1 / depth-wise / 1x1 stack)."""
    return nn.Sequential(
        BinaryConvPair(dim, 1, "concat"),
        BinaryConvPair(dim * 2, 1, "concat"),
        RPReLU(dim * 4),
        BinaryConv2d(dim * 4, 3, padding=1, groups=dim),
        RPReLU(dim * 4),
        BinaryConvPair(dim * 2, 1, "average"),
        BinaryConvPair(dim, 1, "average"),
    )


class BinaryBlock(nn.Module):
    """``num_blocks`` x (``x + FFN(LayerNorm(x))``) on (B, C, H, W) (official ``BiSRNet_Block``)."""

    def __init__(self, dim: int, num_blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(PreNorm(dim, FeedForward(dim, net=binary_feed_forward(dim)))
                                    for _ in range(num_blocks))

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        for ff in self.blocks:
            x = ff(x) + x
        return x.permute(0, 3, 1, 2)


class BinaryUNet(nn.Module):
    """One binarised U-Net (official ``BiSRNet_body``): (B, C, H, W) -> (B, C, H, W), H and W multiples of 4.

    Two levels (C, 2C) and a bottleneck (4C) with ``num_blocks`` = (level 1, level 2, bottleneck) blocks;
    decoder level i fuses the up-sampled features with the skip by an averaging pair.
    """

    LEVELS = 2

    def __init__(self, dim: int, num_blocks: Sequence[int]):
        super().__init__()
        if len(num_blocks) != self.LEVELS + 1:
            raise ValueError(f"BiSRNet num_blocks needs {self.LEVELS + 1} entries (two levels and the "
                             f"bottleneck), got {list(num_blocks)}")
        self.embedding = BinaryConv2d(dim, 3, padding=1)
        self.encoder_layers = nn.ModuleList()
        width = dim
        for level in range(self.LEVELS):
            self.encoder_layers.append(nn.ModuleList([
                BinaryBlock(width, num_blocks[level]),
                BinaryConvPair(width, 3, "concat", resample="down"),
            ]))
            width *= 2
        self.bottleneck = BinaryBlock(width, num_blocks[-1])
        self.decoder_layers = nn.ModuleList()
        for level in reversed(range(self.LEVELS)):
            self.decoder_layers.append(nn.ModuleList([
                BinaryConvPair(width // 2, 3, "average", resample="up"),
                BinaryConvPair(width // 2, 1, "average"),
                BinaryBlock(width // 2, num_blocks[level]),
            ]))
            width //= 2
        self.mapping = BinaryConv2d(dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        fea, skips = encode(self.embedding(x), self.encoder_layers)
        fea = self.bottleneck(fea)
        for (up, fusion, block), skip in zip(self.decoder_layers, reversed(skips)):
            fea = block(fusion(torch.cat([up(fea), skip], dim=1)))
        return self.mapping(fea) + x


# ----------------------------------------------------------------------------------------- networks
class BiSRNet(nn.Module):
    """Simulation BiSRNet: ``model(y, Phi) -> (B, 28, H, W)``.

    ``y`` (B, 28, H, W): the toolbox ``H`` input (shift-back of y / 28 * 2); ``Phi`` (B or 1, 28, H, W): the
    3-D mask (the 2-D mask repeated on the bands, the toolbox ``Mask`` setting). H, W >= 5.
    """

    mask_aware = True
    """Takes the coded mask as an input (``bisrnet_real`` does not)."""
    size_rule = SizeRule(minimum=5, reason=f"reflect padding to multiples of {PAD_MULTIPLE} needs pad < size")

    def __init__(self, in_channels: int = BANDS, out_channels: int = BANDS, n_feat: int = BANDS,
                 stage: int = 1, num_blocks: Sequence[int] = (1, 1, 1)):
        super().__init__()
        if out_channels != n_feat:
            raise ValueError(f"BiSRNet adds conv_in's output (n_feat={n_feat} channels) to the result: "
                             f"out_channels must equal n_feat, got {out_channels}")
        if stage < 1:
            raise ValueError(f"BiSRNet needs stage >= 1 binarised U-Nets, got {stage}")
        self.in_channels, self.stage = in_channels, stage
        self.conv_in = nn.Conv2d(in_channels, n_feat, kernel_size=3, padding=1, bias=False)
        bodies = [BinaryUNet(n_feat, num_blocks) for _ in range(stage)]   # built before fution, as officially
        self.fution = nn.Conv2d(2 * in_channels, in_channels, kernel_size=1, bias=True)
        self.body = nn.Sequential(*bodies)
        self.conv_out = nn.Conv2d(n_feat, out_channels, kernel_size=3, padding=1, bias=False)

    def reconstruct(self, x: Tensor) -> Tensor:
        """The network after the input mixing: (B, in_channels, H, W) -> (B, out_channels, H, W)."""
        height, width = x.shape[-2:]
        self.size_rule.check(height, width, f"{type(self).__name__} input")
        pad_h, pad_w = (-height) % PAD_MULTIPLE, (-width) % PAD_MULTIPLE
        x = self.conv_in(F.pad(x, [0, pad_w, 0, pad_h], mode="reflect"))
        out = self.conv_out(self.body(x)) + x
        return out[:, :, :height, :width]

    def forward(self, y: Tensor, Phi: Tensor) -> Tensor:  # noqa: N803 (official argument name)
        if y.dim() != 4 or y.shape[1] != self.in_channels:
            raise ValueError(f"BiSRNet: y must be the (B, {self.in_channels}, H, W) 'H' input, got {tuple(y.shape)}")
        if Phi.dim() != 4 or Phi.shape[1:] != y.shape[1:] or Phi.shape[0] not in (1, y.shape[0]):
            raise ValueError(f"BiSRNet: Phi must be the 3-D mask (B or 1, {self.in_channels}, {y.shape[2]}, "
                             f"{y.shape[3]}) matching y {tuple(y.shape)}, got {tuple(Phi.shape)}")
        return self.reconstruct(self.fution(torch.cat([y, Phi.to(y.dtype).expand_as(y)], dim=1)))

    def prepare_inputs(self, y: Tensor, op) -> dict[str, Tensor]:
        """``y`` = toolbox ``H`` (shift-back of y / 28 * 2 through the operator's dispersion), ``Phi`` = the
        operator's (warped) mask repeated on the bands; y (B, H, W + 54)."""
        if op.bands != self.in_channels:
            raise ValueError(f"BiSRNet is built for {self.in_channels} bands, the operator has {op.bands}")
        return {"y": op.input_setting(y, "H"), "Phi": op.mask_setting("Mask", y.shape[0])}

    @staticmethod
    def reconstruction(output: Tensor) -> Tensor:
        """The cube (B, 28, H, W): the forward's output itself."""
        return output


class BiSRNetReal(BiSRNet):
    """Real-data BiSRNet: ``model(y) -> (B, 28, H, W)`` from the measurement (B, H, W + 54), no mask.

    ``input_max``: ``prepare_inputs`` rescales each measurement to this maximum (0.8, the official real
    test); None gives y / 28 * 2 (the input of the official real training). Not a forward argument.
    """

    mask_aware = False

    def __init__(self, in_channels: int = BANDS, out_channels: int = BANDS, n_feat: int = BANDS,
                 stage: int = 1, num_blocks: Sequence[int] = (1, 1, 1), input_max: float | None = 0.8):
        if in_channels != BANDS:
            raise ValueError(f"bisrnet_real splits the measurement into {BANDS} bands; in_channels must be "
                             f"{BANDS}, got {in_channels}")
        if input_max is not None and not input_max > 0:
            raise ValueError(f"input_max must be a positive maximum or None, got {input_max}")
        super().__init__(in_channels, out_channels, n_feat, stage, num_blocks)
        self.input_max = input_max
        self.fution.requires_grad_(False)     # unused by the real forward; kept for strict loading

    def split(self, y: Tensor) -> Tensor:
        """(B, H, W + 54) or (B, 1, H, W + 54) measurement -> (B, 28, H, W), band c = columns 2c .. 2c + W - 1."""
        if y.dim() == 4 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 3 or y.shape[-1] - STEP * (BANDS - 1) < 1:
            raise ValueError(f"bisrnet_real: y must be the (B, H, W + {STEP * (BANDS - 1)}) measurement, "
                             f"got {tuple(y.shape)}")
        return shift_back(y, bands=BANDS, step=STEP)

    def forward(self, y: Tensor, Phi: Tensor | None = None) -> Tensor:  # noqa: N803
        if Phi is not None:
            raise ValueError("bisrnet_real does not use a mask (its forward takes the measurement only); "
                             "use 'bisrnet' for mask-aware reconstruction")
        return self.reconstruct(self.split(y))

    def prepare_inputs(self, y: Tensor, op) -> dict[str, Tensor]:
        """``{"y": measurement rescaled to max input_max per sample}`` (or y / 28 * 2 when None); the
        operator only fixes the geometry (28 bands, step 2) -- its mask is not an input."""
        if op.bands != BANDS or op.step != STEP:
            raise ValueError(f"bisrnet_real splits the measurement for {BANDS} bands at step {STEP}; the operator "
                             f"has {op.bands} bands, step {op.step}")
        if self.input_max is None:
            return {"y": op.input_setting(y, "Y")}
        peak = y.flatten(1).amax(dim=1)
        if not bool((peak > 0).all()):
            raise ValueError("bisrnet_real: a measurement has no positive value; cannot rescale it to max "
                             f"{self.input_max}")
        return {"y": y * (self.input_max / peak).view(-1, 1, 1)}


OFFICIAL_ARGS = {"in_channels": BANDS, "out_channels": BANDS, "n_feat": BANDS, "stage": 1,
                 "num_blocks": [1, 1, 1]}
"""BiSCI ``model_generator('bisrnet')``."""


@register_model("bisrnet", official_args=OFFICIAL_ARGS)
def bisrnet(**kwargs) -> BiSRNet:
    """BiSRNet, simulation (H input + 3-D mask), 0.66 M parameters."""
    return BiSRNet(**{**OFFICIAL_ARGS, **kwargs})


@register_model("bisrnet_real", official_args=OFFICIAL_ARGS)
def bisrnet_real(**kwargs) -> BiSRNetReal:
    """BiSRNet, real captures (measurement input scaled to max 0.8, no mask), 0.66 M parameters."""
    return BiSRNetReal(**{**OFFICIAL_ARGS, **kwargs})
