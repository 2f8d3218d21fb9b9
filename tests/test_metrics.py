"""Metrics against independent computations (numpy / scipy MATLAB-style, scikit-image)."""
import numpy as np
import pytest
import torch
from scipy.signal import correlate2d
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from cassi.metrics import (ReconstructionMetrics, ergas, kaist_metrics, kaist_psnr, kaist_ssim, psnr, quantize_8bit,
                           sam, ssim)


def _pair(b=2, bands=4, h=32, w=28, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, bands, h // 4, w // 4, generator=g)
    target = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    pred = target + noise * torch.randn(b, bands, h, w, generator=g)  # goes outside [0, 1] in places
    return pred.double(), target.double()


def _matlab_ssim_index(img1, img2):
    """Wang's ssim_index.m default path, written out with scipy (filter2 'valid' = correlate2d 'valid')."""
    r = np.arange(11) - 5
    win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    win /= win.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    f = lambda z: correlate2d(z, win, mode="valid")  # noqa: E731
    mu1, mu2 = f(img1), f(img2)
    s1, s2, s12 = f(img1 * img1) - mu1 ** 2, f(img2 * img2) - mu2 ** 2, f(img1 * img2) - mu1 * mu2
    return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))).mean()


def _im2uint8(x):
    return np.floor(np.clip(x, 0, 1) * 255 + 0.5)


def test_quantisation_is_matlab_im2uint8():
    x = torch.tensor([-0.2, 0.0, 0.3 / 255, 0.7 / 255, 0.5, 1.0, 1.7], dtype=torch.float64)
    assert quantize_8bit(x).tolist() == [0, 0, 0, 1, 128, 255, 255]


def test_kaist_psnr_matches_csnr_on_quantised_bands():
    pred, target = _pair()
    p, t = _im2uint8(pred.numpy()), _im2uint8(target.numpy())
    expected = [np.mean([10 * np.log10(255 ** 2 / np.mean((p[i, c] - t[i, c]) ** 2)) for c in range(4)])
                for i in range(2)]
    out = kaist_psnr(pred, target)
    assert out.shape == (2,) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    # float PSNR: no clipping or quantisation
    raw = [np.mean([10 * np.log10(1 / np.mean((pred.numpy()[i, c] - target.numpy()[i, c]) ** 2)) for c in range(4)])
           for i in range(2)]
    np.testing.assert_allclose(psnr(pred, target).numpy(), raw, rtol=1e-12)
    assert torch.isinf(psnr(target, target)).all()


def test_kaist_ssim_matches_matlab_ssim_index_and_skimage():
    pred, target = _pair()
    p, t = _im2uint8(pred.numpy()), _im2uint8(target.numpy())
    matlab = [np.mean([_matlab_ssim_index(p[i, c], t[i, c]) for c in range(4)]) for i in range(2)]
    sk = [np.mean([structural_similarity(p[i, c], t[i, c], gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=255) for c in range(4)])
          for i in range(2)]
    out = kaist_ssim(pred, target)
    np.testing.assert_allclose(out.numpy(), matlab, rtol=1e-10)
    np.testing.assert_allclose(out.numpy(), sk, rtol=1e-10)  # skimage crops the same 'valid' border
    assert torch.allclose(kaist_ssim(target, target), torch.ones(2, dtype=torch.float64))


def test_float_ssim_scales_constants_with_data_range():
    pred, target = _pair(noise=0.02)
    expected = [np.mean([structural_similarity(pred.numpy()[i, c], target.numpy()[i, c], gaussian_weights=True,
                                               sigma=1.5, use_sample_covariance=False, data_range=1.0)
                         for c in range(4)]) for i in range(2)]
    np.testing.assert_allclose(ssim(pred, target).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(ssim(pred * 255, target * 255, data_range=255.0).numpy(), expected, rtol=1e-10)


def test_torchmetrics_default_ssim_differs_but_its_cropped_map_agrees():
    pred, target = _pair(b=1)
    p, t = quantize_8bit(pred), quantize_8bit(target)
    ours = kaist_ssim(pred, target)
    default = tm_ssim(p, t, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=255.0)
    assert abs(default.item() - ours.item()) > 1e-4  # reflect-padded full map: not the protocol
    _, full = tm_ssim(p, t, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=255.0,
                      return_full_image=True)
    assert abs(full[..., 5:-5, 5:-5].mean().item() - ours.item()) < 1e-10


def test_torchmetrics_psnr_agrees_only_to_float32_rounding():
    """Why kaist_psnr keeps its own three lines: torchmetrics' per-band PSNR is not csnr.m to the last bit."""
    pred, target = _pair()
    ours = kaist_psnr(pred, target)
    per_band = tm_psnr(quantize_8bit(pred), quantize_8bit(target), data_range=255.0, reduction="none", dim=(2, 3))
    theirs = per_band.reshape(2, -1).mean(dim=1)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert not torch.equal(theirs, ours)


def test_sam_degrees_and_zero_spectra():
    x = torch.rand(2, 5, 6, 7, dtype=torch.float64) + 0.1
    assert torch.allclose(sam(x, x), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(sam(3 * x, x), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    a = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    b = torch.zeros(1, 4, 2, 2, dtype=torch.float64)
    a[:, :2], b[:, 2:] = 1.0, 1.0
    assert torch.allclose(sam(a, b), torch.tensor([90.0], dtype=torch.float64))
    assert sam(torch.zeros_like(a), torch.zeros_like(b)).item() == 0.0
    # against the per-pixel angle formula
    pred, target = _pair()
    p, t = pred.numpy(), target.numpy()
    cos = (p * t).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1))
    np.testing.assert_allclose(sam(pred, target).numpy(), np.degrees(np.arccos(cos)).mean((1, 2)), rtol=1e-9)


def test_ergas_formula():
    pred, target = _pair()
    p, t = pred.numpy(), target.numpy()
    rmse = np.sqrt(((p - t) ** 2).mean((2, 3)))
    expected = 100 * np.sqrt(((rmse / t.mean((2, 3))) ** 2).mean(1))
    np.testing.assert_allclose(ergas(pred, target).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(ergas(pred, target, ratio=0.25).numpy(), expected / 4, rtol=1e-12)
    assert ergas(target, target).abs().max() == 0


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(2, 4, 32, 28\) and \(2, 4, 32, 27\)"):
        psnr(torch.zeros(2, 4, 32, 28), torch.zeros(2, 4, 32, 27))
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(torch.zeros(1, 2, 10, 30), torch.zeros(1, 2, 10, 30))


def test_kaist_metrics_refuses_an_h_w_l_cube_unless_bands_states_the_layout():
    """torch.from_numpy of a numpy (H, W, L) cube was scored as H bands of W x L images, without a word."""
    pred, target = (t[0] for t in _pair(b=1, bands=28, h=32, w=36))        # (L, H, W) = (28, 32, 36)
    assert kaist_metrics(pred, target, bands=28) == kaist_metrics(pred, target)
    hwl = pred.permute(1, 2, 0), target.permute(1, 2, 0)                    # (32, 36, 28)
    with pytest.raises(ValueError, match=r"are \(32, 36, 28\): kaist_metrics takes \(L, H, W\) cubes, .*"
                                         r"\(H, W, L\) cube: permute both, x\.permute\(2, 0, 1\)"):
        kaist_metrics(*hwl)
    with pytest.raises(ValueError, match=r"not \(L, H, W\) with L = bands = 28 \(an \(H, W, L\) cube\? permute both"):
        kaist_metrics(*hwl, bands=28)
    narrow = pred[..., :20], target[..., :20]                               # (28, 32, 20): narrower than L
    with pytest.raises(ValueError, match=r"narrower than its band count: pass bands=L"):
        kaist_metrics(*narrow)
    assert kaist_metrics(*narrow, bands=28)["psnr"] > 20


def test_reconstruction_metrics_accumulates_and_merges_like_ddp():
    pred, target = _pair(b=4)
    whole = ReconstructionMetrics()
    whole.update(pred[:3], target[:3])
    whole.update(pred[3:], target[3:])
    out = whole.compute()
    assert torch.allclose(out["psnr"], kaist_psnr(pred, target).mean())
    assert torch.allclose(out["ssim"], kaist_ssim(pred, target).mean())
    assert torch.allclose(out["sam"], sam(quantize_8bit(pred), quantize_8bit(target)).mean())
    # two "ranks" whose summed states are merged give the same means
    ranks = [ReconstructionMetrics(), ReconstructionMetrics()]
    ranks[0].update(pred[:1], target[:1])
    ranks[1].update(pred[1:], target[1:])
    ranks[0].merge_state(ranks[1])
    for key, value in ranks[0].compute().items():
        assert torch.allclose(value, out[key])
    flt = ReconstructionMetrics(protocol="float")
    flt.update(pred, target)
    assert torch.allclose(flt.compute()["psnr"], psnr(pred, target).mean())
    with pytest.raises(ValueError, match="protocol"):
        ReconstructionMetrics(protocol="matlab")


def test_reconstruction_metrics_refuse_a_channels_last_batch_when_told_the_band_count():
    """Was: a (B, H, W, L) batch was scored over the wrong axis without a word."""
    pred, target = _pair(b=2, bands=28)
    metrics = ReconstructionMetrics(bands=28)
    metrics.update(pred, target)
    last = pred.permute(0, 2, 3, 1), target.permute(0, 2, 3, 1)
    with pytest.raises(ValueError, match=r"expected \(B, L, H, W\) with L = bands = 28 \(a \(B, H, W, L\) batch\?"):
        metrics.update(*last)
    ReconstructionMetrics().update(*last)                   # without bands the shape cannot be told apart
