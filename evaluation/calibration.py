"""Where scenario III's operator comes from: ``calib.calibrate`` per measurement, or a saved estimate.

* ``--operator FILE.npz``: an operator file (``cassi.operator_file``) written by ``calibrate.py``; its mask
  must be the evaluation mask (same shape and values) -- its mismatch and forward model (N, K and the
  mask reading) are used. One whose mask is the code recovered from a handed mask (``code_phase``) needs the
  evaluation mask to be that handed mask (warp_mask of the code at the phase, to ``calib.handed_mask.TOLERANCE``):
  III-model reads the code at its estimate (``model_frames``), III the evaluation mask at the handed-frame one.
* ``--calibration FILE.json``: ``calibrate.py``'s calibration.json; the five parameters are read from its
  ``estimate`` object (or from the top level), the forward model from ``settings.oversample`` and
  ``settings.mask_interpolation`` (absent: bilinear) if present, and used for every scene. A file with a
  ``scenes`` object (scene name -> calibration or estimate) gives each scene its own estimate.
* ``--calibration DIR``: one calibration per scene, ``DIR/<scene name>/calibration.json`` (e.g. written by
  ``calibrate.py --out DIR/scene01`` for the measurement of scene01): the folder's name is the scene's, or the
  scene's with the KAIST snapshots' ``_snapshot`` suffix (``calibrate.py --separately --meas
  .../scene01_snapshot.npz ...`` writes ``DIR/scene01_snapshot/``); a scene without one is an error naming the scene
  and the file expected, two folders of one scene an error naming both. Each scene's estimate keeps its own forward
  model (they may differ: calibrate.py's ``--forward-model auto`` chooses per scene).
* neither: ``calib.calibrate(y, mask, solver=..., ckpt=...)`` (default: the held-out criterion) estimates
  the mismatch of every scene's measurement on its own (slow: a search per scene), with calibrate.py's
  defaults: the data choose each scene's forward model.

A calibration whose handed mask was read as a resampled binary code (``settings.handed_mask.detected``) was fitted
through the recovered code at the estimate in the code's frame, which its ``operator.npz`` (beside its
calibration.json) holds and scenario III-model reads (``model_frames``; :func:`calib.handed_mask.model_frame`).

A calibration's status and reasons (an operator file's ``calibration_status`` and
``calibration_reasons``, a calibration.json's ``status`` and ``reasons``, or ``calib.calibrate``'s result per
scene) go into the calibrator's ``description["calibration_status"]``, by file or scene
(:func:`cassi.operator_file.calibration_status`), for the reports. A saved calibration whose status is
"failed" is refused when it is read (:func:`read_saved`, before any work), naming the file, the status and its
reasons; a per-scene calibration made here that fails leaves its scene out of scenario III
(:func:`evaluation.scenarios.run_scenarios`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from calib.handed_mask import TOLERANCE, model_frame
from cassi import Mismatch, PARAMETER_UNITS
from cassi.errors import UserError
from cassi.operator import MASK_INTERPOLATIONS
from cassi.operator_file import CODE_PHASE_KEY, OperatorRecord, calibration_status, read_operator_file, refuse_failed
from cassi.warp import warp_mask
from evaluation.scenarios import CALIBRATION_FILE, LIVE, OPERATOR_FILE, PER_SCENE, FixedEstimate
from models.release import mask_sha256


def _json_status(content: Any) -> dict[str, Any]:
    """The calibration status a calibration.json (or a scene's entry) records (:func:`calibration_status`)."""
    if not isinstance(content, dict):
        return calibration_status(None, None)
    return calibration_status(content.get("status"), content.get("reasons"))


def handed_estimate(record: OperatorRecord, path: str | Path, mask: Tensor) -> Mismatch:
    """The estimate for the handed mask of an operator file whose mask is the code recovered from it
    (``record.code_phase``), refused unless warp_mask of that code at the phase is ``mask`` (to the detection
    tolerance, the array's outer rows and columns left out, as :mod:`calib.handed_mask` verifies)."""
    fy, fx = record.code_phase
    again = warp_mask(record.mask, -fx, -fy)
    residual = float((again - mask).abs()[1:-1, 1:-1].max() / mask.abs().max().clamp_min(1e-12))
    if residual > TOLERANCE:
        raise UserError(f"{path}: the operator's mask is the binary code recovered from a handed mask resampled at "
                        f"phase fy={fy:g}, fx={fx:g} px ({CODE_PHASE_KEY}), and that resampling is not the evaluation "
                        f"mask (max difference {residual:.3g} of its maximum, tolerance {TOLERANCE:g}): evaluate with "
                        "the mask handed to calibrate.py, or calibrate with the evaluation mask")
    return Mismatch.from_dict({**record.mismatch.to_dict(), "dx": record.mismatch.dx + fx,
                               "dy": record.mismatch.dy + fy})


def from_operator_record(record: OperatorRecord, path: str | Path, mask: Tensor, bands: int = 28, step: int = 2
                         ) -> FixedEstimate:
    """The mismatch and forward model (N, K, mask reading) of the operator file ``path`` (read: ``record``), whose
    mask must equal ``mask`` (or, the code recovered from a handed mask, resample to it: :func:`handed_estimate`)
    and whose bands and step must be these."""
    shape, wanted = tuple(record.mask.shape), tuple(mask.shape)
    if shape != wanted:
        raise UserError(f"{path}: the operator's mask is {shape} but the evaluation mask is {wanted}; "
                        "calibrate with the same mask")
    if record.code_phase is not None:
        estimate, frame = handed_estimate(record, path, mask), (record.mask, record.mismatch)
    elif mask_sha256(record.mask) != mask_sha256(mask):
        raise UserError(f"{path}: the operator's mask has the evaluation mask's shape {shape} but other values "
                        f"(sha256 {mask_sha256(record.mask)[:12]}... vs {mask_sha256(mask)[:12]}...): it is not the "
                        "evaluation mask; calibrate with the same mask")
    else:
        estimate, frame = record.mismatch, None
    if (record.bands, record.step) != (bands, step):
        raise UserError(f"{path}: the operator has {record.bands} bands and step {record.step}, the evaluation "
                        f"{bands} bands and step {step}")
    status = {str(path): record.calibration}
    phase = None if frame is None else dict(zip(("fy", "fx"), record.code_phase))
    return FixedEstimate(estimate, {"source": OPERATOR_FILE, "path": str(path), "calibration_status": status,
                                    **_frame_record(frame, phase)},
                         record.oversample, record.mask_interpolation, {} if frame is None else {None: frame})


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"calibration file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        hint = "; an operator file (operator.npz) is passed with --operator" if path.suffix == ".npz" else ""
        raise ValueError(f"{path}: not valid JSON ({err}){hint}") from err


def _estimate(content: Any, where: str, mask: Tensor | None) -> Mismatch:
    """The mismatch of one calibration (``estimate`` object or top-level parameter names); refused, given the
    evaluation ``mask``, when it was made with another mask (:func:`check_calibration_mask`)."""
    if mask is not None:
        check_calibration_mask(content, where, mask)
    values = content.get("estimate", content) if isinstance(content, dict) else None
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object with the mismatch parameters {sorted(PARAMETER_UNITS)}")
    params = {k: values[k] for k in PARAMETER_UNITS if k in values}
    if not params:
        raise ValueError(f"{where}: no mismatch parameter ({', '.join(PARAMETER_UNITS)}) found "
                         f"(keys: {sorted(values)})")
    try:
        return Mismatch.from_dict(params)
    except ValueError as err:
        raise UserError(f"{where}: {err}") from err


def _oversample(content: Any, where: str) -> tuple[int, int] | None:
    """The forward model (N, K) recorded in a calibration's ``settings.oversample``, if any."""
    settings = content.get("settings") if isinstance(content, dict) else None
    oversample = settings.get("oversample") if isinstance(settings, dict) else None
    if oversample is None:
        return None
    if not (isinstance(oversample, list) and len(oversample) == 2
            and all(isinstance(v, int) and v >= 1 for v in oversample)):
        raise UserError(f"{where}: settings.oversample must be [N, K] with integers >= 1, got {oversample!r}")
    return tuple(oversample)


def _forward_model(content: Any, where: str) -> tuple[tuple[int, int] | None, str]:
    """The forward model of a calibration: its (N, K) (:func:`_oversample`) and ``settings.mask_interpolation``
    (absent: "linear"; "cubic" only with N = 1)."""
    oversample = _oversample(content, where)
    settings = content.get("settings") if isinstance(content, dict) else None
    reading = settings.get("mask_interpolation", "linear") if isinstance(settings, dict) else "linear"
    if reading not in MASK_INTERPOLATIONS or reading != "linear" and (oversample or (1, 1))[0] != 1:
        raise UserError(f"{where}: settings.mask_interpolation must be one of {list(MASK_INTERPOLATIONS)} ('cubic' "
                        f"with settings.oversample N = 1 only), got {reading!r} with settings.oversample "
                        f"{list(oversample) if oversample else None}")
    return oversample, reading


# calibrate.py --separately writes DIR/<measurement file stem>/; the KAIST snapshots (MST layout, shared
# data/kaist_meas/sceneNN_snapshot.npz) have stems "<scene>_snapshot", so that folder calibrates <scene>
SNAPSHOT_SUFFIX = "_snapshot"


@dataclass
class PerSceneEstimates:
    """A saved calibration per scene (by scene name): ``DIR/<scene>/calibration.json`` or a ``scenes`` object, each
    with its own forward model (``description["forward_models"]``; ``oversample`` and ``mask_interpolation`` are
    theirs where they agree, else None and :data:`PER_SCENE`), read from ``files`` (by scene)."""

    estimates: dict[str, Mismatch]
    description: dict[str, Any] = field(default_factory=dict)
    oversample: tuple[int, int] | None = None
    mask_interpolation: str = "linear"
    model_frames: dict[str, tuple[Tensor, Mismatch]] = field(default_factory=dict)

    def require(self, scenes: list[str]) -> None:
        """Fail before any reconstruction when a scene to evaluate has no calibration."""
        missing = [s for s in scenes if s not in self.estimates]
        if missing:
            path = self.description.get("path")
            expected = (", ".join(f"{Path(path) / s / 'calibration.json'} or "
                                  f"{Path(path) / (s + SNAPSHOT_SUFFIX) / 'calibration.json'}" for s in missing)
                        if Path(path).is_dir() else ", ".join(f"scenes.{s}" for s in missing))
            folders = {s: Path(f).parent.name for s, f in self.description.get("files", {}).items()}
            found = [f"{s} ({folders[s]}/)" if Path(path).is_dir() and folders.get(s, s) != s else s
                     for s in sorted(self.estimates)]
            raise UserError(f"scenario III: no calibration for scene(s) {', '.join(missing)} in {path} (expected "
                            f"{expected}; calibrated scenes: {', '.join(found) or 'none'})")

    def __call__(self, y: Tensor, mask: Tensor, scene: str = "") -> Mismatch:
        self.require([scene])
        return self.estimates[scene]


def _code_frame(content: Any, where: str, estimate: Mismatch, model: tuple[tuple[int, int] | None, str]
                ) -> tuple[Tensor, Mismatch] | None:
    """The mask and estimate the calibration's forward model read when its handed mask was a resampled binary code
    (``settings.handed_mask.detected``): the recovered code and the estimate in its frame, from the operator.npz
    beside its calibration.json (checked against ``estimate`` and the forward model ``model``); else None."""
    phase = _handed_phase(content)
    if phase is None:
        return None
    operator = Path(where).parent / "operator.npz"
    if not Path(where).is_file() or not operator.is_file():
        missing = (f"{operator} is missing" if Path(where).is_file() else "a 'scenes' object has none beside it: pass "
                   "the folder calibrate.py wrote per scene")
        raise UserError(f"{where}: its handed mask was read as a binary code resampled at phase {phase} "
                        "(settings.handed_mask), so its forward model reads the recovered code, which calibrate.py "
                        f"writes to operator.npz beside calibration.json; {missing}")
    record = read_operator_file(operator)
    shifted = {**estimate.to_dict(), "dx": estimate.dx - phase["fx"], "dy": estimate.dy - phase["fy"]}
    stored = record.mismatch.to_dict()
    if (any(abs(stored[k] - v) > 1e-6 for k, v in shifted.items())
            or (model[0] or (1, 1), model[1]) != (record.oversample, record.mask_interpolation)):
        raise UserError(f"{operator}: its estimate {stored} and forward model N, K = {record.oversample}, "
                        f"{record.mask_interpolation} are not those of {where} in the code's frame ({shifted}, "
                        f"{model}): the two files come from different calibrations")
    return record.mask, record.mismatch


def _handed_phase(content: Any) -> dict[str, float] | None:
    """A calibration's ``settings.handed_mask.phase`` where its handed mask was read as a resampled binary code
    (``detected``), else None."""
    settings = content.get("settings") if isinstance(content, dict) else None
    handed = settings.get("handed_mask") if isinstance(settings, dict) else None
    return handed.get("phase") if isinstance(handed, dict) and handed.get("detected") else None


def _frame_record(frame: tuple[Tensor, Mismatch] | None, phase: dict[str, float] | None) -> dict[str, Any]:
    """What results.json records of a forward model that reads the code recovered from the handed mask at
    ``phase`` (``frame``: :func:`_code_frame`)."""
    if frame is None:
        return {}
    return {"code_frame": {"phase": phase, "estimate": frame[1].to_dict()}}


def _per_scene(items: dict[str, tuple[Any, str]], source: dict[str, Any], mask: Tensor | None
               ) -> PerSceneEstimates:
    """Per-scene estimates from scene name -> (calibration content, where it was read), each with its forward model
    and, where it read the recovered code, its frame (:func:`_code_frame`); ``mask`` as :func:`_estimate`."""
    estimates = {name: _estimate(content, where, mask) for name, (content, where) in items.items()}
    models = {name: _forward_model(content, where) for name, (content, where) in items.items()}
    frames = {name: _code_frame(content, where, estimates[name], models[name])
              for name, (content, where) in items.items()}
    recorded = {name: {"oversample": list(n) if n else None, "mask_interpolation": reading,
                       **_frame_record(frames[name], _handed_phase(items[name][0]))}
                for name, (n, reading) in models.items()}
    common = set(models.values())
    description = {**source, "files": {name: where for name, (_, where) in items.items()},
                   "calibration_status": {name: _json_status(content) for name, (content, _) in items.items()},
                   "forward_models": recorded}
    return PerSceneEstimates(estimates, description, *(common.pop() if len(common) == 1 else (None, PER_SCENE)),
                             {name: frame for name, frame in frames.items() if frame is not None})


def check_calibration_mask(content: Any, where: str, mask: Tensor) -> None:
    """A calibration that records its mask (``mask``: ``shape``, ``sha256``, as ``calibrate.py`` writes) must
    have been made with ``mask`` (H, W); records without it are not checked."""
    record = content.get("mask") if isinstance(content, dict) else None
    if not isinstance(record, dict) or "sha256" not in record:
        return
    shape, wanted = tuple(record.get("shape", ())), tuple(mask.shape)
    if shape != wanted or record["sha256"] != mask_sha256(mask):
        made = f"{record.get('path', 'a mask')} {shape}, sha256 {str(record['sha256'])[:12]}..."
        raise UserError(f"{where}: this calibration was made with {made}, not with the evaluation mask {wanted}, "
                        f"sha256 {mask_sha256(mask)[:12]}...; calibrate with the same mask")


def read_calibration_json(path: str | Path) -> dict[str | None, tuple[Any, str]]:
    """The calibrations of a calibration.json (key None: one for every scene), of a multi-scene file (``scenes``
    object) or of a folder of per-scene calibrations (``DIR/<scene>/calibration.json``), by scene: (content,
    where it was read). One whose status is "failed" is refused (:func:`cassi.operator_file.refuse_failed`)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*/calibration.json"))
        if not files:
            single = path / "calibration.json"
            hint = (f"; {single} is one calibration for every scene: pass that file" if single.is_file() else "")
            raise FileNotFoundError(f"{path}: no per-scene calibration (expected {path}/<scene>/calibration.json)"
                                    + hint)
        contents = {}
        for f in files:
            scene = f.parent.name.removesuffix(SNAPSHOT_SUFFIX) or f.parent.name
            if scene in contents:
                raise UserError(f"{path}: two calibrations of scene {scene}: {contents[scene][1]} and {f}; "
                                "keep one")
            contents[scene] = (_read_json(f), str(f))
    else:
        content = _read_json(path)
        if isinstance(content, dict) and isinstance(content.get("calibrations"), list) and "estimate" not in content:
            raise ValueError(f"{path} is the summary of calibrate.py --separately; pass its folder {path.parent} "
                             "(one calibration per scene, DIR/<scene>/calibration.json)")
        if isinstance(content, dict) and isinstance(content.get("scenes"), dict):
            contents = {name: (value, f"{path}: scenes.{name}") for name, value in content["scenes"].items()}
        else:
            contents = {None: (content, str(path))}
    for content, where in contents.values():
        refuse_failed(where, "this calibration's status is", _json_status(content))
    return contents


def from_calibration_contents(contents: dict[str | None, tuple[Any, str]], path: str | Path,
                              mask: Tensor | None = None) -> FixedEstimate | PerSceneEstimates:
    """The mismatch(es) of :func:`read_calibration_json`'s ``contents`` of ``path``; with ``mask`` (H, W), each
    calibration that records its mask must have been made with it (:func:`check_calibration_mask`)."""
    source = {"source": CALIBRATION_FILE, "path": str(path)}
    if None not in contents:
        return _per_scene(contents, source, mask)
    content, where = contents[None]
    source["calibration_status"] = {where: _json_status(content)}
    estimate, model = _estimate(content, where, mask), _forward_model(content, where)
    frame = _code_frame(content, where, estimate, model)
    return FixedEstimate(estimate, {**source, **_frame_record(frame, _handed_phase(content))}, *model,
                         {} if frame is None else {None: frame})


def from_calibration_json(path: str | Path, mask: Tensor | None = None) -> FixedEstimate | PerSceneEstimates:
    """:func:`from_calibration_contents` of :func:`read_calibration_json`."""
    return from_calibration_contents(read_calibration_json(path), path, mask)


@dataclass
class SavedCalibration:
    """Scenario III's saved calibration, read once (:func:`read_saved`): an operator file's ``record`` or a
    calibration file's ``contents`` (:func:`read_calibration_json`)."""

    path: str
    record: OperatorRecord | None = None
    contents: dict[str | None, tuple[Any, str]] = field(default_factory=dict)


def read_saved(operator: str | None, calibration: str | None) -> SavedCalibration | None:
    """``--operator`` or ``--calibration``, read and its status checked before any work ("failed" is refused, naming
    the file, the status and its reasons); None when neither is given."""
    if operator and calibration:
        raise ValueError("give either --operator or --calibration, not both")
    if operator:
        path = Path(operator)
        per_scene = path.is_dir() and not (path / "operator.npz").is_file() and any(path.glob("*/calibration.json"))
        if per_scene or (path.is_file() and path.suffix.lower() == ".json"):
            beside = path.parent / "operator.npz"
            raise UserError(f"--operator {path}: " + ("a folder of per-scene calibrations (<scene>/calibration.json)"
                                                      if per_scene else "a calibration JSON")
                            + f", not an operator .npz; pass it with --calibration {path}"
                            + (f" (or its operator file, --operator {beside})" if not per_scene and beside.is_file()
                               else ""))
        return SavedCalibration(str(operator), record=read_operator_file(operator))
    if calibration:
        return SavedCalibration(str(calibration), contents=read_calibration_json(calibration))
    return None


@dataclass
class CalibratePerScene:
    """``calib.calibrate`` on every measurement (the measurement and the nominal mask only) with calibrate.py's
    defaults: the data choose each scene's forward model, N and K (``--forward-model auto``) and the mask reading
    (``--mask-reading auto``), and no solver check (the scenarios reconstruct); ``options`` go to
    ``calib.calibrate``. Each scene's status and reasons (``statuses``) and its chosen forward model
    (``forward_models``: {"oversample": [N, K], "mask_interpolation": ...}, with ``code_frame`` where the handed mask
    was read as a resampled binary code), by scene; such a scene's forward model reads the recovered code at the
    estimate in its frame (``model_frames``: what calibrate.py's operator.npz holds,
    :func:`calib.handed_mask.model_frame`). ``progress``: ``calib.calibrate``'s stage bars (eval.py: on a terminal
    only)."""

    solver: str = "heldout"
    ckpt: str | None = None
    bands: int = 28
    step: int = 2
    options: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    forward_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_frames: dict[str, tuple[Tensor, Mismatch]] = field(default_factory=dict)
    progress: bool = True
    oversample: ClassVar[None] = None       # chosen per scene
    mask_interpolation: ClassVar[str] = PER_SCENE

    @property
    def description(self) -> dict[str, Any]:
        return {"source": LIVE, "solver": self.solver, "ckpt": self.ckpt,
                "forward_model": "chosen by the data per scene (calibrate.py's default, --forward-model auto)",
                **self.options, "calibration_status": self.statuses, "forward_models": self.forward_models}

    def __call__(self, y: Tensor, mask: Tensor, scene: str = "") -> Mismatch:
        calibrate = calibrate_function()
        result = calibrate(y[0], mask, solver=self.solver, ckpt=self.ckpt, bands=self.bands, step=self.step,
                           progress=self.progress, **{"solver_check": False, **self.options})
        self.statuses[scene] = calibration_status(result.status, result.reasons)
        return self.record_model(result, mask, scene)

    def record_model(self, result: Any, mask: Tensor, scene: str) -> Mismatch:
        """Record the forward model ``result`` (a ``calib.calibrate`` result for ``scene``) chose in
        ``forward_models`` (and ``model_frames``); its estimate as plain floats."""
        self.forward_models[scene] = {"oversample": [int(v) for v in result.settings["oversample"]],
                                      "mask_interpolation": result.settings["mask_interpolation"]}
        if result.code is not None:                 # fitted through the code recovered from the handed mask
            code, shifted = model_frame(result, mask)
            self.model_frames[scene] = (code.cpu(), _floats(shifted))
            self.forward_models[scene]["code_frame"] = {"phase": dict(result.settings["handed_mask"]["phase"]),
                                                        "estimate": _floats(shifted).to_dict()}
        return _floats(result.estimate)


def _floats(mismatch: Mismatch) -> Mismatch:
    """``mismatch`` with plain float parameters (``calib.calibrate`` may give 0-d tensors)."""
    return Mismatch(**{k: float(torch.as_tensor(v)) for k, v in mismatch.to_dict().items()})


def calibrate_function():
    """``calib.calibrate``, or a clear error when the calibration package does not provide it."""
    try:
        from calib import calibrate
    except ImportError as err:
        raise UserError("scenario III needs calib.calibrate, which is not available here "
                           f"({err}); pass --operator FILE.npz or --calibration FILE.json instead") from err
    return calibrate


def make_calibrator(saved: SavedCalibration | None, mask: Tensor, solver: str = "heldout", ckpt: str | None = None,
                    bands: int = 28, step: int = 2, progress: bool = True, **options: Any):
    """The calibration source for scenario III: the ``saved`` calibration (:func:`read_saved`), checked against the
    evaluation's mask, bands and step, else ``calib.calibrate`` per scene (its stage bars drawn if ``progress``)."""
    if saved is None:
        calibrate_function()
        return CalibratePerScene(solver, ckpt, bands, step, options, progress=progress)
    if saved.record is not None:
        return from_operator_record(saved.record, saved.path, mask, bands, step)
    return from_calibration_contents(saved.contents, saved.path, mask)
