"""How far a Lightning ``fit`` had trained, from its fit loop's counters: a checkpoint's ``loops.fit_loop`` or a live
``trainer.fit_loop.state_dict()`` (the same mapping; no Lightning import here).

Lightning's own ``epoch`` (``trainer.current_epoch``) cannot tell: it is the index of the epoch in progress both after
an epoch's last batch and in mid-epoch, and one more once ``fit`` has ended (a ``--trainer.max_steps`` stop in
mid-epoch). The counters can: an epoch is in progress while it has started and not completed, ``is_last_batch`` says
whether the last batch that ran ended its epoch, and the batches that ran are those processed (a checkpoint written
at a batch's end, before Lightning counts it completed, holds it).
"""
from __future__ import annotations

from typing import Any, Mapping


def fit_progress(fit_loop: Mapping[str, Any] | None, global_step: int | None) -> dict[str, int | None]:
    """``epochs_completed`` (epochs whose every training batch ran), ``batches_into_epoch`` (training batches of the
    unfinished epoch after them; 0 at an epoch's end) and ``global_step`` (optimizer steps); None where the fit loop's
    state does not record them."""
    loop = fit_loop or {}
    epochs = (loop.get("epoch_progress") or {}).get("current") or {}
    batches = loop.get("epoch_loop.batch_progress") or {}
    if not {"started", "completed"} <= set(epochs) or "processed" not in (batches.get("current") or {}):
        return {"epochs_completed": None, "batches_into_epoch": None, "global_step": global_step}
    last_epoch = epochs["completed"] - (epochs["started"] == epochs["completed"])   # the last batch's epoch
    if batches.get("is_last_batch"):
        return {"epochs_completed": last_epoch + 1, "batches_into_epoch": 0, "global_step": global_step}
    return {"epochs_completed": last_epoch, "batches_into_epoch": batches["current"]["processed"],
            "global_step": global_step}


def progress_text(progress: Mapping[str, Any]) -> str:
    """'N complete epoch(s)[ and k training batch(es) of the next], global step S (optimizer steps)' of
    :func:`fit_progress` (its epochs recorded)."""
    batches = progress["batches_into_epoch"]
    into = f" and {batches} training batch(es) of the next" if batches else ""
    step = f"global step {progress['global_step']} (optimizer steps)"
    return f"{progress['epochs_completed']} complete epoch(s){into}, {step}"
