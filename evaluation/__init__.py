"""Evaluation: the KAIST protocol and mismatch scenarios, real captures, releases and the model table.

Modules (one job each): ``reconstructors`` (GAP-TV or a network behind ``method(y, op)``), ``checkpoints``
(release / Lightning / toolbox weights), ``protocol`` (metrics, noise, timing), ``scenarios`` (I ideal,
II mismatched, III calibrated, IV oracle), ``calibration`` (scenario III's operator), ``kaist`` / ``real`` (the
two evaluation commands), ``reports`` (tables), ``release`` (export) and ``model_card`` (its README.md),
``model_table`` (parameters, FLOPs, time). Test scenes (``data.kaist``) and PNG previews (``data.previews``)
live in ``data/``, shared with training. Files are written through ``cassi.files`` (atomic files, output
folders as one unit). ``eval.py`` is the command line.
"""
