"""Built-in synthetic scenes: deterministic, in range, labelled, smooth spectra, varied."""
import hashlib
import tracemalloc

import numpy as np
import pytest

from data.synthetic import (KAIST_WAVELENGTHS, MATERIAL_NAMES, material_spectrum, random_mask, synthetic_dataset,
                            synthetic_scene, wavelengths)


def test_deterministic_from_seed_and_different_across_seeds():
    a_cube, a_lab = synthetic_scene(48, 40, seed=3)
    b_cube, b_lab = synthetic_scene(48, 40, seed=3)
    c_cube, _ = synthetic_scene(48, 40, seed=4)
    np.testing.assert_array_equal(a_cube, b_cube)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert np.abs(a_cube - c_cube).mean() > 0.01


def test_shapes_range_and_labels():
    cube, labels = synthetic_scene(40, 56, bands=28, seed=1, n_classes=5)
    assert cube.shape == (28, 40, 56) and cube.dtype == np.float32
    assert labels.shape == (40, 56) and labels.dtype == np.int64
    assert cube.min() > 0 and 0.75 <= cube.max() <= 1.0
    classes = np.unique(labels)
    assert 2 <= len(classes) <= 5 and classes.min() >= 0 and classes.max() < len(MATERIAL_NAMES)
    cube7, _ = synthetic_scene(20, 20, bands=7, seed=1)
    assert cube7.shape == (7, 20, 20)


def test_pixels_of_one_class_share_a_spectral_shape():
    cube, labels = synthetic_scene(64, 64, seed=2)
    spectra = cube.reshape(28, -1).T
    spectra = spectra / np.linalg.norm(spectra, axis=1, keepdims=True)
    flat = labels.ravel()
    within, between = [], []
    means = {}
    for c in np.unique(flat):
        members = spectra[flat == c]
        mean = members.mean(0) / np.linalg.norm(members.mean(0))
        means[c] = mean
        within.append(np.degrees(np.arccos(np.clip(members @ mean, -1, 1))).mean())
    keys = sorted(means)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            between.append(np.degrees(np.arccos(np.clip(means[a] @ means[b], -1, 1))))
    assert max(within) < min(between)


def test_spectra_are_smooth():
    cube, _ = synthetic_scene(32, 32, seed=5)
    spectra = cube.reshape(28, -1)
    second_diff = np.abs(np.diff(spectra, n=2, axis=0)).mean()
    first_diff = np.abs(np.diff(spectra, n=1, axis=0)).mean()
    assert second_diff < 0.5 * first_diff  # no band-to-band zig-zag
    wl = wavelengths(28)
    for name in MATERIAL_NAMES:
        ref = material_spectrum(name, wl)
        assert 0.01 <= ref.min() and ref.max() <= 0.95
        slope = np.diff(ref)
        turns = np.sum(np.diff(np.sign(slope[np.abs(slope) > 1e-4])) != 0)
        assert turns <= 4, name  # a few broad features, no oscillation
        assert np.abs(np.diff(ref, 2)).max() < 0.2 * np.ptp(ref), name


def test_variety_textures_and_edges():
    cube, labels = synthetic_scene(96, 96, seed=7)
    flat = labels.ravel()
    # texture: pixels of one class are not constant
    big = np.bincount(flat).argmax()
    assert cube[:, labels == big].std(axis=1).mean() > 0.005
    # sharp edges: across a label boundary the intensity jumps more than inside regions
    img = cube.mean(0)
    jump = np.abs(np.diff(img, axis=1))
    boundary = labels[:, 1:] != labels[:, :-1]
    assert boundary.any() and jump[boundary].mean() > 3 * jump[~boundary].mean()
    # many scenes cover many materials
    _, labs = synthetic_dataset(6, 32, 32, seed=0)
    assert len(np.unique(labs)) >= 10


def test_dataset_scenes_are_independent_and_reproducible():
    cubes, labels = synthetic_dataset(3, 24, 24, seed=1)
    assert cubes.shape == (3, 28, 24, 24) and labels.shape == (3, 24, 24)
    again, _ = synthetic_dataset(3, 24, 24, seed=1)
    np.testing.assert_array_equal(cubes, again)
    other, _ = synthetic_dataset(3, 24, 24, seed=2)
    for i in range(3):
        for j in range(3):
            assert not np.array_equal(cubes[i], other[j])
    np.testing.assert_array_equal(cubes[1], synthetic_scene(24, 24, seed=(1, 1))[0])


def test_wavelengths_and_mask():
    assert len(KAIST_WAVELENGTHS) == 28 and KAIST_WAVELENGTHS[0] == 453.3 and KAIST_WAVELENGTHS[-1] == 648.1
    assert np.all(np.diff(wavelengths(10)) > 0)
    mask = random_mask(50, 40, seed=3)
    assert mask.shape == (50, 40) and set(np.unique(mask)) == {0.0, 1.0}
    assert 0.4 < mask.mean() < 0.6
    np.testing.assert_array_equal(mask, random_mask(50, 40, seed=3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_classes"):
        synthetic_scene(16, 16, n_classes=0)
    with pytest.raises(ValueError, match="scene size"):
        synthetic_scene(0, 16)


def test_scenes_are_the_same_as_before_at_less_than_half_the_peak_memory():
    """A 512² scene (CRSDUN's synthetic recipe builds 42 at setup) was built pixel-major with several float64
    (H, W, L) temporaries (peak 3.4x its float64 cube; 0.34 s per scene) and every shape over the whole image; now
    band-major in place and each shape in its window (peak 1.9x; 0.11 s), with bit-identical cubes and labels
    (hashes of scenes made before)."""
    for seed, cube_hash, labels_hash in (((0, 1), "fd4dd2b8bdf19238", "ee357e4c59a9a16f"),
                                          ((3, 40), "fc62bb9061d5ec41", "f3e90b9135d9a898")):
        cube, labels = synthetic_scene(512, 384, 28, seed, 6)
        assert hashlib.sha256(cube.tobytes()).hexdigest()[:16] == cube_hash and cube.flags.c_contiguous
        assert hashlib.sha256(labels.tobytes()).hexdigest()[:16] == labels_hash
    tracemalloc.start()
    try:
        synthetic_scene(512, 512, 28, (0, 1), 6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.25 * 512 * 512 * 28 * 8
