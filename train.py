"""Train a CASSI reconstruction network: ``python train.py fit --config configs/mst_s.yaml --data.root DIR``.

``DIR`` is the MST toolbox's ``datasets/`` folder (or add ``--config configs/data/synthetic.yaml`` instead).
See ``python train.py fit --help``, README "Training" and :mod:`training.cli`. Multi-GPU: ``--trainer.devices 4
--trainer.strategy ddp``; mixed precision: ``--trainer.precision bf16-mixed``; resume: ``--ckpt_path last``;
KAIST protocol on a checkpoint: ``train.py test ... --ckpt_path PATH``; reconstructions: ``train.py predict``.
``train.py [SUBCOMMAND] --help`` prints LightningCLI's help from a per-user store when nothing it was made from
changed, without importing Lightning (:mod:`training.help_cache`).
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see README, "CPU threads"

from training.help_cache import is_help_request, print_help  # noqa: E402


def run() -> None:
    """LightningCLI on the command line (imports Lightning, torch and the project)."""
    from training.cli import main

    main()


if __name__ == "__main__":
    if is_help_request(sys.argv[1:]):
        print_help(sys.argv[1:], run)
    else:
        run()
