"""Result tables: console text, Markdown, CSV and results.json (all files written atomically).

``results.json`` holds ``scenes`` (a list of {name, psnr, ssim, sam, ergas, seconds}) and ``mean`` for the
primary scenario (I when it was run, else the first one), plus, for every scenario run, its own
``scenes`` / ``mean`` under ``scenarios``, the ``comparison`` (delta_deg, delta_cal, recovery_ratio, their
"-model" versions and the I - IV gap split, see ``evaluation.scenarios``) and
the ``calibration`` of scenario III when there is one: each scene's estimate, its error against the simulated
drift and the parameters outside the tolerance, a calibration's status and reasons (shown at the top of
results.md: :func:`calibration_status_lines`) and a summary (:func:`calibration_summary`).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from cassi.files import write_json, write_text
from cassi.kaist_table import COLUMNS, HEADERS, format_cell, table_rows
from cassi.operator_file import status_text
from evaluation.protocol import METRICS, PROTOCOL
from evaluation.scenarios import UNDEFINED


def calibration_status_lines(results: dict[str, Any]) -> list[str]:
    """'scenario III calibration status (FILE or scene): ...' per saved calibration of scenario III."""
    statuses = results.get("calibration", {}).get("method", {}).get("calibration_status", {})
    return [f"scenario III calibration status ({where}): {status_text(info)}" for where, info in statuses.items()]


def calibration_summary(results: dict[str, Any]) -> str:
    """'scenario III: 10 scenes calibrated: ok 7, ambiguous 3, failed 0; within tolerance of the simulated drift
    9/10' (one calibration for every scene: no status counts); failed calibrations have no estimate and their
    scenes are not reconstructed in scenario III, which is said with their names."""
    summary = results["calibration"]["summary"]
    scenes = f"{summary['scenes']} scene{'s' if summary['scenes'] != 1 else ''}"
    counts = summary.get("status")
    calibrated = (f"{scenes} calibrated: " + ", ".join(f"{s} {n}" for s, n in counts.items()) if counts
                  else f"{scenes}, one calibration for all")
    text = (f"scenario III: {calibrated}; within tolerance of the simulated drift "
            f"{summary['within_tolerance']}/{summary['compared']}")
    rest = summary["compared"]
    if summary["not_reconstructed"]:
        text += (f" (a failed calibration has no estimate); not reconstructed in scenario III: "
                 f"{', '.join(summary['not_reconstructed'])}, so "
                 + (f"its means and comparisons are over the other {rest} scene{'s' if rest != 1 else ''}" if rest
                    else "it has no mean and no comparison"))
    return text


def markdown_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])


def comparison_lines(results: dict[str, Any]) -> list[list[str]]:
    """One line per comparison (delta_deg, delta_cal, recovery_ratio) with a value per metric."""
    names = {"delta_deg": "Delta_deg = I - II", "delta_cal": "Delta_cal = III - II",
             "recovery_ratio": "recovery (III - II) / (IV - II)",
             "delta_cal_model": "Delta_cal, model = III-model - II-model",
             "recovery_ratio_model": "recovery, model = (III-model - II-model) / (IV-model - II-model)",
             "gap_i_iv": "gap I - IV", "instrument": "instrument = I - Ih-model",
             "drift": "drift with known parameters = Ih-model - IV-model",
             "model_error": "model error = IV-model - IV"}
    lines = []
    for key, values in results.get("comparison", {}).items():
        fmt = "{:.3f}" if key.startswith("recovery_ratio") else "{:+.3f}"
        lines.append([names[key], *["-" if values[m] is None else fmt.format(values[m]) for m in METRICS]])
    return lines


def _within(outside: list[str] | None) -> str:
    if outside is None:
        return "no estimate (failed)"
    return "no: " + ", ".join(outside) if outside else "yes"


def _model_cell(model: dict[str, Any] | None) -> str:
    """'N=4, K=2, linear' (a calibration's forward model and its mask reading; "N, K not recorded" where its file
    does not say; ", recovered code" where it read the code recovered from the handed mask), "-" when unknown."""
    if model is None:
        return "-"
    grid = "N={}, K={}".format(*model["oversample"]) if model["oversample"] else "N, K not recorded"
    return f"{grid}, {model['mask_interpolation']}" + (", recovered code" if "code_frame" in model else "")


def calibration_lines(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Scenario III per scene: status (first line of :func:`status_text`; "-" for one calibration of every
    scene), forward model, each parameter's "estimate (error)" ("-" for a failed calibration), within tolerance,
    seconds ("-" for a saved calibration); the truth first, the mean over the scenes with an estimate last."""
    calibration = results["calibration"]
    params, truth = list(calibration["mean_abs_error"]), calibration["truth"]
    lines = [["truth (simulated)", "", "", *[f"{truth[p]:.4f}" for p in params], "", ""]]
    lines += [[c["name"], status_text(c).splitlines()[0] if "status" in c else "-", _model_cell(c.get("forward_model")),
               *["-" if c["estimate"] is None else f"{c['estimate'][p]:.4f} ({c['error'][p]:+.4f})" for p in params],
               _within(c["outside_tolerance"]), "-" if c["seconds"] is None else f"{c['seconds']:.2f}"]
              for c in calibration["scenes"]]
    summary, mean = calibration["summary"], calibration["mean_abs_error"]
    lines.append(["mean abs error", "", "", *["-" if mean[p] is None else f"({mean[p]:.4f})" for p in params],
                  f"{summary['within_tolerance']}/{summary['compared']}", ""])
    units = results["setup"]["units"]
    return (["scene", "status", "forward model", *[f"{p} ({units[p]})" for p in params], "within tolerance", "seconds"],
            lines)


def _mean_label(scenario: str, block: dict[str, Any]) -> str:
    """The scenario, with "(n/N scenes)" when it left scenes out (``not_reconstructed``)."""
    missing = len(block.get("not_reconstructed", []))
    return f"{scenario} ({len(block['scenes'])}/{len(block['scenes']) + missing} scenes)" if missing else scenario


def markdown_report(results: dict[str, Any]) -> str:
    """The whole evaluation as a Markdown document."""
    method = results["method"]
    parts = [f"# Evaluation: {method['name']}", "",
             f"- data: {results['data']['description']}",
             f"- mask: shape {results['data']['mask']['shape']}, sha256 `{results['data']['mask']['sha256']}`",
             f"- method: `{method['name']}` {method.get('kwargs', {})}"
             + (f", weights sha256 `{method['weights_sha256']}`" if "weights_sha256" in method else ""),
             f"- protocol: {PROTOCOL}"]
    setup = results.get("setup", {})
    if "mismatch" in setup:
        parts.append(f"- injected mismatch: {setup['mismatch']} ({setup['units']}); simulator oversampling "
                     f"N={setup['oversample']['spatial']}, K={setup['oversample']['spectral']}")
    if setup.get("noise", {}).get("peak") is not None or setup.get("noise", {}).get("read", 0):
        parts.append(f"- detector noise: {setup['noise']}")
    for warning in results.get("warnings", []):
        parts.append(f"- **warning**: {warning}")
    if "calibration" in results:
        parts.append(f"- {calibration_summary(results)}")
    parts += [f"- {line}" for line in calibration_status_lines(results)]
    header = [HEADERS[k] for k in COLUMNS]
    for scenario, block in results["scenarios"].items():
        parts += ["", f"## Scenario {scenario}: {block['description']}", "",
                  markdown_table(header, table_rows(block["scenes"], block["mean"],
                                                    block.get("not_reconstructed", [])))]
    if len(results["scenarios"]) > 1:
        lines = [[_mean_label(s, b), *[format_cell(m, b["mean"][m]) for m in METRICS]]
                 for s, b in results["scenarios"].items()]
        parts += ["", "## Scenario means", "",
                  markdown_table(["scenario", *[HEADERS[m] for m in METRICS]], lines + comparison_lines(results))]
        if any("not_reconstructed" in b for b in results["scenarios"].values()):
            parts += ["", "Each comparison is over the scenes its scenarios have in common."]
        undefined = [f"- {key} {metric} undefined ('-'): {why}"
                     for key, whys in results.get(UNDEFINED, {}).items() for metric, why in whys.items()]
        if undefined:
            parts += ["", *undefined]
    if "calibration" in results:
        header, lines = calibration_lines(results)
        calibration = results["calibration"]
        method = {k: v for k, v in calibration["method"].items()      # statuses at the top, models in the table
                  if k not in ("calibration_status", "forward_models", "files")}
        units = results["setup"]["units"]
        tolerance = ", ".join(f"{p} {v:g} {units[p]}" for p, v in calibration["tolerance"].items())
        parts += ["", f"## Scenario III calibration per scene, method {method}", "",
                  f"Truth: {calibration['truth_source']}. Cells: estimate (error = estimate - truth); within "
                  f"tolerance: every |error| at most {tolerance}; the reasons of each status are listed at the top.",
                  "", markdown_table(header, lines)]
    return "\n".join(parts) + "\n"


def csv_report(results: dict[str, Any]) -> str:
    """scenario,name,psnr,ssim,sam,ergas,seconds; each scenario's scenes, then its 'mean' row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["scenario", *COLUMNS])
    for scenario, block in results["scenarios"].items():
        for row in [*block["scenes"], {"name": "mean", **block["mean"]}]:
            writer.writerow([scenario, *[row[k] for k in COLUMNS]])
    return buffer.getvalue()


def write_reports(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """results.json, results.md and results.csv in ``out_dir``."""
    out_dir = Path(out_dir)
    return {"json": write_json(out_dir / "results.json", results),
            "markdown": write_text(out_dir / "results.md", markdown_report(results)),
            "csv": write_text(out_dir / "results.csv", csv_report(results))}
