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
