"""GAP-TV: TV step equals scikit-image, reconstruction improves on the back-projection, gradients flow."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.restoration import denoise_tv_chambolle

from cassi import CassiOperator, Mismatch
from cassi.gap_tv import gap_tv, tv_denoise
from data.synthetic import synthetic_scene


def test_tv_denoise_equals_scikit_image():
    image = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = tv_denoise(image, 0.1, 7).numpy()
    ref = denoise_tv_chambolle(image.numpy(), weight=0.1, max_num_iter=7, eps=0, channel_axis=0)
    assert np.abs(ours - ref).max() < 1e-10


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.clamp(0, 1) - b) ** 2).mean()))


@pytest.mark.parametrize("mismatch", [None, Mismatch(dx=0.4, dy=-0.3, theta=0.2, a1=2.02, alpha=0.3)])
def test_gap_tv_reconstructs_a_synthetic_scene(mismatch):
    cube, _ = synthetic_scene(48, 48, seed=0)
    x = torch.from_numpy(cube)[None]
    mask = (torch.rand(48, 48, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    op = CassiOperator(mask, mismatch=mismatch)
    y = op(x)
    recon = gap_tv(y, op, iterations=30, tv_weight=0.05)
    baseline = op.input_setting(y, "H")
    assert recon.shape == x.shape
    assert psnr(recon, x) > psnr(baseline, x) + 3
    assert float((op(recon) - y).norm() / y.norm()) < 0.1


def test_unrolled_gap_tv_is_differentiable_with_checkpointing():
    cube, _ = synthetic_scene(24, 24, seed=2)
    x = torch.from_numpy(cube)[None].double()
    mask = torch.rand(24, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = CassiOperator(mask, mismatch=Mismatch(dx=0.3))(x)

    def loss(dx: torch.Tensor, checkpoint: bool) -> torch.Tensor:
        op = CassiOperator(mask, mismatch=Mismatch(dx=dx))
        recon = gap_tv(y, op, iterations=4, tv_weight=0.05, checkpoint=checkpoint)
        return (op(recon) - y).pow(2).sum()

    grads = []
    for checkpoint in (False, True):
        dx = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
        loss(dx, checkpoint).backward()
        grads.append(float(dx.grad))
    assert grads[0] != 0.0
    assert grads[0] == pytest.approx(grads[1], rel=1e-9)


def test_gap_tv_rejects_bad_measurements():
    op = CassiOperator(torch.rand(8, 8))
    with pytest.raises(ValueError, match="NaN"):
        gap_tv(torch.full((1, 8, 62), float("nan")), op)
    with pytest.raises(ValueError, match="at least one iteration"):
        gap_tv(torch.rand(1, 8, 62), op, iterations=0)


def test_tv_denoise_differentiable_path_equals_in_place_path():
    image = torch.rand(2, 5, 20, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        fast = tv_denoise(image, 0.07, 6)
    tracked = image.clone().requires_grad_(True)
    slow = tv_denoise(tracked, 0.07, 6)
    assert slow.requires_grad
    assert torch.allclose(fast, slow.detach(), atol=1e-12)
