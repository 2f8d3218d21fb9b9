"""DDP on the CPU: ``train.py`` with 2 processes (gloo), launched as a user would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# A callback that records, per rank, fingerprints of the training crops it saw and a hash of its final weights.
PROBE = '''
import hashlib, json, os
import pytorch_lightning as pl


class Probe(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        for cube in batch["cube"]:
            self.seen.append(hashlib.sha256(cube.numpy().tobytes()).hexdigest())

    def on_fit_end(self, trainer, module):
        digest = hashlib.sha256()
        for name, tensor in sorted(module.model.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
        record = {"rank": trainer.global_rank, "world": trainer.world_size, "seen": self.seen,
                  "weights": digest.hexdigest(), "steps": trainer.global_step}
        with open(os.path.join(os.environ["PROBE_DIR"], f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)
'''


def _weights_hash(state_dict: dict) -> str:
    import hashlib
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        if name.startswith("model."):
            digest.update(name[len("model."):].encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


def test_ddp_two_cpu_processes(tmp_path):
    (tmp_path / "ddp_probe.py").write_text(PROBE)
    run = tmp_path / "run"
    env = {**os.environ, "PROBE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "train.py", "fit", "--config", "configs/smoke/mst_s.yaml",
               "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
               "--trainer.default_root_dir", str(run), "--trainer.logger", "CSVLogger",
               "--trainer.max_epochs", "2", "--data.crop", "32",
               "--data.samples_per_epoch", "8", "--data.batch_size", "2", "--trainer.callbacks+=ddp_probe.Probe",
               "--trainer.enable_progress_bar", "false"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [4, 4]
    # each rank trained on its own half of the 8 items per epoch: 2 epochs x 2 steps x 2 crops, no overlap
    seen0, seen1 = set(ranks[0]["seen"]), set(ranks[1]["seen"])
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 8 and not seen0 & seen1
    # the replicas ended with identical weights, and that is what rank 0 checkpointed
    assert ranks[0]["weights"] == ranks[1]["weights"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert _weights_hash(last["state_dict"]) == ranks[0]["weights"]
    # one writer: one logger version, one set of checkpoints (best + last), one summary
    assert [p.name for p in run.glob("version_*")] == ["version_0"]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(names) == 2 and "last.ckpt" in names and names[0].startswith("best-epoch")
    metrics = (run / "version_0" / "metrics.csv").read_text()
    assert "val/psnr" in metrics and "val_scene/synthetic_scene_1/psnr" in metrics
    assert done.stdout.count("Training finished") == 1
