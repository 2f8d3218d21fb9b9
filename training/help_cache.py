"""``train.py [SUBCOMMAND] --help`` without importing Lightning: LightningCLI's own help text, stored per user.

LightningCLI builds its help from the classes it configures, so printing it imports Lightning, torch and
the project (5-8 s of CPU). The first ``train.py --help`` / ``train.py fit --help`` runs LightningCLI as usual
and stores the text it printed together with everything that text was made from; a later identical
request prints the stored text when none of it changed, and runs LightningCLI again (storing the new
text) when anything did:

* the request: the script's path, its arguments, the terminal width (argparse wraps to it) and the
  environment variables LightningCLI / jsonargparse read (``PL_*``, ``JSONARGPARSE_*``);
* the interpreter (executable, version) and the installed distributions (the ``*.dist-info`` names,
  which carry the versions, of every ``sys.path`` folder);
* every module file that was loaded when the help was printed (path, size, modification time): the
  project's sources, Lightning's, jsonargparse's, torch's.

Only the bare help requests (``--help`` / ``-h``, alone or after one subcommand) are served; with any other
argument (``--config``, ``--model.help``...) LightningCLI answers. Files: ``$XDG_CACHE_HOME/cassi-lab/help``
(default ``~/.cache``), one JSON file per request (~0.6 MB, mostly the list of loaded files); when that folder
cannot be written, every help request runs LightningCLI. This module imports nothing heavy.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Callable

HELP_FLAGS = ("-h", "--help")
ENV_PREFIXES = ("PL_", "JSONARGPARSE_", "_ARGCOMPLETE")
INSTALL_SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".pth")
FORMAT = 1                                   # bump when the stored file's layout changes


def is_help_request(argv: list[str]) -> bool:
    """``[--help]`` or ``[SUBCOMMAND, --help]`` (``-h`` too): the requests whose text is stored."""
    return len(argv) in (1, 2) and argv[-1] in HELP_FLAGS and (len(argv) == 1 or not argv[0].startswith("-"))


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cassi-lab/help`` (``~/.cache/cassi-lab/help`` when the variable is not set)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "cassi-lab" / "help"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def request_file(argv: list[str]) -> Path:
    """The file that stores the answer to ``argv`` in this setting (script, width, environment, interpreter)."""
    request = {"script": os.path.abspath(sys.argv[0]), "argv": argv, "width": shutil.get_terminal_size().columns,
               "env": {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)},
               "python": [sys.executable, sys.version], "format": FORMAT}
    return cache_dir() / f"{_digest(request)[:32]}.json"


def installed_distributions() -> str:
    """Digest of the names (with versions) of what is installed in every ``sys.path`` folder."""
    names = []
    for folder in sys.path:
        try:
            names += [(folder, name) for name in os.listdir(folder or ".") if name.endswith(INSTALL_SUFFIXES)]
        except OSError:                      # a zip file, a folder that does not exist
            continue
    return _digest(sorted(names))


def _signature(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def loaded_files() -> dict[str, list[int]]:
    """``{path: [size, mtime_ns]}`` of every module file loaded in this process."""
    paths = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
    signatures = {os.path.abspath(path): _signature(path) for path in paths if isinstance(path, str)}
    return {path: signature for path, signature in signatures.items() if signature is not None}


def cached_help(argv: list[str]) -> str | None:
    """The stored help text for ``argv``, or None when there is none or anything it was made from changed."""
    try:
        entry = json.loads(request_file(argv).read_text())
    except (OSError, ValueError):
        return None
    if entry.get("installed") != installed_distributions():
        return None
    if any(_signature(path) != signature for path, signature in entry["files"].items()):
        return None
    return entry["text"]


def store_help(argv: list[str], text: str) -> None:
    """Store ``text`` as the answer to ``argv``, with what it was made from (skipped when not writable)."""
    from cassi.files import write_text

    entry = {"argv": argv, "installed": installed_distributions(), "files": loaded_files(), "text": text}
    try:
        write_text(request_file(argv), json.dumps(entry))
    except OSError:
        pass                                 # a read-only home: the help is built each time


def print_help(argv: list[str], build: Callable[[], object]) -> None:
    """Print the help that ``build`` (LightningCLI on ``argv``) prints: the stored text when it is current,
    else run ``build``, pass its output on and store it when it ended with exit code 0."""
    text = cached_help(argv)
    if text is not None:
        sys.stdout.write(text)
        return
    printed = io.StringIO()
    try:
        with redirect_stdout(printed):
            build()
    except SystemExit as done:
        if done.code in (0, None) and printed.getvalue():
            store_help(argv, printed.getvalue())
        raise
    finally:
        sys.stdout.write(printed.getvalue())
