"""Reconstruction networks: a registry of published architectures, one file each."""
from models.registry import create_model, list_models, register_model
from models.loading import from_official, load_toolbox_checkpoint
from models.release import load_release

__all__ = ["create_model", "list_models", "register_model", "from_official", "load_toolbox_checkpoint",
           "load_release"]
import models.bisrnet  # noqa: F401
import models.crsdun  # noqa: F401
import models.mst  # noqa: F401  (registers mst_*)
import models.hsra  # noqa: F401
import models.hsra_unfolding  # noqa: F401
import models.s2_transformer  # noqa: F401
