"""The files of one calibration: ``calibration.json``, ``operator.npz`` and the figures ``landscape.png`` and
``stages.png``, written from a :class:`calib.result.CalibrationResult` (what ``calibrate.py`` writes; from Python:
``calib.outputs.write_outputs(result, mask, 28, 2, Path("cal"))``)."""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from calib.handed_mask import model_frame
from calib.instrument import instrument_operator
from calib import plots
from cassi.errors import one_line
from cassi.files import json_text, write_text
from cassi.operator_file import save_operator
from models.release import mask_sha256

if TYPE_CHECKING:
    from torch import Tensor

    from calib.result import CalibrationResult

CALIBRATION_FILE = "calibration.json"        # the file every calibration output folder holds


class FiguresNotWritten(Exception):
    """Figures of a calibration that could not be written; calibration.json (whose ``warnings`` say so) and
    operator.npz were. ``files``: those written; ``failures``: one line per figure."""

    def __init__(self, files: dict[str, Path], failures: list[str]) -> None:
        super().__init__("; ".join(failures))
        self.files, self.failures = files, failures


def write_outputs(result: CalibrationResult, mask: Tensor, bands: int, step: int, out: Path,
                  warnings: list[str] = (), measurements: list[str] = (), mask_path: str | None = None
                  ) -> dict[str, Path]:
    """calibration.json (with the ``measurements`` fitted and their ``warnings``, and the handed mask's file,
    shape and sha256, which eval.py --calibration checks), operator.npz and the two figures of a calibration,
    in the folder ``out`` (created). A figure that fails is left out and named in the warnings, the numbers are
    still written, then :class:`FiguresNotWritten` is raised (its traceback printed on stderr)."""
    files = {"json": out / CALIBRATION_FILE, "operator": out / "operator.npz",
             "landscape": out / "landscape.png", "stages": out / "stages.png"}
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    for key, plot in (("landscape", plots.plot_landscape), ("stages", plots.plot_stages)):
        try:
            plot(result, files[key])
        except Exception as err:        # a figure only shows the numbers: its failure must not discard them
            traceback.print_exc()
            failures.append(f"figure {files.pop(key).name} was not written: {type(err).__name__}: "
                            f"{one_line(err)}")
    handed = {"path": None if mask_path is None else str(Path(mask_path).resolve()), "shape": list(mask.shape),
              "sha256": mask_sha256(mask)}
    write_text(files["json"], json_text({**result.to_dict(),
                                         "measurements": [str(Path(p).resolve()) for p in measurements],
                                         "mask": handed, "warnings": [*warnings, *failures]}))
    oversample = tuple(result.settings.get("oversample", (1, 1)))
    mask, estimate = model_frame(result, mask)          # the recovered code when the handed mask was resampled
    phase = None if result.code is None else result.settings["handed_mask"]["phase"]
    save_operator(files["operator"], instrument_operator(mask, bands, step, estimate, oversample,
                                                         result.settings.get("mask_interpolation", "linear")),
                  result.status, result.reasons, None if phase is None else (phase["fy"], phase["fx"]))
    if failures:
        raise FiguresNotWritten(files, failures)
    return files
