"""Shared MST-family blocks and the Swin / timm pieces the networks use: identical numbers, unchanged state-dict keys.

The official-fixture tests (test_mst, test_s2_transformer, test_crsdun) and the official-output tests of
test_bisrnet prove the networks built from these blocks; here each library piece is checked against the
plain formula it replaced, and the state-dict key sets of every registered model against those recorded
before the blocks were shared (HSRA has no official fixture).
"""
from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import create_model, list_models
from models.mst_blocks import (FeedForward, PreNorm, SpectralMSA, encode, relative_position_index, trunc_normal_,
                               window_merge, window_partition)
from models.s2_transformer import DropPath, Mlp

# sha256 of repr(sorted((key, shape) ...))[:16] of each model's state dict, recorded before the refactor
# (s2_transformer with the light build below).
KEYS_BEFORE = {
    "bisrnet": "dab719b68e5849f0", "bisrnet_real": "dab719b68e5849f0",
    "crsdun_3stg": "abc592cef92a686a", "crsdun_5stg": "07e7c1e1477b150e",
    "hsra_dum_3stg": "5c66c119e63402b1", "hsra_dum_4stg": "1f9f7ac8043a6210",
    "hsra_l": "9e893482d506d44b", "hsra_m": "b3fa295b697d47a6", "hsra_s": "76d083edf5f70e2b",
    "mst_l": "93eca8b4454535ba", "mst_l_real": "75b9feba1bb43cb1", "mst_m": "9e4942f461373be1",
    "mst_m_real": "65ad2d87f7adb3fa", "mst_s": "eab1806c8c420ed7", "mst_s_real": "eb61c5b6245eedcd",
    "s2_transformer": "055278424f863a1d",
}
LIGHT = {"s2_transformer": dict(img_size=16, window_size=8, embed_dim=12, depths=[1], num_heads=[2], spe_dim_head=6)}


@pytest.mark.parametrize("name", sorted(KEYS_BEFORE))
def test_state_dict_keys_are_unchanged(name):
    state = create_model(name, **LIGHT.get(name, {})).state_dict()
    keys = sorted((k, tuple(v.shape)) for k, v in state.items())
    assert hashlib.sha256(repr(keys).encode()).hexdigest()[:16] == KEYS_BEFORE[name]


def test_every_registered_model_has_recorded_keys():
    assert set(list_models()) <= set(KEYS_BEFORE), "record the keys of a new model in KEYS_BEFORE"


# ------------------------------------------------------------------------ Swin / timm pieces = formulas
def test_trunc_normal_is_the_official_inverse_cdf_stream():
    """The official codes' sampler (uniform on [2l-1, 2u-1], erfinv, scale, clamp): same seed, same numbers."""
    std, bound = 0.02, 2.0
    torch.manual_seed(3)
    ours = trunc_normal_(torch.empty(10_000), std=std)
    torch.manual_seed(3)
    cdf_hi = (1.0 + math.erf(bound / std / math.sqrt(2.0))) / 2.0
    reference = torch.empty(10_000).uniform_(1 - 2 * cdf_hi, 2 * cdf_hi - 1).erfinv_()
    reference = reference.mul_(std * math.sqrt(2.0)).clamp_(-bound, bound)
    assert torch.equal(ours, reference)


def test_mlp_is_linear_gelu_linear():
    torch.manual_seed(0)
    mlp = Mlp(12, 48)
    x = torch.randn(2, 7, 12)
    assert [k for k in mlp.state_dict()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert torch.equal(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))


@pytest.mark.parametrize("window", [4, (2, 4)])
def test_window_helpers_are_the_swin_reshapes(window):
    x = torch.randn(2, 8, 12, 5)
    wh, ww = (window, window) if isinstance(window, int) else window
    windows = window_partition(x, window)
    reference = x.view(2, 8 // wh, wh, 12 // ww, ww, 5).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, 5)
    assert torch.equal(windows, reference)
    assert torch.equal(window_merge(windows, window, (8, 12)), x)


def test_relative_position_index_is_the_swin_formula():
    window = 8
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    assert torch.equal(relative_position_index(window), rel[0] * (2 * window - 1) + rel[1])


def test_drop_path_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    x = torch.randn(64, 5, 3)
    drop = DropPath(0.25)
    assert torch.equal(drop.eval()(x), x)
    out = drop.train()(x)
    kept = out.flatten(1).ne(0).any(1)
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert not out[~kept].any()
    assert 0 < int(kept.sum()) < 64


def test_pieces_equal_timms_where_timm_is_installed():
    """Same numbers, same random streams and state-dict keys as the timm functions they replace."""
    timm_layers = pytest.importorskip("timm.layers")
    swin = pytest.importorskip("timm.models.swin_transformer")
    for seed in range(3):
        torch.manual_seed(seed)
        ours = trunc_normal_(torch.empty(1000), std=0.02)
        torch.manual_seed(seed)
        assert torch.equal(ours, timm_layers.trunc_normal_(torch.empty(1000), std=0.02))
    assert torch.equal(relative_position_index(7), swin.get_relative_position_index(7, 7))
    x = torch.randn(2, 8, 12, 5)
    assert torch.equal(window_partition(x, (2, 4)), swin.window_partition(x, (2, 4)).flatten(1, 2))
    torch.manual_seed(0)
    ours_mlp = Mlp(12, 48, drop=0.1)
    torch.manual_seed(0)
    timm_mlp = timm_layers.Mlp(12, 48, drop=0.1)
    assert list(ours_mlp.state_dict()) == list(timm_mlp.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours_mlp.state_dict().values(), timm_mlp.state_dict().values()))
    for ours_layer, timm_layer in ((ours_mlp, timm_mlp), (DropPath(0.3), timm_layers.DropPath(0.3))):
        torch.manual_seed(1)
        ours_out = ours_layer.train()(torch.ones(16, 4, 12))
        torch.manual_seed(1)
        assert torch.equal(ours_out, timm_layer.train()(torch.ones(16, 4, 12)))


# ---------------------------------------------------------------------------------- shared blocks
def test_feed_forward_and_prenorm_layouts_agree():
    """Channels-first (CRSDUN) and channels-last (MST) use of the same weights give the same numbers."""
    torch.manual_seed(0)
    tokens = torch.randn(2, 6, 10, 8)
    last = PreNorm(8, FeedForward(8))
    first = PreNorm(8, FeedForward(8, channels_last=False), channels_last=False)
    first.load_state_dict(last.state_dict())
    assert list(last.state_dict()) == ["fn.net.0.weight", "fn.net.2.weight", "fn.net.4.weight",
                                       "norm.weight", "norm.bias"]
    torch.testing.assert_close(first(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), last(tokens))
    residual = PreNorm(8, FeedForward(8), residual=True)
    residual.load_state_dict(last.state_dict())
    torch.testing.assert_close(residual(tokens), tokens + last(tokens))
    with pytest.raises(ValueError, match="LayerNorm"):
        PreNorm(8, nn.Identity(), norm="gn")


def test_spectral_msa_without_guidance_has_no_mask_branch():
    """S²-Transformer's Spe-MSA: MST's MS-MSA without ``mm`` (the outputs are checked by both fixtures)."""
    torch.manual_seed(0)
    attn = SpectralMSA(8, dim_head=4, heads=2)
    x = torch.randn(1, 5, 6, 8)
    assert attn.mm is None and torch.equal(attn(x), attn(x, torch.randn(1, 8, 5, 6)))
    assert list(attn.state_dict()) == ["rescale", "to_q.weight", "to_k.weight", "to_v.weight", "proj.weight",
                                       "proj.bias", "pos_emb.0.weight", "pos_emb.2.weight"]


def test_encode_returns_the_skips_top_first():
    layers = nn.ModuleList([nn.ModuleList([nn.Identity(), nn.AvgPool2d(2)]) for _ in range(2)])
    x = torch.randn(1, 3, 8, 8)
    bottom, skips = encode(x, layers)
    assert [tuple(s.shape[-2:]) for s in skips] == [(8, 8), (4, 4)] and bottom.shape[-2:] == (2, 2)
