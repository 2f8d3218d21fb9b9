"""Data: file readers/writers, built-in synthetic scenes, the MST toolbox layouts and KAIST test scenes, the
Lightning training datamodule, PNG previews and atomic output files.

The names below are loaded on first use, so ``import data.io`` (the file readers, used by the
calibration and evaluation entry points) does not import Lightning.
"""
from __future__ import annotations

from cassi.lazy import lazy_exports

_EXPORTS = {
    "data.datamodule": ("CassiDataModule", "EpochSampler", "TrainCrops", "ValCrops"),
    "data.io": ("FVGNET_CLASSES", "FVGNET_PALETTE", "load_cube", "load_label_png", "load_mask", "load_mat",
                "load_measurement", "voc_palette"),
    "data.synthetic": ("KAIST_WAVELENGTHS", "MATERIAL_NAMES", "random_mask", "synthetic_dataset", "synthetic_scene",
                       "wavelengths"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
