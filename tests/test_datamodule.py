"""CassiDataModule: shapes, per-index determinism, augmentation, mosaic, validation split, DDP sharding."""
import numpy as np
import pytest
import torch
from lightning_fabric.utilities.data import _set_sampler_epoch
from lightning_fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DataLoader, DistributedSampler

from data.datamodule import CassiDataModule
from data.io import load_mask
from conftest import fvgnet_layout, mst_toolbox

CROP = 16


def _module(**kw):
    args = dict(num_scenes=3, val_scenes=2, scene_size=24, crop=CROP, samples_per_epoch=12, batch_size=4, seed=0)
    args.update(kw)
    dm = CassiDataModule(**args)
    dm.setup("fit")
    return dm


def _windows(arr, size):
    """All size x size windows of arr (..., H, W) with their (top, left)."""
    h, w = arr.shape[-2:]
    for top in range(h - size + 1):
        for left in range(w - size + 1):
            yield arr[..., top:top + size, left:left + size]


def _dihedral_images(x):
    """The 8 rot90 / flip variants of x (..., h, w)."""
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1))
        yield r
        yield torch.flip(r, dims=(-1,))


def _found_in(piece, cubes, size, transforms=False):
    for cube in cubes:
        for win in _windows(torch.from_numpy(cube), size):
            for cand in (_dihedral_images(win) if transforms else [win]):
                if torch.equal(cand, piece):
                    return True
    return False


def test_batch_shapes_and_types():
    dm = _module()
    batch = next(iter(dm.train_dataloader()))
    assert batch["cube"].shape == (4, 28, CROP, CROP) and batch["cube"].dtype == torch.float32
    assert batch["labels"].shape == (4, CROP, CROP) and batch["labels"].dtype == torch.int64
    assert batch["mask"].shape == (CROP, CROP) and set(batch["mask"].unique().tolist()) == {0.0, 1.0}
    assert 0 <= batch["cube"].min() and batch["cube"].max() <= 1
    assert len(dm.train_dataloader()) == 3
    val = next(iter(dm.val_dataloader()))
    assert val["cube"].shape == (2, 28, CROP, CROP) and val["mask"].shape == (CROP, CROP)


def test_items_are_a_function_of_seed_epoch_and_index():
    a, b = _module().train_set, _module().train_set
    for i in range(4):
        assert torch.equal(a[(0, i)]["cube"], b[(0, i)]["cube"])
    assert not torch.equal(a[(0, 1)]["cube"], a[(0, 2)]["cube"])
    assert not torch.equal(a[(0, 1)]["cube"], a[(1, 1)]["cube"])
    a.set_epoch(1)
    assert torch.equal(a[1]["cube"], b[(1, 1)]["cube"])
    other_seed = _module(seed=1).train_set
    assert not torch.equal(other_seed[(0, 1)]["cube"], b[(0, 1)]["cube"])
    with pytest.raises(IndexError):
        a[12]


def test_plain_items_are_augmented_crops_with_matching_labels():
    dm = _module(splice_prob=0.0)
    scenes = dm.train_set.source.cubes
    transformed = 0
    for i in range(6):
        item = dm.train_set[(0, i)]
        assert _found_in(item["cube"], scenes, CROP, transforms=True)
        transformed += not _found_in(item["cube"], scenes, CROP, transforms=False)
        # labels follow the same crop and transform: each label region has one spectral shape
        lab, cube = item["labels"], item["cube"]
        for c in lab.unique():
            spectra = cube[:, lab == c]
            spectra = spectra / spectra.norm(dim=0, keepdim=True)
            assert (spectra.T @ spectra.mean(1)).min() > 0.9
    assert transformed >= 2  # rot90 / flips are in use


def test_spliced_mosaic_tiles_four_untransformed_half_crops():
    dm = _module(splice_prob=1.0)
    scenes, label_maps = dm.train_set.source.cubes, dm.train_set.source.labels
    half = CROP // 2
    for i in range(3):
        item = dm.train_set[(0, i)]
        quads = [(slice(0, half), slice(0, half)), (slice(0, half), slice(half, CROP)),
                 (slice(half, CROP), slice(0, half)), (slice(half, CROP), slice(half, CROP))]
        for rows, cols in quads:
            assert _found_in(item["cube"][:, rows, cols], scenes, half)
            assert _found_in(item["labels"][rows, cols][None], [lab[None] for lab in label_maps], half)
    # without splicing, the four quarters of an item come from one crop
    assert not _found_in(dm.train_set[(0, 0)]["cube"], scenes, CROP, transforms=True)


def test_validation_scenes_are_held_out_and_deterministic():
    dm = _module()
    train_scenes = dm.train_set.source.cubes
    assert len(dm.val_set) == 2
    for i in range(len(dm.val_set)):
        crop = dm.val_set[i]["cube"]
        assert not _found_in(crop, train_scenes, CROP, transforms=True)
        assert torch.equal(crop, _module().val_set[i]["cube"])
        center = (24 - CROP) // 2
        np.testing.assert_array_equal(crop.numpy(), dm.val_set.source.cubes[i][:, center:center + CROP,
                                                                            center:center + CROP])
    more = _module(val_crops_per_scene=3).val_set
    assert len(more) == 6 and not torch.equal(more[0]["cube"], more[1]["cube"])


def test_folder_source_split_is_disjoint(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(6):
        np.savez(tmp_path / f"scene{k:03d}.npz", cube=rng.random((28, 20, 22)).astype(np.float32))
    (tmp_path / "notes.txt").write_text("not a cube")
    dm = _module(root=str(tmp_path), val_scenes=2, preload=False)
    assert len(dm.train_files) == 4 and len(dm.val_files) == 2
    assert not set(dm.train_files) & set(dm.val_files)
    assert {p.name for p in dm.train_files + dm.val_files} == {f"scene{k:03d}.npz" for k in range(6)}
    batch = next(iter(dm.train_dataloader()))
    assert batch["cube"].shape == (4, 28, CROP, CROP) and "labels" not in batch
    val_cubes = [np.load(p)["cube"] for p in dm.val_files]
    assert _found_in(dm.val_set[0]["cube"], val_cubes, CROP)
    with pytest.raises(ValueError, match="cannot hold out 6 of 6"):
        _module(root=str(tmp_path), val_scenes=6)
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        _module(root=str(tmp_path / "absent"))


def test_two_ranks_see_different_samples():
    train = _module(samples_per_epoch=8).train_set
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(train, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(train, batch_size=4, sampler=sampler)
        seen.append(torch.cat([b["cube"] for b in loader]))
    assert seen[0].shape == seen[1].shape == (4, 28, CROP, CROP)
    for x in seen[0]:
        assert not any(torch.equal(x, y) for y in seen[1])


def test_epoch_reaches_items_through_lightnings_distributed_wrapper():
    dm = _module(samples_per_epoch=8)
    loader = dm.train_dataloader()
    wrapped = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=1, shuffle=False)
    _set_sampler_epoch(DataLoader(dm.train_set, sampler=wrapped), 3)
    indices = list(wrapped)
    assert len(indices) == 4 and all(epoch == 3 for epoch, _ in indices)
    _set_sampler_epoch(loader, 2)
    first = next(iter(loader))["cube"]
    assert torch.equal(first[0], dm.train_set[(2, 0)]["cube"])


def test_training_loader_resumes_in_mid_epoch_without_loading_the_skipped_items(monkeypatch):
    """Was: a plain DataLoader, which Lightning cannot resume: the resumed epoch began again at its first batch."""
    dm = _module()                                              # 3 batches of 4 per epoch
    loader = dm.train_dataloader()
    _set_sampler_epoch(loader, 1)
    batches = iter(loader)
    expected = [b["cube"] for b in (next(batches), next(batches), next(batches))]
    state = dict(loader.state_dict())
    assert state == {"epoch": 1, "batches": 3}
    resumed = dm.train_dataloader()
    resumed.load_state_dict({"epoch": 1, "batches": 2})
    loaded, getitem = [], type(dm.train_set).__getitem__
    monkeypatch.setattr(type(dm.train_set), "__getitem__", lambda self, i: loaded.append(i) or getitem(self, i))
    _set_sampler_epoch(resumed, 1)
    (rest,) = list(resumed)                                     # batch 3 of epoch 1 only
    assert torch.equal(rest["cube"], expected[2]) and loaded == [(1, i) for i in range(8, 12)]
    assert resumed.state_dict() == state and len(resumed) == 3
    _set_sampler_epoch(resumed, 2)
    assert len(list(resumed)) == 3                              # the next epoch from its first batch
    other = dm.train_dataloader()
    other.load_state_dict({"epoch": 1, "batches": 3})          # written at the end of epoch 1
    _set_sampler_epoch(other, 2)
    assert len(list(other)) == 3


def test_mask_file_and_per_sample_mask_crops(tmp_path):
    big = np.random.default_rng(1).random((40, 36)).astype(np.float32)
    np.save(tmp_path / "mask.npy", big)
    dm = _module(mask=str(tmp_path / "mask.npy"), mask_crop=True)
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape == (4, CROP, CROP)
    assert not torch.equal(batch["mask"][0], batch["mask"][1])
    for m in batch["mask"]:
        assert _found_in(m[None], [big[None]], CROP)
    val = next(iter(dm.val_dataloader()))
    assert val["mask"].shape == (2, CROP, CROP)
    assert torch.equal(val["mask"], next(iter(dm.val_dataloader()))["mask"])

    exact = big[:CROP, :CROP].copy()
    np.save(tmp_path / "exact.npy", exact)
    dm = _module(mask=str(tmp_path / "exact.npy"))
    assert torch.equal(next(iter(dm.train_dataloader()))["mask"], torch.from_numpy(exact))
    with pytest.raises(ValueError, match=r"mask.npy has shape \(40, 36\); crop=16 needs exactly 16 x 16"):
        _module(mask=str(tmp_path / "mask.npy"))
    with pytest.raises(ValueError, match="at least 64 x 64"):
        _module(mask=str(tmp_path / "mask.npy"), mask_crop=True, crop=64, scene_size=64)


def test_random_mask_is_seeded_and_sized():
    dm = _module(mask_crop=True, mask_size=40)
    assert dm.mask.shape == (40, 40)
    np.testing.assert_array_equal(dm.mask, _module(mask_crop=True, mask_size=40).mask)
    assert not np.array_equal(_module().mask, _module(seed=5).mask)


def test_mask_size_without_mask_windows_is_refused():
    """``mask_size`` sizes only the random mask that ``mask_crop`` windows: with ``mask_crop: none`` it is an error."""
    with pytest.raises(ValueError, match=r"--data.mask_size 40 .*mask_crop is none"):
        CassiDataModule(crop=CROP, mask_size=40).check("fit")
    CassiDataModule(crop=CROP, mask_size=40, mask_crop="batch").check("fit")


def test_crop_larger_than_scene_is_an_error():
    with pytest.raises(ValueError, match="synthetic scene 0: size .* smaller than the crop 32"):
        _module(crop=32, scene_size=24)
    with pytest.raises(ValueError, match="even"):
        _module(crop=15)


# ---------------------------------------------------------------------------------- recipe data layouts
def test_mst_simulation_layout_from_the_toolbox_folder_or_cave_itself(tmp_path):
    from data.layouts import find_training_data
    root = mst_toolbox(tmp_path)
    for given in (root, root / "cave_1024_28"):
        found = find_training_data("mst_simulation", str(given), None)
        assert [f.path.name for f in found.files()] == ["scene01.mat", "scene02.mat", "scene03.mat"]
        assert found.mask == root / "TSA_simu_data" / "mask.mat" and found.test_root == root / "TSA_simu_data"
    dm = _module(root=str(root), source="mst_simulation", val_scenes=1)
    assert len(dm.train_files) == 2 and len(dm.val_files) == 1
    np.testing.assert_array_equal(dm.mask, load_mask(root / "TSA_simu_data" / "mask.mat"))
    batch = next(iter(dm.train_dataloader()))
    assert batch["cube"].shape == (4, 28, CROP, CROP) and batch["mask"].shape == (CROP, CROP)
    assert 300 / 65536 <= float(batch["cube"].min()) and float(batch["cube"].max()) < 1  # 16-bit counts / 65536


def test_recipe_data_errors_name_what_is_missing(tmp_path):
    from data.layouts import find_training_data
    with pytest.raises(ValueError, match=r"cave_1024_28.*configs/data/synthetic.yaml"):
        find_training_data("mst_simulation", None, None)
    with pytest.raises(FileNotFoundError, match=r"no such data folder: .*absent.*configs/data/synthetic.yaml"):
        find_training_data("mst_simulation", str(tmp_path / "absent"), None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither cave_1024_28/ nor .mat cubes"):
        find_training_data("mst_simulation", str(tmp_path / "empty"), None)
    root = mst_toolbox(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"is the KAIST test folder .*pass --data.root /path/to/MST/datasets"):
        find_training_data("mst_simulation", str(root / "TSA_simu_data"), None)   # its mask.mat is no cube
    (root / "TSA_simu_data" / "mask.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"TSA_simu_data/mask.mat.*pass --data.mask"):
        find_training_data("mst_simulation", str(root / "cave_1024_28"), None)
    np.save(tmp_path / "mask.npy", np.ones((CROP, CROP), np.float32))
    assert find_training_data("mst_simulation", str(root), str(tmp_path / "mask.npy")).mask == tmp_path / "mask.npy"
    with pytest.raises(FileNotFoundError, match="no CAVE_512_28/ folder"):
        find_training_data("mst_real", str(root), None)
    with pytest.raises(ValueError, match="source is 'synthetic'"):
        find_training_data("synthetic", str(root), None)


def test_mst_real_layout_reads_both_datasets_with_their_keys(tmp_path):
    from scipy.io import loadmat, savemat
    from data.layouts import find_training_data
    rng = np.random.default_rng(0)
    root = tmp_path / "datasets"
    for folder, key, data in (("CAVE_512_28", "data_slice", rng.integers(0, 65535, (24, 24, 28), dtype=np.uint16)),
                              ("KAIST_CVPR2021", "HSI", rng.random((24, 24, 28)))):
        (root / folder).mkdir(parents=True)
        savemat(root / folder / "scene1.mat", {key: data})
    (root / "TSA_real_data").mkdir()
    savemat(root / "TSA_real_data" / "mask.mat", {"mask": rng.random((30, 30))})
    found = find_training_data("mst_real", str(root), None)
    cave, kaist = (f.load() for f in found.files())
    stored = loadmat(root / "CAVE_512_28" / "scene1.mat")["data_slice"].astype(np.float64)
    np.testing.assert_allclose(cave, np.transpose(stored, (2, 0, 1)) / 65535.0, rtol=1e-6)
    assert kaist.shape == (28, 24, 24) and found.mask.name == "mask.mat"


def test_check_finds_data_errors_before_any_cube_is_read(tmp_path):
    root = mst_toolbox(tmp_path, n_cave=2)
    few = CassiDataModule(root=str(root), source="mst_simulation", val_scenes=2, crop=CROP)
    with pytest.raises(ValueError, match="2 cube file.*cannot hold out 2 of 2"):
        few.check("fit")
    wrong_crop = CassiDataModule(root=str(root), source="mst_simulation", val_scenes=1, crop=8)
    with pytest.raises(ValueError, match=r"\(16, 16\); crop=8 needs exactly 8 x 8: set --data.crop 16 .*mask_crop"):
        wrong_crop.check("fit")
    too_big = CassiDataModule(root=str(root), source="mst_simulation", val_scenes=1, crop=32, mask_crop="batch")
    with pytest.raises(ValueError, match="needs at least 32 x 32"):
        too_big.check("fit")
    CassiDataModule(root=str(root), source="mst_simulation", val_scenes=1, crop=CROP).check("fit")
    with pytest.raises(ValueError, match="mask_crop must be one of"):
        CassiDataModule(mask_crop="first")


def test_batch_mask_crop_shares_the_first_samples_window(tmp_path):
    big = np.random.default_rng(1).random((40, 36)).astype(np.float32)
    np.save(tmp_path / "mask.npy", big)
    per_sample = _module(mask=str(tmp_path / "mask.npy"), mask_crop="sample")
    per_batch = _module(mask=str(tmp_path / "mask.npy"), mask_crop="batch")
    a, b = next(iter(per_sample.train_dataloader())), next(iter(per_batch.train_dataloader()))
    assert a["mask"].shape == (4, CROP, CROP) and b["mask"].shape == (CROP, CROP)
    assert torch.equal(b["mask"], a["mask"][0]) and torch.equal(b["cube"], a["cube"])
    assert next(iter(per_batch.val_dataloader()))["mask"].shape == (CROP, CROP)


def test_test_set_is_evals_synthetic_scenes_or_the_mst_test_folder(tmp_path):
    from data.kaist import mst_scenes, synthetic_scenes
    dm = CassiDataModule(crop=CROP, test_scenes=3)
    dm.setup("test")
    expected = synthetic_scenes(3, CROP, CROP, seed=0)
    assert dm.test_names == ["synthetic01", "synthetic02", "synthetic03"]
    batches = list(dm.test_dataloader())
    assert len(batches) == 3 and all(b["cube"].shape == (1, 28, CROP, CROP) for b in batches)
    assert torch.equal(batches[1]["cube"][0], expected[1].cube)
    assert torch.equal(batches[1]["labels"][0], expected[1].labels) and expected[1].labels.shape == (CROP, CROP)
    assert torch.equal(batches[0]["mask"], torch.from_numpy(dm.training_mask()))
    root = mst_toolbox(tmp_path)
    dm = CassiDataModule(root=str(root), source="mst_simulation", crop=CROP)
    dm.setup("predict")
    assert dm.test_names == ["scene01", "scene02"]
    first = next(iter(dm.predict_dataloader()))
    assert torch.equal(first["cube"][0], mst_scenes(root / "TSA_simu_data")[0].cube) and "labels" not in first
    with pytest.raises(FileNotFoundError, match="TSA_simu_data layout"):
        CassiDataModule(test_root=str(tmp_path)).check("test")



def test_mst_layout_without_its_truth_folder_is_an_error_not_synthetic_test_scenes(tmp_path):
    """train.py test / predict on a toolbox folder whose TSA_simu_data/ lacks Truth/ (here: spelt truth/) scored the
    10 built-in synthetic scenes instead, with no word; now it stops naming the folder and --data.test_root."""
    import shutil
    root = mst_toolbox(tmp_path)
    shutil.move(root / "TSA_simu_data" / "Truth", root / "TSA_simu_data" / "truth")
    for stage in ("test", "predict"):
        dm = CassiDataModule(root=str(root), source="mst_simulation", crop=CROP)
        with pytest.raises(FileNotFoundError, match=r"TSA_simu_data/Truth: no such folder.*--data.test_root"):
            dm.check(stage)
        with pytest.raises(FileNotFoundError, match=r"TSA_simu_data/Truth: no such folder"):
            dm.setup(stage)
    shutil.move(root / "TSA_simu_data" / "truth", tmp_path / "TSA_copy")
    (tmp_path / "TSA_copy" / "Truth").mkdir()
    for scene in (tmp_path / "TSA_copy").glob("*.mat"):
        shutil.move(scene, tmp_path / "TSA_copy" / "Truth" / scene.name)
    shutil.copy(root / "TSA_simu_data" / "mask.mat", tmp_path / "TSA_copy" / "mask.mat")
    dm = CassiDataModule(root=str(root), source="mst_simulation", crop=CROP, test_root=str(tmp_path / "TSA_copy"))
    dm.check("test")
    dm.setup("test")
    assert dm.test_names == ["scene01", "scene02"]

# ---------------------------------------------------------------------------------- FVgNET (CRSDUN's layout)
FVGNET_RECIPE = dict(source="fvgnet", crop=CROP, crop_top=8, augment="hflip", splice_prob=0.0, samples_per_epoch=None,
                     val_scenes=1, val_crop=48, mask_crop="batch", batch_size=2)


def _stored(root, name):
    """An FVgNET image as CRSDUN reads it: the .npy cube (H, W, 28) -> (28, H, W), the label PNG -> classes."""
    from data.io import load_label_png
    return (np.load(root / "visible_28" / f"{name}.npy").transpose(2, 0, 1),
            load_label_png(root / "labels" / f"{name}.png"))


def test_fvgnet_layout_reads_the_labelled_training_split(tmp_path):
    from data.layouts import find_training_data
    root = fvgnet_layout(tmp_path, train=5, test=2)
    names = [f"2021-11-03_{k:03d}" for k in range(5)]        # the unlabelled row and test_data.csv are left out
    for given in (root, root.parent):                        # the fvgnet folder or the CRSDUN folder holding it
        found = find_training_data("fvgnet", str(given), None)
        assert [f.path.stem for f in found.files()] == names and found.test_root is None
        assert [f.labels for f in found.files()] == [root / "labels" / f"{n}.png" for n in names]
        assert found.mask == root.parent / "mask" / "mask512x512.mat"
    stored = root / "visible_28" / f"{names[0]}.npy"
    np.save(stored, 3 * np.load(stored))                      # values read as stored (CRSDUN: np.load), not rescaled
    cube, labels = found.files()[0].load_scene()              # the palette-mode PNG reads as the RGB ones
    np.testing.assert_array_equal(cube, _stored(root, names[0])[0])
    assert cube.max() > 2
    assert labels.dtype == np.int64 and set(np.unique(labels)) == {0, 1, 6}


def test_fvgnet_crops_are_crsduns_one_pass_of_row_band_crops_with_horizontal_flips(tmp_path):
    root = fvgnet_layout(tmp_path, train=5, test=2)
    dm = CassiDataModule(root=str(root), **FVGNET_RECIPE)
    dm.setup("fit")
    assert sorted(p.stem for p in dm.train_files + dm.val_files) == [f"2021-11-03_{k:03d}" for k in range(5)]
    assert len(dm.val_files) == 1 and not set(dm.val_files) & set(dm.train_files)
    train = {p.stem: _stored(root, p.stem) for p in dm.train_files}
    assert len(dm.train_set) == 4 and len(dm.train_dataloader()) == 2
    mirrored = 0
    for epoch in range(3):
        seen = []
        for i in range(4):
            item = dm.train_set[(epoch, i)]
            assert item["cube"].shape == (28, CROP, CROP) and item["mask"].shape == (CROP, CROP)
            matches = [(name, flip) for name, (cube, labels) in train.items() for left in range(48 - CROP + 1)
                       for flip in (False, True)
                       if np.array_equal(cube[:, 8:8 + CROP, left:left + CROP][..., ::-1] if flip else
                                         cube[:, 8:8 + CROP, left:left + CROP], item["cube"].numpy())
                       and np.array_equal(labels[8:8 + CROP, left:left + CROP][:, ::-1] if flip else
                                          labels[8:8 + CROP, left:left + CROP], item["labels"].numpy())]
            assert len(matches) == 1, (epoch, i)              # rows 8..8+CROP, columns mirrored or not, no rotation
            seen.append(matches[0][0])
            mirrored += matches[0][1]
        assert sorted(seen) == sorted(train), epoch           # every training image once per epoch
    assert 0 < mirrored < 12
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape == (CROP, CROP) and batch["labels"].shape == (2, CROP, CROP)
    # validation: the whole held-out image with its labels, through the whole mask
    val = next(iter(dm.val_dataloader()))
    cube, labels = _stored(root, dm.val_files[0].stem)
    np.testing.assert_array_equal(val["cube"][0].numpy(), cube)
    np.testing.assert_array_equal(val["labels"][0].numpy(), labels)
    np.testing.assert_array_equal(val["mask"].numpy(), load_mask(root.parent / "mask" / "mask512x512.mat"))


def test_fvgnet_errors_name_the_folder_or_file(tmp_path):
    from PIL import Image
    from data.layouts import find_training_data
    with pytest.raises(ValueError, match=r"CRSDUN recipe trains on FVgNET.*--data.root.*configs/data/synthetic.yaml"):
        find_training_data("fvgnet", None, None)
    with pytest.raises(FileNotFoundError, match=r"no such data folder: .*absent.*configs/data/synthetic.yaml"):
        find_training_data("fvgnet", str(tmp_path / "absent"), None)
    with pytest.raises(FileNotFoundError, match=r"holds neither train_data.csv nor fvgnet/train_data.csv"):
        find_training_data("fvgnet", str(tmp_path), None)
    root = fvgnet_layout(tmp_path, train=4, test=1)
    csv = (root / "train_data.csv").read_text()

    (root / "train_data.csv").write_text(csv + "9,2021-11-03_004,True,apple\n")        # a test image
    with pytest.raises(ValueError, match=r"test_data.csv: 1 test image.*also listed in train_data.csv"):
        find_training_data("fvgnet", str(root), None)
    (root / "train_data.csv").write_text(csv.replace("masks", "labelled"))
    with pytest.raises(ValueError, match=r"train_data.csv: no 'masks' column"):
        find_training_data("fvgnet", str(root), None)
    (root / "train_data.csv").write_text(csv.replace("True", "yes", 1))
    with pytest.raises(ValueError, match=r"train_data.csv, line 2: 'masks' is 'yes'"):
        find_training_data("fvgnet", str(root), None)
    (root / "train_data.csv").write_text(csv)

    (root / "labels" / "2021-11-03_002.png").rename(tmp_path / "kept.png")
    with pytest.raises(FileNotFoundError, match=r"labels/2021-11-03_002.png: missing; .*train_data.csv lists image"):
        CassiDataModule(root=str(root), **FVGNET_RECIPE).check("fit")
    (tmp_path / "kept.png").rename(root / "labels" / "2021-11-03_002.png")
    (root.parent / "mask" / "mask512x512.mat").rename(tmp_path / "mask.mat")
    with pytest.raises(FileNotFoundError, match=r"mask/mask512x512.mat, which is not at .*pass --data.mask"):
        CassiDataModule(root=str(root), **FVGNET_RECIPE).check("fit")
    (tmp_path / "mask.mat").rename(root.parent / "mask" / "mask512x512.mat")

    # read at setup: a colour outside the palette, a cube with 27 bands, labels of another size
    label = root / "labels" / "2021-11-03_001.png"
    rgb = np.asarray(Image.open(label).convert("RGB")).copy()
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(label)
    with pytest.raises(ValueError, match=r"2021-11-03_001.png: 1 colour\(s\) not in the palette: \(1, 2, 3\)"):
        CassiDataModule(root=str(root), **FVGNET_RECIPE).setup("fit")
    rgb[0, 0] = 0
    Image.fromarray(rgb[:40]).save(label)
    with pytest.raises(ValueError, match=r"2021-11-03_001.png: labels of 40 x 48 px for the cube .*001.npy of 48 x 48"):
        CassiDataModule(root=str(root), **FVGNET_RECIPE).setup("fit")
    Image.fromarray(rgb).save(label)
    cube = root / "visible_28" / "2021-11-03_003.npy"
    np.save(cube, np.load(cube)[..., :27])
    with pytest.raises(ValueError, match=r"2021-11-03_003.npy: expected 28 bands, got 27"):
        CassiDataModule(root=str(root), **FVGNET_RECIPE).setup("fit")


def test_synthetic_scenes_hold_the_row_band_and_whole_image_validation_crops():
    """The CRSDUN recipe with configs/data/synthetic.yaml: synthetic scenes large enough for crop_top + crop and
    val_crop, a random mask large enough for the validation windows."""
    dm = CassiDataModule(source="synthetic", num_scenes=2, crop=CROP, crop_top=20, augment="hflip", val_scenes=1,
                         val_crop=40, mask_crop="batch", batch_size=2, samples_per_epoch=None)
    dm.setup("fit")
    assert dm.train_set.source.cubes[0].shape == (28, 40, 40) and dm.mask.shape == (80, 80)
    assert len(dm.train_set) == 2 and next(iter(dm.val_dataloader()))["cube"].shape == (1, 28, 40, 40)
    with pytest.raises(ValueError, match="val_crop=40 differs from crop=16, but with mask_crop=none"):
        CassiDataModule(crop=CROP, val_crop=40).check("fit")
    with pytest.raises(ValueError, match=r"3 training scenes \(one pass per epoch\), fewer than --data.batch_size 4"):
        CassiDataModule(crop=CROP, num_scenes=3, batch_size=4, samples_per_epoch=None).check("fit")


def test_toolbox_cubes_as_a_plain_folder_warn_that_the_layouts_mask_is_not_used(tmp_path):
    """--data.root cave_1024_28 with a config that sets no source (auto: folder) trained with a seeded random mask
    although TSA_simu_data/mask.mat lies beside it, without a word; now a warning names that mask and both ways to
    use it. None with --data.mask or the MST source."""
    import warnings
    root = mst_toolbox(tmp_path)
    cave, mask = root / "cave_1024_28", root / "TSA_simu_data" / "mask.mat"
    plain = CassiDataModule(root=str(cave), crop=16, val_scenes=1, batch_size=2, samples_per_epoch=4)
    with pytest.warns(UserWarning, match=rf"seeded random mask, not {mask}.*--data.source mst_simulation.*--data.mask"):
        plain.check("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kw in ({"mask": str(mask)}, {"source": "mst_simulation"}):
            CassiDataModule(root=str(cave), crop=16, val_scenes=1, batch_size=2, samples_per_epoch=4, **kw).check("fit")


@pytest.mark.parametrize("where", ["TSA_simu_data", "cave_1024_28"])
def test_test_with_the_toolbox_folders_as_a_plain_folder_warns_that_truth_is_not_scored(tmp_path, where):
    """train.py test with a config that sets no source (auto: folder) and --data.root TSA_simu_data, or cave_1024_28
    with TSA_simu_data/Truth beside it, scored the built-in synthetic scenes without a word; now a warning names the
    Truth folder and --data.test_root. None with --data.test_root or the MST source."""
    import warnings
    root = mst_toolbox(tmp_path)
    test = root / "TSA_simu_data"
    plain = CassiDataModule(root=str(root / where), crop=16, mask_crop="none")
    with pytest.warns(UserWarning, match=rf"test scores the 10 built-in synthetic scenes, not {test / 'Truth'}: "
                                         rf"pass --data.test_root {test}"):
        plain.check("test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kw in ({"test_root": str(test)}, {"source": "mst_simulation", "root": str(root)}):
            CassiDataModule(**{"root": str(root / where), "crop": 16, "mask_crop": "none", **kw}).check("test")


def test_no_validation_scenes_train_on_every_cube_file(tmp_path):
    """--data.val_scenes 0 with cube files trains without validation, as with synthetic scenes; it was refused as
    "cannot hold out 0 of 3 scenes for validation and keep at least one for training". validate refuses it, and a
    negative count or one that leaves no training file are refused naming the option."""
    root = mst_toolbox(tmp_path)
    kw = {"source": "mst_simulation", "root": str(root), "crop": 16, "batch_size": 2, "samples_per_epoch": 4}
    dm = CassiDataModule(val_scenes=0, **kw)
    dm.check("fit")
    dm.setup("fit")
    assert len(dm.train_files) == 3 and dm.val_files == [] and len(dm.val_set) == 0
    for stage, val_scenes, said in (("validate", 0, r"--data.val_scenes 0 holds out no scene: validate has none"),
                                    ("fit", -1, r"--data.val_scenes -1: expected the number of cube files held out"),
                                    ("fit", 3, r"3 cube file\(s\); cannot hold out 3 of 3 scenes")):
        with pytest.raises(ValueError, match=said):
            CassiDataModule(val_scenes=val_scenes, **kw).check(stage)
