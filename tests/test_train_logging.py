"""Experiment logging: offline W&B by default (metrics and images inside the run), TensorBoard selectable."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from test_train import fit

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke" / "mst_s.yaml"
RUN = ["--trainer.max_epochs", "1", "--data.samples_per_epoch", "4", "--data.batch_size", "2", "--data.crop", "32"]


def wandb_records(path: Path) -> list[bytes]:
    """Records of a ``.wandb`` transaction log (LevelDB log format: 32 KiB blocks of
    crc32 / length / type framed chunks after a 7-byte ':W&B' header)."""
    raw = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", raw[:7])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        if pos + 7 + length > len(raw):  # a record still being written
            break
        chunk, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    return records


def history_keys(run_dir: Path, timeout: float = 60.0) -> dict[str, list]:
    """{metric: values} of the run's history records, once the run's closing ``exit`` record is on disk
    (the W&B service may still be writing when ``wandb.finish()`` returns)."""
    from wandb.proto import wandb_internal_pb2
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for data in wandb_records(next(run_dir.glob("run-*.wandb"))):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    values: dict[str, list] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                values.setdefault(key, []).append(json.loads(item.value_json))
    return values


def test_offline_wandb_run_holds_metrics_and_images(tmp_path, monkeypatch):
    import wandb
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    fit(SMOKE, tmp_path, *RUN, logger=True)
    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "expected one offline run under the run folder"
    history = history_keys(runs[0])
    for key in ("train/loss", "train/loss_epoch", "val/psnr", "val/ssim", "val/sam", "lr-Adam",
                "val_scene/synthetic_scene_0/psnr", "val_scene/synthetic_scene_1/sam"):
        assert key in history, f"{key} not logged; logged: {sorted(history)}"
    assert 5 < history["val/psnr"][-1] < 60 and history["lr-Adam"][0] == pytest.approx(4e-4)
    for key in ("preview/reconstruction", "preview/spectra"):
        (name,) = history[f"{key}/filenames"][-1]
        image = runs[0] / "files" / name
        assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((runs[0] / "files" / "media" / "images").rglob("*.png"))) == 2
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["epoch000_comparison.png",
                                                                          "epoch000_spectra.png"]


def test_tensorboard_logger_is_selectable(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    fit(SMOKE, tmp_path, "--trainer.logger", "TensorBoardLogger", *RUN, logger=True)
    (events,) = list(tmp_path.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"val/psnr", "train/loss", "lr-Adam"} <= set(tags["scalars"])
    assert {"preview/reconstruction", "preview/spectra"} <= set(tags["images"])
