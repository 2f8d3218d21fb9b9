"""Train a CASSI reconstruction network: ``python train.py fit --config configs/mst_s.yaml --data.root DIR``.

``DIR`` is the MST toolbox's ``datasets/`` folder (or add ``--config configs/data/synthetic.yaml`` instead).
See ``python train.py fit --help``, README "Training" and :mod:`training.cli`. Multi-GPU: ``--trainer.devices 4
--trainer.strategy ddp``; mixed precision: ``--trainer.precision bf16-mixed``; resume: ``--ckpt_path last``;
KAIST protocol on a checkpoint: ``train.py test ... --ckpt_path PATH``; reconstructions: ``train.py predict``.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see README, "CPU threads"

from training.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
