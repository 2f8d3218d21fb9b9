"""Evaluation: the KAIST protocol and mismatch scenarios, real captures, releases and the model table.

Modules (one job each): ``scenes`` (MST layout / synthetic scenes), ``reconstructors`` (GAP-TV or a network
behind ``method(y, op)``), ``checkpoints`` (release / Lightning / toolbox weights), ``protocol`` (metrics,
noise, timing), ``scenarios`` (I ideal, II mismatched, III calibrated, IV oracle), ``calibration`` (scenario
III's operator), ``kaist`` / ``real`` (the two evaluation commands), ``reports`` and ``previews`` (outputs),
``release`` (export), ``model_table`` (parameters, FLOPs, time). Files are written through ``cassi.files``
(atomic files, output folders as one unit). ``eval.py`` is the command line.
"""
