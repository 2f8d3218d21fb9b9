"""File readers / writers: layouts, scaling, and the error messages for bad input."""
import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from conftest import shared_path
from data.io import (FVGNET_CLASSES, FVGNET_PALETTE, load_cube, load_label_png, load_mask, load_mat,
                     load_measurement)


def _cube_hwl(h=6, w=5, bands=28, seed=0):
    return np.random.default_rng(seed).random((h, w, bands)).astype(np.float32)


def _save_v73(path, **variables):
    """HDF5 .mat as MATLAB writes it: 512-byte user block, axes reversed, MATLAB_class attribute."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in variables.items():
            ds = f.create_dataset(name, data=np.asarray(arr).T)
            ds.attrs["MATLAB_class"] = np.bytes_("double" if arr.dtype == np.float64 else "single")


# ----------------------------------------------------------------------------- MATLAB

def test_mat_v5_and_v73_give_the_same_layout(tmp_path):
    hwl = _cube_hwl()
    scipy.io.savemat(tmp_path / "v5.mat", {"img": hwl, "mask": hwl[..., 0]})
    _save_v73(tmp_path / "v73.mat", img=hwl, mask=hwl[..., 0])
    v5, v73 = load_mat(tmp_path / "v5.mat"), load_mat(tmp_path / "v73.mat")
    assert set(v5) == set(v73) == {"img", "mask"}
    for key in v5:
        assert v73[key].shape == v5[key].shape
        np.testing.assert_array_equal(v73[key], v5[key])
    np.testing.assert_array_equal(load_cube(tmp_path / "v73.mat"), np.transpose(hwl, (2, 0, 1)))
    np.testing.assert_array_equal(load_mask(tmp_path / "v73.mat"), hwl[..., 0])


def test_load_mat_rejects_a_non_mat_file(tmp_path):
    (tmp_path / "junk.mat").write_bytes(b"this is not a mat file at all" * 10)
    with pytest.raises(ValueError, match="junk.mat"):
        load_mat(tmp_path / "junk.mat")


# ----------------------------------------------------------------------------- cubes

def test_cave_img_expand_uint16_is_scaled_by_1_over_65536(tmp_path):
    counts = (np.random.default_rng(1).random((8, 7, 28)) * 60000).astype(np.uint16)
    scipy.io.savemat(tmp_path / "scene001.mat", {"img_expand": counts})
    cube = load_cube(tmp_path / "scene001.mat")
    assert cube.shape == (28, 8, 7) and cube.dtype == np.float32
    np.testing.assert_allclose(cube, np.transpose(counts, (2, 0, 1)) / 65536.0, rtol=1e-6)


def test_tsa_truth_img_in_unit_range_is_not_rescaled(tmp_path):
    hwl = _cube_hwl()
    scipy.io.savemat(tmp_path / "scene01.mat", {"img": hwl.astype(np.float64)})
    np.testing.assert_allclose(load_cube(tmp_path / "scene01.mat"), np.transpose(hwl, (2, 0, 1)), rtol=1e-7)


def test_ambiguous_value_range_asks_for_an_explicit_scale(tmp_path):
    hwl = _cube_hwl() * 20
    scipy.io.savemat(tmp_path / "s.mat", {"img": hwl})
    with pytest.raises(ValueError, match=r"s.mat\['img'\].*scale"):
        load_cube(tmp_path / "s.mat")
    np.testing.assert_allclose(load_cube(tmp_path / "s.mat", scale=0.05), np.transpose(hwl, (2, 0, 1)) * 0.05,
                               rtol=1e-6)


def test_npz_cube_is_band_first_and_cast_to_float32(tmp_path):
    lhw = np.random.default_rng(2).random((28, 4, 9)).astype(np.float16)
    np.savez(tmp_path / "c.npz", cube=lhw)
    cube = load_cube(tmp_path / "c.npz")
    assert cube.dtype == np.float32
    np.testing.assert_array_equal(cube, lhw.astype(np.float32))


def test_fvgnet_npy_cube_is_hwl(tmp_path):
    hwl = _cube_hwl(h=10, w=12)
    np.save(tmp_path / "apple_01.npy", hwl)
    np.testing.assert_array_equal(load_cube(tmp_path / "apple_01.npy"), np.transpose(hwl, (2, 0, 1)))
    np.testing.assert_array_equal(load_cube(tmp_path / "apple_01.npy", layout="LHW", bands=10), hwl)


def test_cube_errors_name_file_key_and_shape(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        load_cube(tmp_path / "missing.mat")
    scipy.io.savemat(tmp_path / "k.mat", {"cube_data": _cube_hwl(), "other": np.zeros(3)})
    with pytest.raises(ValueError, match=r"img_expand.*img.*keys present: \['cube_data', 'other'\]"):
        load_cube(tmp_path / "k.mat")
    with pytest.raises(ValueError, match=r"key 'nope' not found; keys present: \['cube_data', 'other'\]"):
        load_cube(tmp_path / "k.mat", key="nope")
    with pytest.raises(ValueError, match=r"expected 28 bands, got 27"):
        np.savez(tmp_path / "b.npz", cube=np.zeros((27, 4, 4), np.float32))
        load_cube(tmp_path / "b.npz")
    with pytest.raises(ValueError, match=r"b2.npz\['cube'\].*3-D cube, got shape \(4, 4\)"):
        np.savez(tmp_path / "b2.npz", cube=np.zeros((4, 4), np.float32))
        load_cube(tmp_path / "b2.npz")
    bad = _cube_hwl()
    bad[1, 2, 3] = np.nan
    bad[0, 0, 0] = np.inf
    scipy.io.savemat(tmp_path / "nan.mat", {"img": bad})
    with pytest.raises(ValueError, match=r"nan.mat\[.img.\]: 2 of 840 values are NaN or Inf \(the first at index \(0, 0, 0\)"):
        load_cube(tmp_path / "nan.mat")
    (tmp_path / "c.tif").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported file type '.tif'"):
        load_cube(tmp_path / "c.tif")
    np.save(tmp_path / "a.npy", _cube_hwl())
    with pytest.raises(ValueError, match="single array"):
        load_cube(tmp_path / "a.npy", key="cube")
    with pytest.raises(ValueError, match="layout must be"):
        load_cube(tmp_path / "a.npy", layout="WHL")


# ----------------------------------------------------------------------------- masks / measurements

def test_load_mask_formats_and_errors(tmp_path):
    mask = np.random.default_rng(3).random((16, 12)).astype(np.float32)
    scipy.io.savemat(tmp_path / "m.mat", {"mask": mask})
    np.save(tmp_path / "m.npy", mask)
    np.savez(tmp_path / "m.npz", mask=mask, y=np.zeros((16, 66)))
    for name in ("m.mat", "m.npy", "m.npz"):
        out = load_mask(tmp_path / name)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, mask)
    with pytest.raises(ValueError, match=r"key 'mask' not found; keys present: \['phi'\]"):
        scipy.io.savemat(tmp_path / "p.mat", {"phi": mask})
        load_mask(tmp_path / "p.mat")
    assert load_mask(tmp_path / "p.mat", key="phi").shape == (16, 12)
    with pytest.raises(ValueError, match=r"2-D mask, got shape \(16, 12, 2\)"):
        np.save(tmp_path / "m3.npy", np.stack([mask, mask], -1))
        load_mask(tmp_path / "m3.npy")
    with pytest.raises(ValueError, match="negative"):
        np.save(tmp_path / "neg.npy", mask - 0.5)
        load_mask(tmp_path / "neg.npy")


def test_load_measurement_keys(tmp_path):
    y = np.random.default_rng(4).random((8, 62)).astype(np.float32)
    np.savez(tmp_path / "snap.npz", y=y, mask=np.ones((8, 8)), step=np.int32(2))
    np.testing.assert_array_equal(load_measurement(tmp_path / "snap.npz"), y)
    for key in ("meas", "y", "meas_real"):
        scipy.io.savemat(tmp_path / f"{key}.mat", {key: y})
        np.testing.assert_array_equal(load_measurement(tmp_path / f"{key}.mat"), y)
    scipy.io.savemat(tmp_path / "two.mat", {"meas": y, "y": y})
    with pytest.raises(ValueError, match=r"two.mat: several candidate keys \['meas', 'y'\]"):
        load_measurement(tmp_path / "two.mat")
    np.testing.assert_array_equal(load_measurement(tmp_path / "two.mat", key="y"), y)
    with pytest.raises(ValueError, match=r"2-D measurement, got shape \(1, 8, 62\)"):
        np.save(tmp_path / "y3.npy", y[None])
        load_measurement(tmp_path / "y3.npy")


# ----------------------------------------------------------------------------- labels

def test_fvgnet_palette_is_the_voc_colour_map():
    assert FVGNET_PALETTE.shape == (len(FVGNET_CLASSES), 3) == (23, 3)
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 7: (128, 128, 128), 8: (64, 0, 0),
                13: (192, 0, 128), 16: (0, 64, 0), 17: (128, 64, 0), 22: (0, 192, 128)}
    for k, rgb in expected.items():
        assert tuple(FVGNET_PALETTE[k]) == rgb


def test_label_png_round_trip_and_unknown_colour(tmp_path):
    labels = np.random.default_rng(5).integers(0, 23, size=(9, 11))
    Image.fromarray(FVGNET_PALETTE[labels]).save(tmp_path / "lab.png")
    out = load_label_png(tmp_path / "lab.png")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, labels)

    pal_img = Image.fromarray(labels.astype(np.uint8), mode="P")
    pal_img.putpalette(FVGNET_PALETTE.flatten().tolist())
    pal_img.save(tmp_path / "lab_p.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "lab_p.png"), labels)

    rgb = FVGNET_PALETTE[labels].copy()
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"bad.png: 1 colour\(s\) not in the palette: \(1, 2, 3\) x1"):
        load_label_png(tmp_path / "bad.png")
    rgba = np.concatenate([FVGNET_PALETTE[labels], np.full((9, 11, 1), 255, np.uint8)], -1)
    rgba[2, 2, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    with pytest.raises(ValueError, match="transparent"):
        load_label_png(tmp_path / "alpha.png")
    Image.fromarray(labels.astype(np.uint8)).save(tmp_path / "gray.png")
    with pytest.raises(ValueError, match=r"gray.png: expected an RGB\(A\) label image"):
        load_label_png(tmp_path / "gray.png")


# ----------------------------------------------------------------------------- the shared real data

def test_shared_masks_and_measurements():
    kaist = load_mask(shared_path("data", "kaist", "mask.mat"))
    assert kaist.shape == (256, 256) and kaist.dtype == np.float32 and 0.006 < kaist.min() and kaist.max() == 1
    assert load_mask(shared_path("data", "real", "mask.mat")).shape == (660, 660)
    pnp = load_mask(shared_path("data", "masks_extra", "pnp_cassi_mask256.mat"))  # stored as float64
    assert pnp.dtype == np.float32 and set(np.unique(pnp)) == {0.0, 1.0}
    meas = load_measurement(shared_path("data", "real", "scene1.mat"))
    assert meas.shape == (660, 714) and 0 <= meas.min() and meas.max() <= 1
    snaps = sorted(shared_path("data", "kaist_meas").glob("*.npz"))
    assert len(snaps) == 10
    for snap in snaps[:2]:
        assert load_measurement(snap).shape == (256, 310)
        np.testing.assert_array_equal(load_mask(snap), kaist)


def test_shared_pseudo_cubes():
    cube = load_cube(shared_path("data", "pseudo_kaist", "scene01.npz"))
    assert cube.shape == (28, 256, 256) and cube.dtype == np.float32
    assert 0 <= cube.min() and cube.max() <= 1
    assert load_cube(shared_path("data", "pseudo_real", "scene1.npz")).shape == (28, 512, 512)
