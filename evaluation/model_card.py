"""The release's ``README.md``: a Hugging Face model card that claims only what the release's files show.

* front matter: tags, and a ``model-index`` with PSNR / SSIM only when an evaluation is attached;
* model: architecture, parameters, bands, the mask's shape and SHA-256, the weights' hash;
* training (``train.py`` checkpoints): module, loss, optimiser and schedule, instrument, data source, crop,
  batch, held-out scenes, completed epochs and steps, and the validation score recorded for these very weights;
* KAIST metrics: counted from the attached results' rows (never from a free-text description), with the
  scenario, noise, the evaluation mask's hash and whether it is the release's mask, and every scene's row.

:func:`check_results` refuses results whose rows do not give their own mean, or whose list of scenes differs
from the rows (an edited or truncated file).
"""
from __future__ import annotations

import json
import math
from typing import Any

from cassi.mismatch import Mismatch
from cassi.operator_file import status_text
from cassi.progress import progress_text
from evaluation.protocol import DRIFTED_SCENARIOS, METRICS
from models.release import CHECKSUM_FILE, MASK_FILE, METRICS_FILE, WEIGHTS_FILE, loading_needs

TAGS = ("hyperspectral-imaging", "snapshot-compressive-imaging", "cassi", "coded-aperture")


def check_consistency(results: dict[str, Any], where: str) -> None:
    """The rows of ``results`` are the evaluated scenes: their names match ``data.scenes`` and their means
    give ``mean`` (to 1e-9); otherwise an error naming the file."""
    rows = results["scenes"]
    names = [row.get("name") for row in rows]
    listed = results.get("data", {}).get("scenes")
    if not rows or (listed is not None and listed != names):
        primary = results.get("primary_scenario")
        failed = results.get("scenarios", {}).get(primary, {}).get("not_reconstructed")
        cause = (f": its primary scenario {primary} did not reconstruct {', '.join(failed)}, whose scenario III "
                 "calibration failed (calibration.summary.not_reconstructed), and a release's metrics cover every "
                 "scene evaluated; export the results of a run whose scenario III calibrated every scene, or whose "
                 "scenarios include I (the primary one then)" if failed else "")
        raise ValueError(f"{where}: its scene rows {names} are not the scenes it says it evaluated ({listed})"
                         + cause)
    for metric in METRICS:
        values = [row.get(metric) for row in rows]
        if any(not isinstance(v, (int, float)) for v in values):
            continue                         # non-finite values are stored as null: nothing to compare
        mean = results["mean"].get(metric)
        if not isinstance(mean, (int, float)) or not math.isclose(sum(values) / len(values), mean, rel_tol=1e-9,
                                                                  abs_tol=1e-12):
            raise ValueError(f"{where}: mean {metric} {mean} is not the mean of its {len(rows)} scene rows")


def _number(value: Any, digits: int = 2) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def evaluated_scenario(metrics: dict[str, Any]) -> str:
    """'scenario X (its description[; instrument drifted by ...])' from the results' structured fields: the
    drift is named wherever the scenario measures through a drifted instrument (II-IV)."""
    primary = metrics.get("primary_scenario", "I")
    description = metrics.get("scenarios", {}).get(primary, {}).get("description")
    setup = metrics.get("setup", {})
    drift = setup.get("mismatch") if primary in DRIFTED_SCENARIOS else None
    units = setup.get("units", {})
    details = [description] if description else []
    if drift:
        details.append("instrument drifted by " + ", ".join(f"{k} {v:g}{' ' + units[k] if k in units else ''}"
                                                            for k, v in drift.items()))
    return f"scenario {primary}" + (f" ({'; '.join(details)})" if details else "")


def _front_matter(config: dict[str, Any], metrics: dict[str, Any] | None) -> list[str]:
    lines = ["---", "library_name: pytorch", "pipeline_tag: image-to-image", "tags:",
             *[f"- {tag}" for tag in (*TAGS, config["model"]["name"])]]
    if metrics is not None:
        mean = metrics["mean"]
        lines += ["model-index:", f"- name: {config['model']['name']}", "  results:",
                  "  - task:", "      type: image-to-image",
                  "      name: " + json.dumps(f"CASSI reconstruction (KAIST protocol, {evaluated_scenario(metrics)})"),
                  "    dataset:", f"      name: {json.dumps(evaluated_data(metrics))}", "      type: kaist-protocol",
                  "    metrics:"]
        for metric, name in (("psnr", "PSNR (dB)"), ("ssim", "SSIM")):
            if isinstance(mean.get(metric), (int, float)):
                lines += [f"    - type: {metric}", f"      name: {name}", f"      value: {mean[metric]:.4f}"]
    return lines + ["---", ""]


def evaluated_data(metrics: dict[str, Any]) -> str:
    """'N <kind of> scenes ...' counted from the results' rows, described from its structured data fields."""
    data, count = metrics.get("data", {}), len(metrics["scenes"])
    available = data.get("available")
    subset = f"the first {count} of {available}" if isinstance(available, int) and available != count else ""
    plural = "s" if count != 1 else ""
    if data.get("root"):
        return f"{count} scene{plural} of the MST layout {data['root']}" + (f" ({subset})" if subset else "")
    shape = data.get("mask", {}).get("shape") or ["?", "?"]
    details = "; ".join(filter(None, [f"seed {data['seed']}" if data.get("seed") is not None else "", subset]))
    return f"{count} built-in synthetic scene{plural} {shape[0]}x{shape[1]}" + (f" ({details})" if details else "")


def _progress(training: dict[str, Any]) -> str:
    """'saved after N complete epoch(s) [and k training batch(es) of the next], global step S (optimizer steps)'."""
    if training.get("epochs_completed") is None:
        return (f"saved at global step {training.get('global_step')} (optimizer steps); the completed epochs are not "
                "recorded")
    return f"saved after {progress_text(training)}"


def _loss(hp: dict[str, Any]) -> str:
    """The training loss: the module's ``loss`` and its arguments, or JointModule's CRSDUN loss (it has no ``loss``)."""
    if "loss" in hp:
        return f"loss `{hp['loss']}`" + (f" {hp['loss_kwargs']}" if hp.get("loss_kwargs") else "")
    return (f"joint loss: stage-weighted ({hp.get('stage_decay')}^(K-k)) MSE + {hp.get('seg_weight')} x "
            "cross-entropy of the segmentation")


def _operator_file_line(record: dict[str, Any]) -> str:
    """The instrument a checkpoint trained through (``training["operator_file"]``), identified by what it is rather
    than by the local path it was read from (its calibration's status has a line of its own)."""
    model, mask, phase = record["forward_model"], record["mask"], record.get("code_phase")
    frame = f"; in the frame of a code recovered at phase fy {phase['fy']:g}, fx {phase['fx']:g} px" if phase else ""
    return (f"- trained through the calibrated instrument of operator file sha256 `{record['sha256']}`: estimate "
            f"{Mismatch.from_dict(record['estimate']).text()} (dx, dy px; theta, alpha deg; a1 px/band{frame}), "
            f"forward model N={model['spatial']}, K={model['spectral']} ({model['mask_interpolation']} mask reading, "
            f"{model['dispersion']} dispersion), mask {mask['shape'][0]}x{mask['shape'][1]} sha256 `{mask['sha256']}`")


def _training_lines(training: dict[str, Any] | None) -> list[str]:
    if not training:
        return ["## Training", "", "Not recorded (the weights did not come from a train.py checkpoint).", ""]
    hp, data, val = training.get("hyper_parameters", {}), training.get("data", {}), training.get("validation", {})
    schedule = hp.get("scheduler", "?") + (f" {hp['scheduler_kwargs']}" if hp.get("scheduler_kwargs") else "")
    instrument = ", ".join(f"{k} {hp[k]}" for k in ("mismatch", "noise", "operator") if hp.get(k)) \
        or "nominal, noise-free"
    source = data.get("source", "auto")
    where = f"`{data['root']}`" if data.get("root") else "built-in synthetic scenes"
    if data.get("mask"):
        mask = f"`{data['mask']}`"
    elif source in ("mst_simulation", "mst_real", "fvgnet"):
        mask = "the recipe's mask file in the data folder"
    else:
        mask = f"a random binary mask (seed {data.get('seed')})"
    per_epoch = data.get("samples_per_epoch", "?")
    epoch = "one pass over the training scenes per epoch" if per_epoch is None else f"{per_epoch} samples per epoch"
    test_set = "FVgNET test_data.csv images" if source == "fvgnet" else "KAIST test scenes"
    lines = ["## Training", "",
             f"- module: `{training.get('module')}`, {_loss(hp)}, Adam lr {hp.get('lr')} "
             f"betas {hp.get('betas')}, schedule {schedule}",
             f"- instrument: {instrument}; measurement gain {hp.get('measurement_gain', 1.0)}",
             *([f"- calibration status of the operator: {status_text(training['operator_calibration'])}"]
               if training.get("operator_calibration") else []),
             *([_operator_file_line(training["operator_file"])] if training.get("operator_file") else []),
             f"- data: source `{source}`, {where}, mask: {mask} (mask_crop {data.get('mask_crop')}), "
             f"{data.get('crop')} px crops, batch {data.get('batch_size')}, "
             f"{epoch}, spliced mosaics p = {data.get('splice_prob')}",
             f"- {_progress(training)}"
             + (f"; W&B run `{training['wandb_run_id']}`" if training.get("wandb_run_id") else "")]
    scenes = val.get("scenes") or []
    lines.append(f"- validation: {len(scenes)} held-out training scene(s) "
                 f"({', '.join(scenes) or 'names not recorded'}),"
                 f" {data.get('val_crops_per_scene', 1)} crop(s) of {data.get('val_crop') or data.get('crop')} px each"
                 f" (never {test_set})")
    if val.get("monitor"):
        lines.append(f"- {val['monitor']} of these weights: {_number(val.get('score'), 3)}; best of the run: "
                     f"{_number(val.get('best'), 3)}")
    if val.get("metrics"):
        monitored = f"; {val['monitor']} is the one checkpoints are chosen by" if val.get("monitor") else ""
        lines.append(f"- last validation (global step {val.get('metrics_step')}): "
                     + ", ".join(f"{name} {_number(value, 4)}" for name, value in sorted(val["metrics"].items()))
                     + monitored)
    return lines + [""]


def _metrics_lines(config: dict[str, Any], metrics: dict[str, Any] | None) -> list[str]:
    if metrics is None:
        return ["## KAIST metrics", "", "No evaluation was attached to this release.", ""]
    data, setup = metrics.get("data", {}), metrics.get("setup", {})
    mask = data.get("mask", {})
    same = mask.get("sha256") == config["mask"]["sha256"]
    noise = setup.get("noise") or {}
    noisy = noise.get("peak") is not None or (noise.get("read") or 0) > 0
    lines = ["## KAIST metrics", "",
             f"Evaluated with `eval.py kaist` on {evaluated_data(metrics)}, {evaluated_scenario(metrics)}, "
             f"{'detector noise ' + str(noise) if noisy else 'no detector noise'};"
             f" {metrics.get('protocol', '')}",
             f"Evaluation mask sha256 `{mask.get('sha256')}`: "
             + ("the release's mask." if same else f"**not** the release's mask (`{config['mask']['sha256']}`)."),
             f"Full results in `{METRICS_FILE}`.", "",
             "| scene | PSNR (dB) | SSIM | SAM (deg) | ERGAS |", "|---|---:|---:|---:|---:|"]
    for row in metrics["scenes"]:
        lines.append(f"| {row['name']} | {_number(row.get('psnr'))} | {_number(row.get('ssim'), 4)} | "
                     f"{_number(row.get('sam'))} | {_number(row.get('ergas'))} |")
    mean = metrics["mean"]
    lines.append(f"| **mean of {len(metrics['scenes'])}** | {_number(mean.get('psnr'))} | "
                 f"{_number(mean.get('ssim'), 4)} | {_number(mean.get('sam'))} | {_number(mean.get('ergas'))} |")
    return lines + [""]


def model_card(config: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """README.md of the release: what it is, how it was trained, how to load it, what it scored."""
    model, mask, weights = config["model"], config["mask"], config["weights"]
    lines = [*_front_matter(config, metrics),
             f"# {model['name']} (CASSI reconstruction network)", "",
             f"- architecture: `{model['name']}` " + (
                 f"from the module `{model['module']}` (a network of one's own, not part of this project: loading "
                 f"needs {loading_needs(model['module'])})" if model.get("module") else
                 "from this project's model registry") + f", kwargs `{model['kwargs']}`",
             f"- parameters: {weights['parameters']:,}",
             f"- bands: {config['bands']}, dispersion step {config['step']} px per band",
             f"- coded aperture: `{MASK_FILE}` {mask['shape'][0]}x{mask['shape'][1]}, sha256 `{mask['sha256']}`",
             f"- weights: `{WEIGHTS_FILE}` ({weights['tensors']} tensors), state sha256 `{weights['state_sha256']}`",
             f"- exported from: {config['source']['kind']} `{config['source']['path']}` "
             f"on {config['created_utc']} (torch {config['torch']})", "",
             *_training_lines(config.get("training")),
             *_metrics_lines(config, metrics),
             "## Use", "", "```python", "from models import load_release",
             "model = load_release(\"PATH/TO/THIS/FOLDER\")   # verified against SHA256SUMS, eval mode, offline",
             "y_inputs = model.prepare_inputs(y, op)          # y (B, H, W + 54), op = cassi.CassiOperator(mask)",
             "cube = model.reconstruction(model(**y_inputs))  # (B, 28, H, W)", "```", "",
             "Evaluate: `python eval.py kaist --release PATH/TO/THIS/FOLDER [--data.root TSA_simu_data]`.",
             f"Verify by hand: `sha256sum -c {CHECKSUM_FILE}`.", ""]
    return "\n".join(lines)
