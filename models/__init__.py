"""Reconstruction networks: a registry of published architectures, one file each.

The architectures are imported when the registry is first asked for one (:mod:`models.registry`), so
``from models.release import ...`` or GAP-TV evaluation do not load them. No network imports timm (its
model zoo costs ~1 s of start-up): the few Swin / timm pieces are in :mod:`models.mst_blocks`.
"""
from models.registry import create_model, list_models, register_model
from models.loading import from_official, load_toolbox_checkpoint
from models.release import load_release

__all__ = ["create_model", "list_models", "register_model", "from_official", "load_toolbox_checkpoint",
           "load_release"]
