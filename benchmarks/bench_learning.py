"""Evidence of learning: MST-S trained for a few hundred CPU steps beats the plain shift-back input.

Training (through the project's own ``ReconstructionModule`` / ``CassiDataModule`` / Lightning trainer):
MST-S, RMSE loss, Adam 4e-4 with a per-epoch cosine schedule, 64 x 64 crops of the training cubes, each
measured through its own random 64 x 64 window of the KAIST mask (batch 1: MST guides its attention with the
first sample's mask only), noise-free nominal instrument. Training cubes: the real-capture reconstructions in
``../shared/data/pseudo_real`` (one scene held out for validation) or, with ``--data synthetic``, the built-in
synthetic scenes.

Test: the 10 ``../shared/data/pseudo_kaist`` cubes (never seen in training), full 256 x 256, measured with the
full KAIST mask. Prints per scene the KAIST-protocol PSNR / SSIM of the shift-back input ``H`` (the network's
own input, shift_back(y / 28 * 2)) and of the trained network, then the mean gain (target: >= --margin dB).
Usage: python -m benchmarks.bench_learning [--steps 600] [--data pseudo_real|synthetic] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch

from benchmarks.common import kaist_mask, pseudo_kaist_cubes, shared_file
from cassi import CassiOperator
from cassi.metrics import kaist_psnr, kaist_ssim
from data.datamodule import CassiDataModule
from training import ReconstructionModule


def train(args: argparse.Namespace) -> ReconstructionModule:
    root = str(shared_file("pseudo_real")) if args.data == "pseudo_real" else None
    epochs = args.epochs
    steps_per_epoch = args.steps // epochs
    data = CassiDataModule(root=root, num_scenes=16, val_scenes=1 if root else 2, crop=args.crop,
                           samples_per_epoch=steps_per_epoch, val_crops_per_scene=4, batch_size=1,
                           mask=str(shared_file("kaist", "mask.mat")), mask_crop=True, seed=0)
    module = ReconstructionModule(model_name="mst_s", loss="rmse", lr=4e-4, scheduler="cosine",
                                  scheduler_kwargs={"eta_min": 1e-6})
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, enable_model_summary=False, callbacks=[])
    trainer.fit(module, datamodule=data)
    print(f"trained {trainer.global_step} steps; held-out validation PSNR "
          f"{float(trainer.callback_metrics['val/psnr']):.2f} dB")
    return module


@torch.no_grad()
def evaluate(module: ReconstructionModule) -> tuple[float, float]:
    module.eval()
    op = CassiOperator(kaist_mask())
    rows = []
    print(f"{'scene':8s} {'shift-back PSNR':>16s} {'MST-S PSNR':>11s} {'shift-back SSIM':>16s} {'MST-S SSIM':>11s}")
    for name, cube in pseudo_kaist_cubes():
        x = cube[None]
        y = op(x)
        baseline, pred = op.input_setting(y, "H"), module(y, op)
        row = [float(kaist_psnr(baseline, x)), float(kaist_psnr(pred, x)),
               float(kaist_ssim(baseline, x)), float(kaist_ssim(pred, x))]
        rows.append(row)
        print(f"{name:8s} {row[0]:16.2f} {row[1]:11.2f} {row[2]:16.3f} {row[3]:11.3f}")
    mean = [sum(col) / len(col) for col in zip(*rows)]
    print(f"{'mean':8s} {mean[0]:16.2f} {mean[1]:11.2f} {mean[2]:16.3f} {mean[3]:11.3f}")
    return mean[0], mean[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps (batch 1)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs the steps are split into (cosine schedule)")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--data", choices=("pseudo_real", "synthetic"), default="pseudo_real")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--margin", type=float, default=3.0, help="required mean PSNR gain over shift-back (dB)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pl.seed_everything(0)
    start = time.perf_counter()
    module = train(args)
    print(f"training took {time.perf_counter() - start:.0f} s")
    baseline, trained = evaluate(module)
    gain = trained - baseline
    verdict = "PASS" if gain >= args.margin else "FAIL"
    print(f"MST-S after {args.steps} steps: {trained:.2f} dB vs shift-back input {baseline:.2f} dB "
          f"(gain {gain:+.2f} dB; target >= {args.margin:.1f} dB): {verdict}")


if __name__ == "__main__":
    main()
