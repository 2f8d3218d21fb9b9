"""Recipe configs on the user's data, input checks before any work, ``train.py test`` (= ``eval.py kaist``) and
``train.py predict``."""
from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch
from scipy.io import loadmat
from torchmetrics.classification import MulticlassJaccardIndex

from cli_checks import user_error
from conftest import fvgnet_layout, mst_toolbox
from data.kaist import mst_scenes, synthetic_scenes
from cassi.kaist_table import text_table
from test_train import CONFIGS, QUIET, cli, one_step

eval_cli = importlib.import_module("eval")
TINY = ["--trainer.max_epochs", "1", "--data.samples_per_epoch", "2", "--data.batch_size", "2",
        "--data.val_scenes", "1", "--data.num_workers", "0", "--previews.every_n_epochs", "0",
        "--trainer.logger", "false", *QUIET]


def run(subcommand: str, config, root, *overrides: str):
    return cli([subcommand, "--config", str(config), "--trainer.default_root_dir", str(root), *overrides])


def eval_rows(*argv) -> list[dict]:
    out = argv[-1]
    assert eval_cli.main(["kaist", *[str(a) for a in argv[:-1]], "--previews", "0", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())["scenes"]


def assert_same_numbers(ours: list[dict], theirs: list[dict]) -> None:
    assert [r["name"] for r in ours] == [r["name"] for r in theirs]
    for a, b in zip(ours, theirs):
        for metric in ("psnr", "ssim", "sam", "ergas"):
            assert a[metric] == b[metric], (a["name"], metric, a[metric], b[metric])


# ------------------------------------------------------------------------------------------- recipes
def test_recipe_without_data_stops_before_any_work(tmp_path, capsys):
    user_error(capsys, lambda: run("fit", CONFIGS / "mst_l.yaml", tmp_path / "run", *QUIET),
               r"train.py: error: the MST simulation recipe .*cave_1024_28.*--data.root.*configs/data/synthetic.yaml",
               only_line=False)
    assert not (tmp_path / "run").exists()
    user_error(capsys, lambda: run("fit", CONFIGS / "mst_s_real.yaml", tmp_path / "run", "--data.root", str(tmp_path),
                                   *QUIET), r"no CAVE_512_28/ folder", only_line=False)
    assert not (tmp_path / "run").exists()


def test_recipe_trains_on_the_toolbox_folder_and_test_equals_eval_kaist(tmp_path):
    """configs/mst_s.yaml on a toolbox datasets/ folder (cave_1024_28 + TSA_simu_data); train.py test runs on
    TSA_simu_data/Truth with its mask and gives eval.py kaist's numbers for the same checkpoint."""
    root = mst_toolbox(tmp_path, mask_size=32)
    fitted = run("fit", CONFIGS / "mst_s.yaml", tmp_path / "run", "--data.root", str(root), "--data.crop", "32", *TINY)
    assert fitted.trainer.global_step == 1
    assert fitted.datamodule.data().test_root == root / "TSA_simu_data"
    assert len(fitted.datamodule.train_files) == 2 and fitted.model.scene_names == [fitted.datamodule.val_files[0].stem]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    tested = run("test", CONFIGS / "mst_s.yaml", tmp_path / "run", "--data.root", str(root), "--data.crop", "32",
                 "--ckpt_path", str(last), "--trainer.logger", "false", *QUIET)
    ours = tested.model.test_results["scenes"]
    assert [r["name"] for r in ours] == [s.name for s in mst_scenes(root / "TSA_simu_data")]
    assert_same_numbers(ours, eval_rows("--ckpt", last, "--data.root", root / "TSA_simu_data", tmp_path / "eval"))
    logged = tested.trainer.callback_metrics
    assert float(logged["test/psnr"]) == pytest.approx(np.mean([r["psnr"] for r in ours]), rel=1e-6)
    assert "test_scene/scene02/ssim" in logged


def test_test_with_another_mask_than_the_checkpoints_warns_as_eval_kaist(tmp_path, capsys):
    """Was: train.py test of a checkpoint trained on the seeded random mask, on TSA_simu_data (the KAIST mask), said
    nothing, while eval.py kaist warned for the same checkpoint."""
    root = mst_toolbox(tmp_path, mask_size=32, truth=1)
    smoke, cave, simu = CONFIGS / "smoke" / "mst_s.yaml", root / "cave_1024_28", root / "TSA_simu_data"
    run("fit", smoke, tmp_path / "random", "--data.root", str(cave), "--data.crop", "32", *TINY)
    run("fit", smoke, tmp_path / "kaist", "--data.root", str(cave), "--data.mask", str(simu / "mask.mat"),
        "--data.crop", "32", *TINY)
    capsys.readouterr()
    said = {}
    for name in ("random", "kaist"):
        run("test", smoke, tmp_path / name, "--data.root", str(cave), "--data.test_root", str(simu), "--data.crop",
            "32", "--ckpt_path", "last", "--trainer.logger", "false", *QUIET)
        said[name] = [line for line in capsys.readouterr().err.splitlines() if "warning: the test mask" in line]
    assert not said["kaist"] and len(said["random"]) == 1, said
    eval_rows("--ckpt", tmp_path / "random" / "checkpoints" / "last.ckpt", "--data.root", simu, tmp_path / "eval")
    theirs = json.loads((tmp_path / "eval" / "results.json").read_text())["warnings"]
    tail = said["random"][0].partition("warning: the test mask")[2]
    assert tail.startswith(" (shape (32, 32), sha256 ") and " is not the mask released with the network (" in tail
    assert [f"the evaluation mask{tail}"] == [w for w in theirs if w.startswith("the evaluation mask")]


# CRSDUN's recipe on a tiny FVgNET (64 x 64 images and mask; CRSDUN needs sides divisible by 32): crops and
# validation shrunk to fit
FVGNET_SIZES = ["--data.crop", "32", "--data.crop_top", "8", "--data.val_crop", "64", "--data.val_scenes", "1",
                "--data.batch_size", "2", "--data.num_workers", "0", "--trainer.logger", "false",
                "--previews.every_n_epochs", "0", *QUIET]


def test_crsdun_recipe_trains_on_fvgnet_and_validates_on_held_out_whole_images(tmp_path):
    """configs/crsdun_3stg.yaml on the CRSDUN folder: 4 training images = one epoch of 2 steps, the fifth held out
    and validated whole with its labels (mIoU), test_data.csv never read."""
    root = fvgnet_layout(tmp_path, train=5, test=2, size=64, mask_size=64)
    fitted = run("fit", CONFIGS / "crsdun_3stg.yaml", tmp_path / "run", "--data.root", str(root.parent),
                 "--trainer.max_epochs", "1", *FVGNET_SIZES)
    assert fitted.trainer.global_step == 2 and fitted.trainer.precision in ("16-mixed", "bf16-mixed")
    dm = fitted.datamodule
    assert dm.hparams.source == "fvgnet" and dm.hparams.augment == "hflip" and dm.hparams.splice_prob == 0
    assert dm.mask.shape == (64, 64) and len(dm.train_files) == 4
    assert fitted.model.scene_names == [dm.val_files[0].stem]
    assert not {p.stem for p in dm.train_files + dm.val_files} & {"2021-11-03_005", "2021-11-03_006"}
    metrics = fitted.trainer.callback_metrics
    assert 0 <= float(metrics["val/miou"]) <= 1 and math.isfinite(float(metrics["val/psnr"]))
    assert f"val_scene/{dm.val_files[0].stem}/psnr" in metrics


def test_crsdun_recipe_data_errors_are_one_line_before_any_work(tmp_path, capsys):
    from PIL import Image

    def fails(pattern: str, *args: str) -> None:
        user_error(capsys, lambda: run("fit", CONFIGS / "crsdun_3stg.yaml", tmp_path / "run", *args, *FVGNET_SIZES),
                   pattern, only_line=False)
        assert not (tmp_path / "run").exists()

    fails(r"train.py: error: the CRSDUN recipe trains on FVgNET .*--data.root /path/to/CRSDUN/fvgnet; .*"
          r"--config configs/data/synthetic.yaml")
    fails(r"no such data folder: .*absent .*configs/data/synthetic.yaml", "--data.root", str(tmp_path / "absent"))
    root = fvgnet_layout(tmp_path, train=3, test=1, size=64, mask_size=64)
    (root / "labels" / "2021-11-03_001.png").unlink()
    fails(r"labels/2021-11-03_001.png: missing; .*train_data.csv lists image '2021-11-03_001'", "--data.root",
          str(root))
    label = root / "labels" / "2021-11-03_002.png"
    rgb = np.asarray(Image.open(label).convert("RGB")).copy()
    Image.fromarray(rgb).save(root / "labels" / "2021-11-03_001.png")
    rgb[5, 5] = (255, 255, 255)
    Image.fromarray(rgb).save(label)
    fails(r"2021-11-03_002.png: 1 colour\(s\) not in the palette: \(255, 255, 255\)", "--data.root", str(root))
    rgb[5, 5] = 0
    Image.fromarray(rgb).save(label)
    np.save(root / "visible_28" / "2021-11-03_000.npy", np.zeros((64, 64, 31), np.float32))
    fails(r"2021-11-03_000.npy: expected 28 bands, got 31", "--data.root", str(root))


def test_test_on_synthetic_scenes_equals_eval_kaist_and_predict_writes_reconstructions(tmp_path, capsys):
    smoke = CONFIGS / "smoke" / "mst_s.yaml"
    one_step(smoke, tmp_path / "run", "--data.crop", "32")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    common = ["--data.crop", "32", "--data.test_scenes", "2", "--ckpt_path", str(last), "--trainer.logger", "false",
              *QUIET]
    capsys.readouterr()
    tested = run("test", smoke, tmp_path / "run", *common)
    rows = tested.model.test_results["scenes"]
    # the table eval.py kaist prints, last
    printed = capsys.readouterr().out.splitlines()
    table = text_table(rows, tested.model.test_results["mean"]).splitlines()
    heading = printed[-len(table) - 1]
    assert heading.startswith("KAIST protocol on 2 test scene(s)") and heading.endswith(f"weights of {last}")
    assert printed[-len(table):] == table and table[-1].startswith("mean") and "seconds" in table[0]
    assert_same_numbers(rows, eval_rows("--ckpt", last, "--synthetic.count", 2, tmp_path / "eval"))

    run("predict", smoke, tmp_path / "run", *common, "--predictions.path", str(tmp_path / "pred.mat"))
    mat = loadmat(tmp_path / "pred.mat")
    assert mat["pred"].shape == mat["truth"].shape == (2, 32, 32, 28) and mat["pred"].dtype == np.float32
    truth = synthetic_scenes(2, 32, 32)
    np.testing.assert_array_equal(mat["truth"][1], truth[1].cube.numpy().transpose(1, 2, 0))
    run("predict", smoke, tmp_path / "run", *common, "--predictions.path", str(tmp_path / "pred.npz"))
    npz = np.load(tmp_path / "pred.npz")
    assert list(npz["names"]) == ["synthetic01", "synthetic02"]
    np.testing.assert_array_equal(npz["pred"], mat["pred"].transpose(0, 3, 1, 2))
    # the reconstructions are the ones the test scored
    from cassi.metrics import kaist_psnr
    psnr = kaist_psnr(torch.from_numpy(npz["pred"]), torch.from_numpy(npz["truth"]))
    assert [float(p) for p in psnr] == [r["psnr"] for r in rows]
    user_error(capsys, lambda: run("predict", smoke, tmp_path / "run", *common, "--predictions.path",
                                   str(tmp_path / "pred.txt")), "must end in .mat or .npz", only_line=False)


def test_crsdun_test_reports_miou_on_the_synthetic_scenes_labels_and_predict_writes_class_maps(tmp_path, capsys):
    """Was: train.py test of a CRSDUN checkpoint reported no segmentation metric (the test scenes had no labels)."""
    smoke = CONFIGS / "smoke" / "crsdun_3stg.yaml"
    one_step(smoke, tmp_path / "run", "--data.crop", "32")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    tested = run("test", smoke, tmp_path / "run", "--data.test_scenes", "2", "--ckpt_path", str(last),
                 "--trainer.logger", "false", *QUIET)
    results, module = tested.model.test_results, tested.model
    labels = torch.stack([scene.labels for scene in synthetic_scenes(2, 128, 128)])
    inputs = {"cube": torch.stack([scene.cube for scene in synthetic_scenes(2, 128, 128)]),
              "mask": tested.datamodule.test_mask}
    with torch.no_grad():
        predicted = module.eval().model.segmentation(module.protocol_output(inputs)).argmax(dim=1)
    expected = MulticlassJaccardIndex(num_classes=23, average="macro")(predicted, labels)
    assert results["miou"] == pytest.approx(float(expected), abs=1e-6) and results["classes"] == 23
    assert float(tested.trainer.callback_metrics["test/miou"]) == pytest.approx(results["miou"])
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"segmentation mIoU {results['miou']:.4f} over the ")
    # predict writes the class maps too (was: the reconstructions only)
    for suffix in (".npz", ".mat"):
        run("predict", smoke, tmp_path / "run", "--data.test_scenes", "2", "--ckpt_path", str(last),
            "--trainer.logger", "false", "--predictions.path", str(tmp_path / f"pred{suffix}"), *QUIET)
    written = np.load(tmp_path / "pred.npz")["segmentation"]
    assert written.dtype == np.uint8 and np.array_equal(written, predicted.numpy())
    assert np.array_equal(loadmat(tmp_path / "pred.mat")["segmentation"], written)


def test_predict_never_writes_over_its_inputs_or_a_folder(tmp_path, capsys):
    """``--predictions.path`` naming the run's mask file (or a folder) is refused before any work; the mask is
    left as it was."""
    from scipy.io import savemat
    mask = tmp_path / "mask.mat"
    savemat(mask, {"mask": (np.random.default_rng(0).random((32, 32)) > 0.5).astype(np.float32)})
    before = mask.read_bytes()
    common = ["--data.crop", "32", "--data.test_scenes", "1", "--data.mask", str(mask), "--trainer.logger", "false",
              *QUIET]
    smoke = CONFIGS / "smoke" / "mst_s.yaml"
    user_error(capsys, lambda: run("predict", smoke, tmp_path / "run", *common, "--predictions.path", str(mask)),
               r"output .*mask.mat is the input .*mask.mat", only_line=False)
    assert mask.read_bytes() == before
    (tmp_path / "folder.npz").mkdir()
    user_error(capsys, lambda: run("predict", smoke, tmp_path / "run", *common, "--predictions.path",
                                   str(tmp_path / "folder.npz")), r"folder.npz is a folder", only_line=False)


# ------------------------------------------------------------------------------------- input checks
def test_per_sample_masks_with_mst_stop_before_any_work_and_batch_windows_train(tmp_path, capsys):
    smoke = CONFIGS / "smoke" / "mst_s.yaml"
    user_error(capsys, lambda: one_step(smoke, tmp_path / "a", "--data.crop", "32", "--data.mask_crop", "sample",
                                        "--data.mask_size", "48"),
               "mst_s cannot take per-sample masks.*--data.mask_crop batch", only_line=False)
    assert not (tmp_path / "a").exists()
    trained = one_step(smoke, tmp_path / "b", "--data.crop", "32", "--data.mask_crop", "batch", "--data.mask_size",
                       "48")
    assert trained.trainer.global_step == 1


def test_sizes_the_network_cannot_take_stop_before_any_work(tmp_path, capsys, monkeypatch):
    """Was: --data.crop 30 with MST-S (H, W multiples of 4) ended in a traceback after the run folder was made."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    smoke = CONFIGS / "smoke" / "mst_s.yaml"
    rule = r"it must have H and W each a multiple of 4, H <= 256 \(2 stride-2 down-samplings"
    user_error(capsys, lambda: run("fit", smoke, tmp_path / "run", "--data.crop", "30", *QUIET),   # offline W&B
               rf"error: --data.crop 30: the input of mst_s is 30x30; {rule}", only_line=False)
    user_error(capsys, lambda: run("fit", smoke, tmp_path / "run", "--data.crop", "32", "--data.mask_crop", "batch",
                                   "--data.val_crop", "34", "--data.val_scenes", "1", *QUIET),
               rf"--data.val_crop 34: the input of mst_s is 34x34; {rule}", only_line=False)
    user_error(capsys, lambda: run("test", smoke, tmp_path / "run", "--data.crop", "30", "--data.test_scenes", "1",
                                   *QUIET),
               rf"the built-in synthetic test scenes .*: the input of mst_s is 30x30; {rule}", only_line=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_accelerator_is_one_clear_error(tmp_path, capsys):
    user_error(capsys, lambda: one_step(CONFIGS / "smoke" / "mst_s.yaml", tmp_path, "--trainer.accelerator", "gpu"),
               "--trainer.accelerator gpu: no CUDA GPU is visible", only_line=False)
    assert not tmp_path.joinpath("checkpoints").exists()
