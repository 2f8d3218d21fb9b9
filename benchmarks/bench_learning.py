"""Evidence of learning: MST-S trained for a few hundred CPU steps beats the plain shift-back input.

The instrument is a 64 x 64 CASSI whose coded aperture is the centre 64 x 64 window of the KAIST mask; as in the
MST protocol (one fixed mask for training and test, 256 x 256 there), the network is trained and tested with it.
(Small crops of the full-size instrument would not do: MST's official mask guidance hard-codes 256 rows -- its
per-band mask offsets are ``2 / (256 // rows)**2`` px -- so a network trained at 64 px does not run the same
operation at 256 px.)

Training goes through the project's own ``ReconstructionModule`` / ``CassiDataModule`` / Lightning trainer on the
CPU: MST-S, RMSE loss, Adam 4e-4 with a per-epoch cosine schedule (eta_min 1e-6), 64 x 64 crops (half of them
spliced mosaics, with rotations / flips, as the toolbox), noise-free nominal measurements. Training cubes: the
built-in synthetic scenes (32, 2 more held out for validation) or, with ``--data pseudo_real``, the real-capture
reconstructions in ``../shared/data/pseudo_real`` (4 scenes, 1 held out; they transfer less well: dark, few).

Test: the 10 ``../shared/data/pseudo_kaist`` cubes (never seen in training), each cut into 16 tiles of 64 x 64;
every tile is a snapshot through the instrument; the tiles' reconstructions are put back together and scored per
scene with the KAIST-protocol PSNR / SSIM, against the shift-back input ``H`` of the same snapshots (the
network's own input, shift_back(y / 28 * 2)). Prints both and the mean gain (target: >= --margin dB).
Measured (2-core CPU, 470 s of training): 900 steps on synthetic scenes: 25.97 dB / SSIM 0.629 against
21.14 dB / 0.597 for the shift-back input (+4.83 dB); 600 steps on pseudo_real: 22.81 dB (+1.67 dB).
Usage: python -m benchmarks.bench_learning [--steps 900] [--batch 4] [--data synthetic|pseudo_real]
       [--threads 2] [--save weights.pt | --load weights.pt]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from benchmarks.common import kaist_mask, pseudo_kaist_cubes, shared_file
from cassi import CassiOperator
from cassi.files import atomic_path
from cassi.metrics import kaist_psnr, kaist_ssim
from data.datamodule import CassiDataModule
from training import ReconstructionModule


def instrument_mask(size: int) -> torch.Tensor:
    """The centre size x size window of the KAIST mask."""
    mask = kaist_mask()
    top, left = (mask.shape[0] - size) // 2, (mask.shape[1] - size) // 2
    return mask[top:top + size, left:left + size].contiguous()


def train(args: argparse.Namespace, mask_file: Path) -> ReconstructionModule:
    root = str(shared_file("pseudo_real")) if args.data == "pseudo_real" else None
    steps_per_epoch = args.steps // args.epochs
    data = CassiDataModule(root=root, num_scenes=32, val_scenes=1 if root else 2, crop=args.crop,
                           samples_per_epoch=steps_per_epoch * args.batch, val_crops_per_scene=8,
                           batch_size=args.batch, mask=str(mask_file), seed=0)
    module = ReconstructionModule(model_name="mst_s", loss="rmse", lr=4e-4, scheduler="cosine",
                                  scheduler_kwargs={"eta_min": 1e-6})
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=args.epochs, logger=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    print(f"trained {trainer.global_step} steps of batch {args.batch}; held-out validation PSNR "
          f"{float(trainer.callback_metrics['val/psnr']):.2f} dB")
    return module


def to_tiles(cube: torch.Tensor, size: int) -> torch.Tensor:
    """(L, H, W) -> (H/size * W/size, L, size, size), row-major tiles."""
    bands, height, width = cube.shape
    grid = cube.reshape(bands, height // size, size, width // size, size)
    return grid.permute(1, 3, 0, 2, 4).reshape(-1, bands, size, size)


def from_tiles(tiles: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`to_tiles`: (n, L, size, size) -> (1, L, H, W)."""
    _, bands, size, _ = tiles.shape
    grid = tiles.reshape(height // size, width // size, bands, size, size)
    return grid.permute(2, 0, 3, 1, 4).reshape(1, bands, height, width)


@torch.no_grad()
def evaluate(module: ReconstructionModule, mask: torch.Tensor) -> tuple[float, float]:
    """Per-scene table; returns the mean PSNR of the shift-back input and of the network."""
    module.eval()
    op = CassiOperator(mask)
    rows = []
    print(f"{'scene':8s} {'shift-back PSNR':>16s} {'MST-S PSNR':>11s} {'shift-back SSIM':>16s} {'MST-S SSIM':>11s}")
    for name, cube in pseudo_kaist_cubes():
        y = op(to_tiles(cube, mask.shape[0]))
        x = cube[None]
        baseline = from_tiles(op.input_setting(y, "H"), *cube.shape[1:])
        pred = from_tiles(module(y, op), *cube.shape[1:])
        row = [float(kaist_psnr(baseline, x)), float(kaist_psnr(pred, x)), float(kaist_ssim(baseline, x)),
               float(kaist_ssim(pred, x))]
        rows.append(row)
        print(f"{name:8s} {row[0]:16.2f} {row[1]:11.2f} {row[2]:16.3f} {row[3]:11.3f}")
    mean = [sum(col) / len(col) for col in zip(*rows)]
    print(f"{'mean':8s} {mean[0]:16.2f} {mean[1]:11.2f} {mean[2]:16.3f} {mean[3]:11.3f}")
    return mean[0], mean[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=900, help="training steps")
    parser.add_argument("--batch", type=int, default=4, help="crops per step")
    parser.add_argument("--epochs", type=int, default=6, help="epochs the steps are split into (cosine schedule)")
    parser.add_argument("--crop", type=int, default=64, help="instrument size: training crop and test tile (px)")
    parser.add_argument("--data", choices=("synthetic", "pseudo_real"), default="synthetic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--margin", type=float, default=3.0, help="required mean PSNR gain over shift-back (dB)")
    parser.add_argument("--save", type=Path, help="write the trained network's weights here")
    parser.add_argument("--load", type=Path, help="evaluate these weights (from --save) instead of training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pl.seed_everything(0)
    mask = instrument_mask(args.crop)
    if args.load:
        module = ReconstructionModule(model_name="mst_s")
        module.model.load_state_dict(torch.load(args.load, map_location="cpu", weights_only=True))
    else:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            mask_file = Path(folder) / "mask.npy"
            np.save(mask_file, mask.numpy())
            module = train(args, mask_file)
        print(f"training took {time.perf_counter() - start:.0f} s")
        if args.save:
            with atomic_path(args.save) as tmp:
                torch.save(module.model.state_dict(), tmp)
    baseline, trained = evaluate(module, mask)
    gain = trained - baseline
    verdict = "PASS" if gain >= args.margin else "FAIL"
    print(f"MST-S after {args.steps} CPU steps ({args.data} data): {trained:.2f} dB vs shift-back input "
          f"{baseline:.2f} dB on pseudo-KAIST {args.crop} px snapshots (gain {gain:+.2f} dB; target >= "
          f"{args.margin:.1f} dB): {verdict}")


if __name__ == "__main__":
    main()
