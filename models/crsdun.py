"""CRSDUN: cooperative reconstruction-segmentation deep unfolding network (He et al., CVPR 2026).

Re-implementation of ``models/CRSDUN.py`` of zjhe02/CRSDUN (commit f79bd3e0); state-dict names are the
official ones, so official weights load with no key mapping.

Each of the ``stage`` HQS iterations updates the cube ``x`` and the segmentation logits ``theta``:

1. a degradation-aware estimator predicts (a, mu, b, gamma) from ``[x, theta]``;
2. reconstruction gradient step, with ``theta`` entering through a learned spectral dictionary ``phi``:
   ``x~ = mu x + (1 - mu) phi(theta)``, ``z = x~ + A^T((y - A x~) / (sum_c Phi_c^2 + a))``;
3. proximal network: ``CAT_Rec`` (U-Net, SSRB encoder, CASTAB decoder guided by ``theta``) + ARB;
4. segmentation LISTA step: ``xi = soft_b(S xi + W x + gamma theta)`` (S, W shared 1x1 convs);
5. proximal network: ``theta = CAT_Seg(xi, x) + xi`` (Swin encoder, CASTAB decoder guided by ``x``).

The first stage uses the non-cross variants (no guidance) as the official code does.

Spatial size: H and W must be multiples of 32 (a clear error otherwise). The official code fails
there too, deep inside the network: the segmentation branch needs 8x8 windows at 1/4 resolution
and the guided stages concatenate unpadded guides. Its reflect-padding (to multiples of 16) in
``CAT_Rec`` and zero padding in CASTA therefore never act on a valid input and are left out here.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cassi.shifts import shift, shift_back
from models.crsdun_blocks import ARB, CASTAB, SSRB, MaskEmbedding, SwinBlock
from models.mst_blocks import encode, trunc_normal_
from models.registry import register_model
from models.sizes import SizeRule

STEP = 2          # dispersion step (px per band) hard-coded in the official model


class ParaEstimator(nn.Module):
    """Degradation-aware estimator: (B, in_nc, H, W) -> (B, 4, 1, 1) = (a, mu, b, gamma) per sample.

    Pointwise conv + ReLU, global average pool, 3-layer 1x1 MLP, plus a learnable offset initialised
    to (1, 1, 0.01, 0) (official ``Para_Estimator``).
    """

    def __init__(self, in_nc: int, out_nc: int = 4, channel: int = 32):
        super().__init__()
        self.fusion = nn.Conv2d(in_nc, channel, 1, 1, 0, bias=True)
        self.bias = nn.Parameter(torch.tensor([1.0, 1.0, 0.01, 0.0]).view(out_nc, 1, 1))
        self.mlp = nn.Sequential(
            nn.Conv2d(channel, channel, 1, padding=0, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel, channel, 1, padding=0, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel, out_nc, 1, padding=0, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(F.adaptive_avg_pool2d(torch.relu(self.fusion(x)), 1)) + self.bias


class CATRec(nn.Module):
    """Reconstruction proximal network (official ``CAT_Rec``): 2-level U-Net on ``dim`` = bands channels.

    ``cross=True``: the two decoder levels are CASTABs guided by embeddings of ``theta`` followed by
    ARBs; ``cross=False`` (first stage): plain SSRBs. Output = ``out(features) + x`` (B, dim, H, W).
    """

    def __init__(self, dim: int, n_class: int, cross: bool = True):
        super().__init__()
        self.cross = cross
        self.mask_embedding = MaskEmbedding(dim)
        self.down1 = SSRB(dim=dim, dim_head=dim)
        self.downsample1 = nn.Conv2d(dim, dim * 2, 4, 2, 1, bias=False)
        self.down2 = SSRB(dim=dim * 2, dim_head=dim)
        self.downsample2 = nn.Conv2d(dim * 2, dim * 4, 4, 2, 1, bias=False)
        self.bottleneck = SSRB(dim=dim * 4, dim_head=dim)
        if cross:
            self.up2 = CASTAB(dim=dim * 2, heads=2, stoken_size=4, num_blocks=1)
            self.up1 = CASTAB(dim=dim, heads=1, stoken_size=8, num_blocks=1)
            self.theta_emb1 = nn.Conv2d(n_class, dim, 1)
            self.theta_emb2 = nn.Sequential(nn.Conv2d(n_class, dim, 1),
                                            nn.Conv2d(dim, dim * 2, 4, 2, 1, bias=False))
            self.arb2 = ARB(dim=dim * 2)
            self.arb1 = ARB(dim=dim)
        else:
            self.up2 = SSRB(dim=dim * 2, dim_head=dim)
            self.up1 = SSRB(dim=dim, dim_head=dim)
        self.upsample2 = nn.ConvTranspose2d(dim * 4, dim * 2, 2, 2)
        self.fusion2 = nn.Conv2d(dim * 4, dim * 2, 1, 1, 0, bias=False)
        self.upsample1 = nn.ConvTranspose2d(dim * 2, dim, 2, 2)
        self.fusion1 = nn.Conv2d(dim * 2, dim, 1, 1, 0, bias=False)
        self.out = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor, theta: Tensor | None = None) -> Tensor:
        """x, mask (B, dim, H, W); theta (B, n_class, H, W), required when ``cross``."""
        f = self.mask_embedding(x, mask)
        f1 = self.down1(f)
        f2 = self.down2(self.downsample1(f1))
        f = self.bottleneck(self.downsample2(f2))
        f = self.fusion2(torch.cat([self.upsample2(f), f2], dim=1))
        f = self.arb2(self.up2(f, self.theta_emb2(theta))) if self.cross else self.up2(f)
        f = self.fusion1(torch.cat([self.upsample1(f), f1], dim=1))
        f = self.arb1(self.up1(f, self.theta_emb1(theta))) if self.cross else self.up1(f)
        return self.out(f) + x


class CATSeg(nn.Module):
    """Segmentation proximal network (official ``CAT_Seg``): 2-level U-Net, Swin encoder/bottleneck.

    ``cross=True``: the decoder levels are CASTABs whose pixel features come from embeddings of the
    reconstructed cube (``guide_as_pixels``); ``cross=False``: Swin blocks. (B, in_dim, H, W) ->
    (B, out_dim, H, W).
    """

    levels = 2

    def __init__(self, in_dim: int, dim: int, out_dim: int, cross: bool = True):
        super().__init__()
        self.cross = cross
        self.embedding = nn.Conv2d(in_dim, dim, 3, 1, 1, bias=False)
        self.encoder_layers = nn.ModuleList()
        width = dim
        for _ in range(self.levels):
            self.encoder_layers.append(nn.ModuleList([
                SwinBlock(dim=width, heads=width // dim, num_blocks=2),
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
            ]))
            width *= 2
        self.bottleneck = SwinBlock(dim=width, heads=width // dim, num_blocks=2)
        self.decoder_layers = nn.ModuleList()
        for _ in range(self.levels):
            half, heads = width // 2, width // 2 // dim
            self.decoder_layers.append(nn.ModuleList([
                nn.ConvTranspose2d(width, half, stride=2, kernel_size=2),
                nn.Conv2d(width, half, 1, 1, bias=False),
                CASTAB(dim=half, heads=heads, stoken_size=8 // heads, num_blocks=2) if cross
                else SwinBlock(dim=half, heads=heads, num_blocks=2),
            ]))
            width = half
        if cross:
            self.x_emb1 = nn.Conv2d(dim, dim, 1)
            self.x_emb2 = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim * 2, 4, 2, 1, bias=False))
        self.mapping = nn.Conv2d(dim, out_dim, 3, 1, 1, bias=False)
        for m in self.modules():  # official init: every Linear (window attention) ~ trunc N(0, 0.02)
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, kexi: Tensor, emb: Tensor | None = None) -> Tensor:
        """kexi (B, in_dim, H, W) LISTA output; emb (B, dim, H, W) the cube, required when ``cross``."""
        guides = [self.x_emb1(emb), self.x_emb2(emb)] if self.cross else None
        fea, skips = encode(self.embedding(kexi), self.encoder_layers)
        fea = self.bottleneck(fea)
        for level, (up, fusion, block) in enumerate(self.decoder_layers):
            depth = self.levels - 1 - level
            fea = fusion(torch.cat([up(fea), skips[depth]], dim=1))
            fea = block(fea, guides[depth], guide_as_pixels=True) if self.cross else block(fea)
        return self.mapping(fea)


class CRSDUN(nn.Module):
    """Cooperative reconstruction + segmentation unfolding network (H, W multiples of 32: :attr:`size_rule`).

    ``model(y, input_mask)``: ``y`` (B, H, W + 2(bands-1)) raw measurement (not normalised),
    ``input_mask = (mask3d (B, bands, H, W), Phi (B, bands, H, Wm) shifted 3-D mask,
    Phi_s (B, 1, H, Wm) = sum_c Phi_c^2 with zeros set to 1)``. Returns
    ``[x_list, theta_list]``: per-stage cubes (B, bands, H, W) and segmentation logits (B, n_class, H, W).
    """

    size_rule = SizeRule((32, 32), reason="8x8 windows of the segmentation branch at 1/4 resolution")

    def __init__(self, stage: int, bands: int, n_class: int):
        super().__init__()
        self.stage = stage
        self.nC = bands
        self.n_class = n_class
        self.phi = nn.Conv2d(n_class, bands, 1, bias=False)        # learnable spectral dictionary
        self.initial = nn.Conv2d(bands * 2, bands, 1, 1, 0)
        self.s = nn.Conv2d(n_class, n_class, 1, bias=False)        # LISTA S (shared by all stages)
        self.w = nn.Conv2d(bands, n_class, 1, bias=False)          # LISTA W (shared by all stages)
        self.para_est = nn.ModuleList(ParaEstimator(bands + n_class, out_nc=4) for _ in range(stage))
        layers = []
        for i in range(stage):  # stage 0: self-attention only (official: "for convergence stability")
            layers += [CATRec(dim=bands, n_class=n_class, cross=i > 0),
                       ARB(dim=bands),
                       CATSeg(in_dim=n_class, dim=bands, out_dim=n_class, cross=i > 0)]
        self.net_stage = nn.ModuleList(layers)

    def _check_inputs(self, y: Tensor, input_mask: Any) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(input_mask, (tuple, list)) or len(input_mask) != 3:
            raise ValueError("input_mask must be the tuple (mask3d, Phi, Phi_s)")
        mask3d, phi_shift, phi_s = input_mask
        if y.dim() != 3:
            raise ValueError(f"y must be (B, H, Wm), got shape {tuple(y.shape)}")
        b, h, wm = y.shape
        w = wm - STEP * (self.nC - 1)
        expected = {"mask3d": (b, self.nC, h, w), "Phi": (b, self.nC, h, wm), "Phi_s": (b, 1, h, wm)}
        for name, t in zip(expected, (mask3d, phi_shift, phi_s)):
            if tuple(t.shape) != expected[name]:
                raise ValueError(f"input_mask {name} must have shape {expected[name]} for y of shape "
                                 f"{tuple(y.shape)}, got {tuple(t.shape)}")
        self.size_rule.check(h, w, "CRSDUN input")
        return mask3d, phi_shift, phi_s

    def _forward_model(self, phi_shift: Tensor, x: Tensor) -> Tensor:
        """A x: (B, bands, H, W) -> (B, 1, H, Wm)."""
        return (phi_shift * shift(x, STEP)).sum(dim=1, keepdim=True)

    def _adjoint(self, phi_shift: Tensor, g: Tensor) -> Tensor:
        """A^T g: (B, 1, H, Wm) -> (B, bands, H, W)."""
        return shift_back(phi_shift * g, step=STEP)

    def forward(self, y: Tensor, input_mask: tuple[Tensor, Tensor, Tensor]) -> list[list[Tensor]]:
        mask3d, phi_shift, phi_s = self._check_inputs(y, input_mask)
        x0 = shift_back(y / self.nC * 2, bands=self.nC, step=STEP)   # official normalisation y / 28 * 2
        y = y.unsqueeze(1)
        x = self.initial(torch.cat([x0, mask3d], dim=1))
        b, _, h, w = x.shape
        theta = x.new_zeros(b, self.n_class, h, w)
        kexi = x.new_zeros(b, self.n_class, h, w)
        x_list, theta_list = [], []
        for i in range(self.stage):
            rec_net, refine, seg_net = self.net_stage[3 * i: 3 * i + 3]
            a, mu, thr, gamma = self.para_est[i](torch.cat([x, theta], dim=1)).split(1, dim=1)
            # reconstruction: gradient step on the data term, pulled towards phi(theta)
            x_mix = mu * x + (1 - mu) * self.phi(theta)
            residual = (y - self._forward_model(phi_shift, x_mix)) / (phi_s + a)
            z = x_mix + self._adjoint(phi_shift, residual)
            x = refine(rec_net(z, mask3d, theta) if i > 0 else rec_net(z, mask3d))
            # segmentation: LISTA step (soft threshold) then the proximal network
            pre = self.s(kexi) + self.w(x) + gamma * theta
            kexi = torch.sign(pre) * torch.clamp(torch.abs(pre) - thr, 0)
            theta = (seg_net(kexi, x) if i > 0 else seg_net(kexi)) + kexi
            x_list.append(x)
            theta_list.append(theta)
        return [x_list, theta_list]

    def prepare_inputs(self, y: Tensor, op: Any) -> dict[str, Any]:
        """Forward arguments from a raw measurement ``y`` (B, H, Wm) and a ``cassi.CassiOperator``."""
        if op.bands != self.nC or op.step != STEP:
            raise ValueError(f"CRSDUN is built for {self.nC} bands with dispersion step {STEP}; "
                             f"the operator has {op.bands} bands, step {op.step}")
        b = y.shape[0]
        mask3d = op.mask_setting("Mask", b)
        phi, phi_sum_sq = op.mask_setting("Phi_PhiPhiT", b)
        return {"y": y, "input_mask": (mask3d, phi, phi_sum_sq.unsqueeze(1))}

    @staticmethod
    def reconstruction(output: list[list[Tensor]]) -> Tensor:
        """The last stage's cube (B, bands, H, W)."""
        return output[0][-1]

    @staticmethod
    def segmentation(output: list[list[Tensor]]) -> Tensor:
        """The last stage's segmentation logits (B, n_class, H, W)."""
        return output[1][-1]


@register_model("crsdun_3stg", official_args={"stage": 3, "bands": 28, "n_class": 23})
def crsdun_3stg(**kwargs: Any) -> CRSDUN:
    """CRSDUN with 3 stages (paper: 4.02 M parameters)."""
    return CRSDUN(**{"stage": 3, "bands": 28, "n_class": 23, **kwargs})


@register_model("crsdun_5stg", official_args={"stage": 5, "bands": 28, "n_class": 23})
def crsdun_5stg(**kwargs: Any) -> CRSDUN:
    """CRSDUN with 5 stages (paper: 6.73 M parameters; the official model builder's default)."""
    return CRSDUN(**{"stage": 5, "bands": 28, "n_class": 23, **kwargs})
