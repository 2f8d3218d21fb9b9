"""Bad input and how the command-line tools report it: one line on stderr, exit code 2, before any work.

Library code raises :class:`UserError` (a ``ValueError``) -- or ``ValueError`` / ``FileNotFoundError`` /
``FileExistsError`` / ``KeyError`` -- with a message that names the file, key, shape or option that is
wrong. ``train.py``, ``eval.py`` and ``calibrate.py`` run their command inside :func:`cli_errors`, which
turns those errors into ``PROG: error: MESSAGE`` (one line) and exit code 2, Ctrl-C / SIGTERM into one
line and exit code 130 (inside numba's compiler, once it has returned: an interrupt there crashed the
process), and :class:`OutputConflict` (a run whose ``--out`` was taken by a concurrent run)
into one line and exit code 1. Any other exception keeps its traceback. ``CASSI_DEBUG=1`` in the
environment re-raises user errors too, with their traceback.

:class:`CliParser` is the ``argparse`` parser of the three tools: an invalid option is one line and exit
code 2 as well, and the ``positive_int`` / ``positive_float`` / ``non_negative_float`` types refuse
values that make no sense (``--limit 0``, ``--scale 0``, ``--noise.read -1``) when they are parsed.
"""
from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from typing import Iterator, NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CALIBRATION_FAILED = 3   # calibrate.py: outputs written, but the calibration's status is "failed"
DEBUG_ENV = "CASSI_DEBUG"


class UserError(ValueError):
    """Bad input from the user: a file, key, shape, value or option that is wrong (the message names it)."""


class OutputConflict(Exception):
    """A finished run could not take its output folder (another run wrote it meanwhile); the message says
    where this run's outputs were kept instead."""


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                 NotADirectoryError, IsADirectoryError, PermissionError, KeyError)


def mark_during_run(error: BaseException) -> None:
    """Flag ``error`` as raised while the real work ran (not a user error): :func:`cli_errors` then keeps
    its traceback and exit code 1 even when its type is a user-error type."""
    error.cassi_during_run = True  # type: ignore[attr-defined]


def one_line(error: BaseException | str) -> str:
    """The message of ``error`` on one line.

    A ``KeyError``'s message is shown without quotes. A message on several lines is an outline (a first
    line, indented details): the first line is kept with the deepest details (and the line they hang
    from), joined by "; " -- e.g. jsonargparse's nested errors or a list of mismatched state-dict keys.
    """
    text = error if isinstance(error, str) else (
        str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error))
    lines = [line.rstrip() for line in text.splitlines() if line.strip() and line.strip() != ","]
    if len(lines) <= 1:
        return lines[0].strip() if lines else type(error).__name__
    depth = [len(line) - len(line.lstrip()) for line in lines]
    deepest = max(depth[1:])
    parts = [lines[0].strip()]
    for i in range(1, len(lines)):
        if depth[i] != deepest:
            continue
        parent = next((j for j in range(i - 1, 0, -1) if depth[j] < deepest), None)
        if parent is not None and lines[parent].strip() not in parts:
            parts.append(lines[parent].strip())
        parts.append(lines[i].strip())
    out = parts[0]
    for part in parts[1:]:
        out += (" " if out.endswith(":") else "; ") + part
    return out


_received: list[int] = []      # SIGINT / SIGTERM received inside a cli_errors block
# code a signal must not interrupt: numba's compiler and llvmlite call back into Python from native code, where
# an exception is swallowed ("Exception ignored") and leaves LLVM half-built (seen: a RuntimeError "no compiled
# object yet", an abort and a segfault instead of exit 130)
NATIVE_CALLBACK_PACKAGES = (f"{os.sep}numba{os.sep}", f"{os.sep}llvmlite{os.sep}")
RECHECK_SECONDS = 0.05         # how often a deferred interrupt looks whether that code has returned
_deferring: list[bool] = []    # non-empty inside interrupts_deferred(): a signal is recorded, not raised
_written: list[str] | None = None   # outputs renamed into place inside the current cli_errors block (None: none open)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT / SIGTERM inside the block are recorded, not raised (:func:`check_interrupted` raises them after it):
    for steps that must not stop half-way, such as renaming a run's outputs into place."""
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()


def record_written(path: str | os.PathLike) -> None:
    """Note that ``path`` now holds this run's outputs: an interrupt after this says so instead of "not written"
    (inside a :func:`cli_errors` block; elsewhere nothing is kept)."""
    if _written is not None:
        _written.append(str(path))


def _in_native_callback_code(frame) -> bool:
    """Whether ``frame`` or a caller of it runs code of :data:`NATIVE_CALLBACK_PACKAGES`."""
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in NATIVE_CALLBACK_PACKAGES):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum: int, frame) -> None:
    """SIGINT / SIGTERM inside a :func:`cli_errors` block: ``KeyboardInterrupt``, or inside numba's compiler
    (:func:`_in_native_callback_code`) a recheck every :data:`RECHECK_SECONDS` (SIGALRM) until it has returned."""
    if signum != signal.SIGALRM:
        _received.append(signum)
    elif not _received:                 # not a recheck of ours
        return
    if _deferring:
        return
    if _in_native_callback_code(frame) and hasattr(signal, "setitimer"):
        if signum != signal.SIGALRM and len(_received) == 1:   # os.write: safe inside a handler, unlike print
            os.write(2, b"interrupt received: stopping once numba has finished compiling its kernels (a first run "
                        b"compiles them for up to a minute; later runs read them from its cache)\n")
        signal.setitimer(signal.ITIMER_REAL, RECHECK_SECONDS)
        return
    raise KeyboardInterrupt(f"signal {_received[-1]}")


def check_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` when a signal arrived inside a :func:`cli_errors` block whose
    ``KeyboardInterrupt`` was swallowed: raised inside a native callback (numba's compiler, for one),
    Python prints "Exception ignored" and carries on. Called before outputs are committed."""
    if _received:
        raise KeyboardInterrupt(f"signal {_received[-1]}")


def _release_interrupted_frames(err: BaseException) -> None:
    """Free what the frames an interrupt unwound still hold, so that objects it left half-built (llvmlite's
    pass managers when Ctrl-C lands in numba's compiler) complain now, not after the run's last line."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)        # frames still running (the caller's) are skipped
        err = err.__cause__ or err.__context__
    gc.collect()


@contextmanager
def cli_errors(prog: str, extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Report what goes wrong inside the block as a command-line tool should (see the module docstring).

    ``extra``: further exception types to treat as user errors (e.g. Lightning's configuration errors).
    Raises ``SystemExit`` with the exit code; SIGTERM is handled like Ctrl-C inside the block, and an
    interrupt swallowed on its way up (see :func:`check_interrupted`) still ends the run with 130.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    handled = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGALRM,) if hasattr(signal, "setitimer") else ())
    previous = {sig: signal.signal(sig, _interrupt) for sig in handled} if in_main_thread else {}
    global _written
    _received.clear()
    _written = []
    try:
        yield
        check_interrupted()
    except BaseException as err:
        # after a signal, whatever failed is its consequence (a native callback swallowed the interrupt)
        if isinstance(err, KeyboardInterrupt) or (_received and isinstance(err, Exception)):
            _release_interrupted_frames(err)
            print(f"{prog}: interrupted; " + (f"this run's outputs were already written: {', '.join(_written)}"
                                              if _written else
                                              "this run's outputs were not written (earlier outputs are unchanged)"),
                  file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED) from None
        if isinstance(err, OutputConflict):
            print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
            raise SystemExit(EXIT_FAILED) from None
        if not isinstance(err, (*USER_ERRORS, *extra)) or os.environ.get(DEBUG_ENV) or getattr(
                err, "cassi_during_run", False):
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        if previous and hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
        _received.clear()
        _written = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_code(exit: SystemExit) -> int:
    """The integer status of a ``SystemExit`` (None is 0; a message is 1, as the interpreter does)."""
    return exit.code if isinstance(exit.code, int) else (EXIT_OK if exit.code is None else EXIT_FAILED)


class CliParser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line (``PROG: error: MESSAGE (see PROG --help)``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _number(kind: type, text: str, test, requirement: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(int, text, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(float, text, lambda v: 0 < v < float("inf"), "a finite number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(float, text, lambda v: 0 <= v < float("inf"), "a finite number >= 0")
