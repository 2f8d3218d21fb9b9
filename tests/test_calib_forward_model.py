"""The calibration forward model against the native operator and the high-fidelity simulator.

These tests use a known cube on purpose: they test the model, not the (blind) calibrator.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calib.forward_model import EnlargedGridOperator, fine_mask, params_tensor
from cassi import CassiOperator, Mismatch
from cassi.simulator import simulate_measurement
from cassi.warp import warp_mask
from data.synthetic import random_mask, synthetic_scene

DRIFT = Mismatch(dx=0.7, dy=-1.3, theta=0.4, a1=2.03, alpha=0.5)


def _mask(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(random_mask(h, w, seed=seed)).double()


@pytest.mark.parametrize("mismatch", [Mismatch(), DRIFT])
def test_without_oversampling_it_is_the_native_operator(mismatch):
    mask = _mask(20, 24)
    x = torch.rand(2, 28, 20, 24, dtype=torch.float64)
    y = torch.rand(2, 20, 24 + 54, dtype=torch.float64)
    native = CassiOperator(mask, 28, 2, mismatch)
    model = EnlargedGridOperator(mask, mismatch, spatial=1, spectral=1)
    torch.testing.assert_close(model(x), native(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.adjoint(y), native.adjoint(y), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mismatch", [Mismatch(), DRIFT])
def test_equals_the_simulator_for_spectra_linear_between_bands(mismatch):
    # PCHIP (simulator) and linear interpolation (model) agree on spectra linear in the band index
    h, w = 18, 22
    mask = _mask(h, w)
    a, b = torch.rand(1, 1, h, w, dtype=torch.float64), torch.rand(1, 1, h, w, dtype=torch.float64)
    x = a + b * torch.linspace(0, 1, 28, dtype=torch.float64).view(1, -1, 1, 1)
    expected = simulate_measurement(x, mask, mismatch, spatial=4, spectral=2)
    got = EnlargedGridOperator(mask, mismatch, spatial=4, spectral=2)(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_fits_the_simulator_far_better_than_the_native_operator():
    cube, _ = synthetic_scene(32, 32, 28, seed=2)
    x = torch.from_numpy(cube)[None].double()
    mask = _mask(32, 32)
    y = simulate_measurement(x, mask, DRIFT, spatial=4, spectral=2)
    model_err = (EnlargedGridOperator(mask, DRIFT)(x) - y).norm() / y.norm()
    native_err = (CassiOperator(mask, 28, 2, DRIFT)(x) - y).norm() / y.norm()
    assert model_err < 0.01
    assert model_err < 0.1 * native_err


def test_row_windows_are_rows_of_the_full_operator():
    mask = _mask(24, 20)
    x = torch.rand(1, 28, 24, 20, dtype=torch.float64)
    full = EnlargedGridOperator(mask, DRIFT)(x)
    windows = [(3, 11), (14, 22)]
    part = EnlargedGridOperator(mask, DRIFT, windows=windows)(torch.cat([x[:, :, a:b] for a, b in windows]))
    for s, (a, b) in enumerate(windows):     # rows next to a window edge miss light from outside it
        torch.testing.assert_close(part[s, 2:-2], full[0, a + 2:b - 2], rtol=0, atol=1e-12)


def test_fine_mask_is_the_simulators_warped_upsampled_mask():
    mask = _mask(12, 16)
    fine = fine_mask(mask, 4, params_tensor(DRIFT), (2, 9))
    up = mask.repeat_interleave(4, 0).repeat_interleave(4, 1)
    torch.testing.assert_close(fine[0], warp_mask(up, 4 * DRIFT.dx, 4 * DRIFT.dy, DRIFT.theta)[8:36],
                               rtol=0, atol=1e-12)


def test_adjoint_and_parameter_gradients():
    mask = _mask(10, 12)
    x = torch.rand(1, 28, 10, 12, dtype=torch.float64)
    y = torch.rand(1, 10, 12 + 54, dtype=torch.float64)
    op = EnlargedGridOperator(mask, DRIFT)
    assert abs(float((op(x) * y).sum() - (x * op.adjoint(y)).sum())) < 1e-10 * float((op(x) * y).sum())

    def f(p: torch.Tensor) -> torch.Tensor:
        model = EnlargedGridOperator(mask, p)
        return (model(x) * y).sum() + (model.adjoint(y) ** 2).sum()

    p = params_tensor(DRIFT).requires_grad_(True)
    grad = torch.autograd.grad(f(p), p)[0][0]
    for i in range(5):
        e = torch.zeros(1, 5, dtype=torch.float64)
        e[0, i] = 1e-6
        numeric = (f(p.detach() + e) - f(p.detach() - e)) / 2e-6
        assert abs(float(grad[i] - numeric)) <= 0.01 * abs(float(numeric)) + 1e-6, (i, grad[i], numeric)


def test_fit_with_the_true_cube_is_unbiased_unlike_the_native_operator():
    # issue 6: the native operator lands ~0.45 px off in dx against the N=4, K=2 simulator
    cube, _ = synthetic_scene(40, 40, 28, seed=3)
    x = torch.from_numpy(cube)[None].double()
    mask = _mask(40, 40, seed=4)
    y = simulate_measurement(x, mask, Mismatch(), spatial=4, spectral=2)
    grid = torch.linspace(-0.8, 0.8, 33, dtype=torch.float64)
    model_err, native_err = [], []
    for dx in grid.tolist():
        m = Mismatch(dx=dx)
        model_err.append(float((EnlargedGridOperator(mask, m)(x) - y).norm()))
        native_err.append(float((CassiOperator(mask, 28, 2, m)(x) - y).norm()))
    model_best = float(grid[torch.tensor(model_err).argmin()])
    native_best = float(grid[torch.tensor(native_err).argmin()])
    assert abs(model_best) <= 0.05
    assert abs(native_best) >= 0.25


def _placement_reference(x, masks, band, row, col, width):
    """The placement sum written out with slices (the definition the kernels must equal); an input
    with fewer entries is shared by consecutive output entries."""
    b = max(x.shape[0], masks.shape[0])
    x, masks = x.repeat_interleave(b // x.shape[0], 0), masks.repeat_interleave(b // masks.shape[0], 0)
    y = x.new_zeros(b, x.shape[-2], width)
    h, w = x.shape[-2:]
    for p, (c, r, q) in enumerate(zip(band, row, col)):
        r0, r1, q0, q1 = max(0, -r), min(h, h - r), max(0, -q), min(w, width - q)
        if r1 > r0 and q1 > q0:
            y[:, r0 + r:r1 + r, q0 + q:q1 + q] += x[:, c, r0:r1, q0:q1] * masks[:, p, r0:r1, q0:q1]
    return y


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batches", [(3, 3), (1, 3), (3, 1), (6, 3), (2, 6)])
def test_placement_kernels_equal_the_slice_definition(backend, dtype, batches):
    from functools import partial

    from calib import placement
    from calib.placement import PlacementIndex

    place, pick, mask_products = (partial(f, backend=backend) for f in
                                  (placement.place, placement.pick, placement.mask_products))
    gen = torch.Generator().manual_seed(0)
    bands, h, w, width = 5, 7, 9, 9 + 8
    band, row, col = [0, 1, 1, 4, 2, 3], [0, -1, 2, 1, -6, 0], [0, 3, -2, 8, 1, 17]   # some half or fully off
    index = PlacementIndex(band, row, col)
    x = torch.rand(batches[0], bands, h, w, generator=gen, dtype=dtype)
    masks = torch.rand(batches[1], len(band), h, w, generator=gen, dtype=dtype)
    y = torch.rand(max(batches), h, width, generator=gen, dtype=dtype)
    tol = {"rtol": 1e-6 if dtype == torch.float32 else 1e-12, "atol": 0}
    torch.testing.assert_close(place(x, masks, index, width), _placement_reference(x, masks, band, row, col, width),
                               **tol)
    # adjoint and mask gradient through autograd of the reference
    xr, mr = x.clone().requires_grad_(True), masks.clone().requires_grad_(True)
    gx, gm = torch.autograd.grad((_placement_reference(xr, mr, band, row, col, width) * y).sum(), (xr, mr))
    picked = pick(y, masks, index, bands, w)
    torch.testing.assert_close(picked.view(batches[0], -1, *picked.shape[1:]).sum(1), gx, **tol)
    products = mask_products(x, y, index, w)
    torch.testing.assert_close(products.view(batches[1], -1, *products.shape[1:]).sum(1), gm, **tol)


def test_torch_path_equals_the_numba_path_in_values_and_gradients():
    """The torch ops (the GPU path) and the numba kernels (the CPU path) are one model: forward,
    adjoint, the effective masks and the gradients in all five parameters agree in float64."""
    mask = _mask(14, 12)
    windows = [(1, 7), (7, 13)]
    gen = torch.Generator().manual_seed(0)
    params = params_tensor([DRIFT, Mismatch(dx=-0.4, dy=0.9, theta=-0.7, a1=1.96, alpha=-0.8)])
    x = torch.rand(1, 28, 6, 12, generator=gen, dtype=torch.float64)
    y = torch.rand(4, 6, 12 + 54, generator=gen, dtype=torch.float64)

    def outputs(backend: str, p: torch.Tensor):
        op = EnlargedGridOperator(mask, p, windows=windows, backend=backend)
        return op.masks, op(x), op.adjoint(y), op.normal(x, y)

    for built, reference in zip(outputs("numba", params), outputs("torch", params)):
        torch.testing.assert_close(built, reference, rtol=1e-6, atol=1e-12)

    def loss(backend: str) -> torch.Tensor:
        p = params.clone().requires_grad_(True)
        op = EnlargedGridOperator(mask, p, windows=windows, backend=backend)
        value = (op(x) * y).sum() + (op.adjoint(y) ** 2).sum() + (op.normal(x, y) ** 2).sum()
        return torch.autograd.grad(value, p)[0]

    numba_grad, torch_grad = loss("numba"), loss("torch")
    assert numba_grad.abs().min() > 0
    torch.testing.assert_close(numba_grad, torch_grad, rtol=1e-6, atol=1e-9)


def test_fused_subspace_normal_equals_the_composite_operator():
    from calib.score import SpectralSubspace, dct_basis

    mask = _mask(10, 12)
    gen = torch.Generator().manual_seed(1)
    z = torch.rand(3, 5, 10, 12, generator=gen, dtype=torch.float64)
    weight = (torch.rand(1, 10, 12 + 54, generator=gen) < 0.5).double()
    params = params_tensor([DRIFT, Mismatch(), Mismatch(dx=1.3, alpha=-1.1)])
    fused = SpectralSubspace(EnlargedGridOperator(mask, params), dct_basis(28, 5).double())
    composite = SpectralSubspace(EnlargedGridOperator(mask, params, backend="torch"), dct_basis(28, 5).double())
    torch.testing.assert_close(fused.normal(z, weight), composite.adjoint(composite(z) * weight), rtol=1e-10,
                               atol=1e-12)


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="placement backend must be one of"):
        EnlargedGridOperator(_mask(8, 8), DRIFT, backend="cuda")
    with pytest.raises(ValueError, match="numba placement kernels run on CPU tensors only"):
        EnlargedGridOperator(_mask(8, 8).to("meta"), DRIFT, backend="numba")


def test_cubic_mask_reading_is_keys_convolution_on_the_native_grid():
    """``interpolation="cubic"`` reads the warped mask with Keys' cubic kernel (a = -0.5; taps outside the
    mask 0, zero where the source leaves the mask), the same in the numba and torch paths (gradients in
    the torch path); at integer shifts it is the bilinear model exactly; only the native grid has it."""
    import numpy as np

    mask = _mask(10, 12)
    shift = Mismatch(dx=0.6, dy=-1.3, a1=2.0)
    masks = {backend: EnlargedGridOperator(mask, shift, spatial=1, spectral=1, backend=backend,
                                           interpolation="cubic").masks for backend in ("numba", "torch")}
    torch.testing.assert_close(masks["numba"], masks["torch"], rtol=1e-6, atol=1e-9)

    def keys(t: np.ndarray) -> np.ndarray:
        t = np.abs(t)
        near, far = 1.5 * t ** 3 - 2.5 * t ** 2 + 1, -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2
        return np.where(t <= 1, near, np.where(t < 2, far, 0))

    m = mask.numpy()
    rows, cols = np.arange(10)[:, None] - shift.dy, np.arange(12)[None, :] - shift.dx       # source coordinates
    reference = np.einsum("ia,jb,ab->ij", keys(rows - np.arange(10)[None, :]).reshape(10, 10),
                          keys(cols.T - np.arange(12)[None, :]).reshape(12, 12), m)
    reference *= (rows >= 0) & (rows <= 9) & (cols >= 0) & (cols <= 11)
    band0 = masks["numba"][0, 0].numpy()                  # band 0's one placement: a constant times the read
    np.testing.assert_allclose(band0 / band0.max(), reference / reference.max(), atol=1e-6)
    p = params_tensor(shift).requires_grad_(True)
    grad = torch.autograd.grad(EnlargedGridOperator(mask, p, spatial=1, spectral=1, backend="torch",
                                                    interpolation="cubic").masks.pow(2).sum(), p)[0]
    assert grad[0, :2].abs().min() > 0
    whole = Mismatch(dx=1.0, dy=-2.0, theta=0.0, a1=2.0)
    linear, cubic = (EnlargedGridOperator(mask, whole, spatial=1, spectral=1, interpolation=i).masks
                     for i in ("linear", "cubic"))
    assert torch.equal(linear, cubic)
    with pytest.raises(ValueError, match="native grid"):
        EnlargedGridOperator(mask, shift, spatial=4, spectral=2, interpolation="cubic")


@pytest.mark.parametrize("step", [1, 3])
def test_a_mismatch_without_a1_disperses_at_the_step(step):
    """``EnlargedGridOperator(mask, Mismatch(dx=0.5), step=3)`` dispersed at 2 px/band, the a1 a Mismatch reads when
    left out, where CassiOperator and the simulator take the step (Mismatch.for_step)."""
    mask = _mask(20, 24)
    x = torch.rand(1, 28, 20, 24, dtype=torch.float64)
    drift = Mismatch(dx=0.5)
    native = EnlargedGridOperator(mask, drift, step=step, spatial=1, spectral=1)
    torch.testing.assert_close(native(x), CassiOperator(mask, 28, step, drift)(x), rtol=0, atol=1e-12)
    fine = EnlargedGridOperator(mask, drift, step=step, spatial=2, spectral=2)
    torch.testing.assert_close(fine(x), EnlargedGridOperator(mask, Mismatch(dx=0.5, a1=float(step)), step=step,
                                                             spatial=2, spectral=2)(x), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_numpy_mask_is_taken_as_the_tensor_one(backend):
    """A numpy mask (float64, or 0/1 integers) is taken through cassi.operator.mask_tensor as CassiOperator and the
    simulator take it; EnlargedGridOperator asked for ``mask.dim()`` and failed with an AttributeError."""
    mask = _mask(20, 24)
    x = torch.rand(1, 28, 20, 24, dtype=torch.float64)
    expected = EnlargedGridOperator(mask, DRIFT, spatial=2, spectral=2, backend=backend)(x)
    for array in (mask.numpy(), mask.numpy().astype(np.uint8)):
        operator = EnlargedGridOperator(array, DRIFT, spatial=2, spectral=2, backend=backend)
        torch.testing.assert_close(operator(x.to(operator.masks.dtype)), expected.to(operator.masks.dtype))
