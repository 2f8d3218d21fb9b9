"""Data: file readers/writers, built-in synthetic scenes, the MST toolbox layouts and KAIST test scenes, the
Lightning training datamodule, PNG previews and atomic output files."""
from data.datamodule import CassiDataModule, EpochSampler, TrainCrops, ValCrops
from data.io import (FVGNET_CLASSES, FVGNET_PALETTE, load_cube, load_label_png, load_mask, load_mat,
                     load_measurement, voc_palette)
from data.synthetic import (KAIST_WAVELENGTHS, MATERIAL_NAMES, random_mask, synthetic_dataset, synthetic_scene,
                            wavelengths)

__all__ = [
    "CassiDataModule", "EpochSampler", "TrainCrops", "ValCrops",
    "FVGNET_CLASSES", "FVGNET_PALETTE", "load_cube", "load_label_png", "load_mask", "load_mat",
    "load_measurement", "voc_palette",
    "KAIST_WAVELENGTHS", "MATERIAL_NAMES", "random_mask", "synthetic_dataset", "synthetic_scene", "wavelengths",
]
