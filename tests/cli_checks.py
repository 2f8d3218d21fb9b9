"""Test helper: a command-line call that must end as a user error (one ``error:`` line, exit code 2)."""
from __future__ import annotations

import re
from typing import Any, Callable


def user_error(capsys, call: Callable[[], Any], pattern: str, only_line: bool = True) -> str:
    """Run ``call`` (a CLI ``main``); it must exit with code 2 and print ``PROG: error: ...`` matching
    ``pattern`` as the only stderr line (``only_line=False``: as the last one, after library log lines).
    Returns that line."""
    try:
        code = call()
    except SystemExit as exit:
        code = exit.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, lines)
    assert lines and (len(lines) == 1 or not only_line), lines
    assert ": error: " in lines[-1] and re.search(pattern, lines[-1]), lines[-1]
    return lines[-1]
