"""The MST toolbox's data layout as its users have it: the errors for a file that breaks it name the file, the key and
what to do with the commands that read it (train.py fit / test, eval.py kaist)."""
import numpy as np
import pytest
from scipy.io import savemat

from conftest import mst_toolbox
from data.datamodule import CassiDataModule
from data.kaist import mst_mask, mst_scenes
from data.layouts import find_training_data


def _message(call) -> str:
    with pytest.raises(ValueError) as err:
        call()
    return str(err.value)


def test_key_errors_offer_no_option_the_command_lacks(tmp_path):
    """train.py's cube files and eval.py kaist's Truth / mask files have no key option; their errors said 'or the
    command's key option'. The datamodule's mask has one: --data.mask_key."""
    root = mst_toolbox(tmp_path)
    cube = np.random.default_rng(0).random((40, 40, 28))
    savemat(root / "cave_1024_28" / "scene02.mat", {"cube": cube})
    savemat(root / "TSA_simu_data" / "Truth" / "scene02.mat", {"truth": cube[:16, :16]})
    messages = {
        "cave": _message(lambda: find_training_data("mst_simulation", str(root), None).files()[1].load()),
        "truth": _message(lambda: mst_scenes(root / "TSA_simu_data")),
    }
    assert r"scene02.mat: none of the keys ['img_expand', 'img'] found; keys present: ['cube']" in messages["cave"]
    assert r"scene02.mat: key 'img' not found; keys present: ['truth']" in messages["truth"]
    savemat(root / "TSA_simu_data" / "mask.mat", {"Mask": np.ones((16, 16))})
    messages["mask"] = _message(lambda: mst_mask(root / "TSA_simu_data"))
    assert "mask.mat: key 'mask' not found; keys present: ['Mask']" in messages["mask"]
    for where, message in messages.items():
        assert "key option" not in message and "re-save" in message, where
    dm = CassiDataModule(root=str(root), source="mst_simulation", crop=16, val_scenes=1)
    assert "(pick one with --data.mask_key KEY)" in _message(lambda: dm.check("fit"))


def test_eval_kaist_takes_the_toolbox_datasets_folder_as_train_py_does(tmp_path):
    """eval.py kaist --data.root datasets/ (what train.py fit / test take) reads datasets/TSA_simu_data; it ended with
    'datasets/mask.mat does not exist'. A Truth/ folder given itself is an error naming the folder to pass."""
    from evaluation.kaist import DataSpec, load_data
    from evaluation.reconstructors import GapTV
    root = mst_toolbox(tmp_path)
    scenes, mask, info = load_data(DataSpec(root=str(root)), GapTV())
    expected = mst_scenes(root / "TSA_simu_data")
    assert [s.name for s in scenes] == ["scene01", "scene02"] and all(
        np.array_equal(s.cube, e.cube) for s, e in zip(scenes, expected))
    assert np.array_equal(mask, mst_mask(root / "TSA_simu_data"))
    assert info["root"] == str(root / "TSA_simu_data")
    assert info["mask"]["source"] == str(root / "TSA_simu_data" / "mask.mat")
    with pytest.raises(FileNotFoundError, match=r"Truth: expected the MST layout.*pass --data.root .*TSA_simu_data"):
        load_data(DataSpec(root=str(root / "TSA_simu_data" / "Truth")), GapTV())


def test_a_band_first_cube_says_how_it_is_stored_and_how_to_store_it(tmp_path):
    """A .mat cube saved 28 x H x W (or written with h5py as H x W x 28, which MATLAB reads reversed) said 'got 40
    bands (shape as (L, H, W): (40, 28, 40); is layout='HWL' right?)': neither the file's shape nor a step a
    train.py / eval.py user can take."""
    import h5py
    root = mst_toolbox(tmp_path)
    cube = np.random.default_rng(0).integers(300, 65535, (28, 40, 40), dtype=np.uint16)
    savemat(root / "cave_1024_28" / "scene02.mat", {"img_expand": cube})
    with h5py.File(root / "cave_1024_28" / "scene03.mat", "w") as f:      # h5py's (40, 40, 28) is MATLAB's 28 x 40 x 40
        f.create_dataset("img_expand", data=np.transpose(cube, (1, 2, 0)))
    files = find_training_data("mst_simulation", str(root), None).files()
    for file in files[1:]:
        message = _message(file.load)
        assert (f"{file.path}['img_expand']: expected 28 bands, got 40: it holds a 28 x 40 x 40 array (MATLAB's "
                "order; h5py shows a v7.3 file's axes reversed), read as H x W x L") in message
        assert "store the cube as H x W x 28" in message and "(shape as (L, H, W)" not in message


def test_the_toolbox_folder_as_a_plain_folder_of_cubes_names_the_sources_that_read_it(tmp_path):
    """train.py fit --config configs/smoke/mst_s.yaml --data.root datasets/ (source auto: folder) said only
    'datasets: no cube files (.mat, .npz, .npy)'."""
    root = mst_toolbox(tmp_path)
    (root / "CAVE_512_28").mkdir()
    with pytest.raises(FileNotFoundError, match=r"datasets: the MST toolbox's datasets/ folder, not a folder of cubes; "
                       r"pass --data.source mst_simulation \(cave_1024_28/\) or mst_real \(CAVE_512_28/\), or "
                       r"--data.root .*datasets/cave_1024_28"):
        find_training_data("auto", str(root), None)


def test_the_kaist_test_folder_as_training_root_names_the_test_option(tmp_path):
    """train.py test --data.root datasets/TSA_simu_data (the folder eval.py kaist takes) was told only to pass the
    toolbox's datasets/, which test / predict need not have: --data.test_root takes that folder alone."""
    root = mst_toolbox(tmp_path)
    test_folder = root / "TSA_simu_data"
    with pytest.raises(FileNotFoundError, match=rf"pass --data.root /path/to/MST/datasets .*; train.py test / predict "
                       rf"take this folder alone as --data.test_root {test_folder}$"):
        find_training_data("mst_simulation", str(test_folder), None)
    dm = CassiDataModule(source="mst_simulation", test_root=str(test_folder), crop=16)
    dm.check("test")
    dm.setup("test")
    assert dm.test_names == ["scene01", "scene02"]
