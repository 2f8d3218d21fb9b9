"""GAP-TV: TV step equals scikit-image, reconstruction improves on the back-projection, gradients flow."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from skimage.restoration import denoise_tv_chambolle

from cassi import CassiOperator, Mismatch
from cassi.gap_tv import gap_tv, tv_denoise
from data.synthetic import synthetic_scene

SHAPES = [(3, 20, 24), (2, 17, 9), (2, 3, 11, 16), (1, 1, 5), (2, 6, 1), (7, 7)]


def random_image(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_tv_denoise_equals_scikit_image(shape, dtype):
    image = random_image(shape, dtype)
    with torch.no_grad():
        ours = tv_denoise(image, 0.1, 7)
    slices = image.reshape(-1, *shape[-2:]).numpy()
    ref = denoise_tv_chambolle(slices, weight=0.1, max_num_iter=7, eps=0, channel_axis=0)
    assert ours.shape == image.shape and ours.dtype == image.dtype
    assert np.array_equal(ours.reshape(slices.shape).numpy(), ref)  # same operations, same order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_tv_denoise_differentiable_path_equals_fused_path(shape, dtype):
    image = random_image(shape, dtype, seed=5)
    for iterations in (0, 1, 2, 6):
        with torch.no_grad():
            fused = tv_denoise(image, 0.07, iterations)
        tracked = image.clone().requires_grad_(True)
        slow = tv_denoise(tracked, 0.07, iterations)
        assert slow.requires_grad
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        assert torch.allclose(fused, slow.detach(), rtol=tol, atol=tol)


def test_tv_denoise_does_not_depend_on_the_thread_count():
    image = random_image((2, 5, 33, 20), torch.float32, seed=3)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(tv_denoise(image, 0.1, 5))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_tv_denoise_leaves_its_input_alone_and_takes_views():
    image = random_image((3, 24, 20), torch.float64, seed=4)
    copy = image.clone()
    view = image.transpose(-1, -2)  # not contiguous
    out = tv_denoise(view, 0.1, 5)
    assert torch.equal(image, copy)
    assert torch.equal(out, tv_denoise(view.contiguous(), 0.1, 5))
    assert tv_denoise(torch.zeros(0, 4, 4), 0.1).shape == (0, 4, 4)


def test_tv_denoise_from_threads_and_forked_processes():
    images = [random_image((4, 16, 12), torch.float32, seed=s) for s in range(4)]
    expected = [tv_denoise(im, 0.1, 5) for im in images]
    with ThreadPoolExecutor(2) as pool:  # concurrent calls are serialised, not fatal
        assert all(torch.equal(a, b) for a, b in zip(pool.map(lambda im: tv_denoise(im, 0.1, 5), images),
                                                    expected))
    with multiprocessing.get_context("fork").Pool(1) as pool:  # e.g. DataLoader workers
        child = pool.apply_async(tv_denoise, (images[0], 0.1, 5)).get(timeout=60)
    assert torch.equal(child, expected[0])


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
