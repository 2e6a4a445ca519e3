"""What a finished trial left behind, read back: the ``---`` summary, the end of its log, and the words for
why it crashed. (Its val_bpb is never read from here: the supervisor's evaluator measures it.)

Pure reading and parsing (no processes): :mod:`supervisor.trial.runner` decides the outcome from these.
"""

from __future__ import annotations

import math
import os
import re
import signal
from collections.abc import Mapping
from pathlib import Path

# How much of the end of the log is read for the summary and the tail: the summary is a dozen
# short lines, and a log can be gigabytes when a trainer prints every step.
LOG_WINDOW_BYTES = 64 * 1024
TAIL_LINES = 60


# ---------------------------------------------------------------------------------------------
# The summary block and the log's end
# ---------------------------------------------------------------------------------------------

# A summary line: an identifier-like key, a colon, the value. Traceback lines
# ('  File "x.py", line 3') and prose do not match, so stray output after the block is ignored.
_SUMMARY_LINE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*:\s?(.*)$")
_LEADING_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_UNKNOWN_VALUES = frozenset({"", "unknown", "nan", "none", "null", "n/a", "na", "-"})


def parse_summary(text: str) -> dict[str, str]:
    """Parse the ``key: value`` lines after the LAST line that is exactly ``---``.

    A trainer may print an earlier (even forged) block; the last one supersedes it. Values are
    kept as strings (stripped); use :func:`summary_float` for numbers. No ``---`` line means no
    summary: ``{}``. Later duplicates of a key win.
    """
    lines = text.splitlines()
    start = None
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].strip() == "---":
            start = index + 1
            break
    if start is None:
        return {}
    summary: dict[str, str] = {}
    for line in lines[start:]:
        match = _SUMMARY_LINE_RE.match(line)
        if match:
            summary[match.group(1)] = match.group(2).strip()
    return summary


def summary_float(summary: Mapping[str, str], key: str) -> float | None:
    """The value of ``key`` as a finite float, or ``None`` when it is missing, ``unknown``,
    NaN, infinite or not a number. A trailing unit (``"38.5%"``, ``"12.0 MB"``) is tolerated.
    """
    raw = summary.get(key)
    if raw is None:
        return None
    text = raw.strip()
    if text.lower() in _UNKNOWN_VALUES:
        return None
    try:
        value = float(text)
    except ValueError:
        match = _LEADING_NUMBER_RE.match(text)
        if not match:
            return None
        value = float(match.group(0))
    return value if math.isfinite(value) else None


def read_log_end(path: Path, max_bytes: int = LOG_WINDOW_BYTES) -> str:
    """The last ``max_bytes`` of a log as text, starting at a line boundary.

    Never reads the whole file: logs can be huge. Undecodable bytes are replaced.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read(max_bytes)
    except OSError:
        return ""
    if start > 0:
        # The window began mid-line; that fragment would parse as garbage.
        newline = data.find(b"\n")
        data = data[newline + 1 :] if newline >= 0 else data
    return data.decode("utf-8", errors="replace")


def log_tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# Why a trial that exited on its own is a crash
# ---------------------------------------------------------------------------------------------


def fail_line(text: str) -> str | None:
    # The contract: a NaN or exploding loss exits non-zero with a line starting "FAIL:".
    for line in reversed(text.splitlines()):
        if line.lstrip().startswith("FAIL:"):
            return line.strip()
    return None


def _exception_line(text: str) -> str | None:
    # For an unhandled Python exception the most useful words are the last line of the
    # traceback ("torch.OutOfMemoryError: CUDA out of memory..."): it goes into the journal.
    lines = text.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("Traceback (most recent call last):"):
            return _traceback_error(lines[index + 1 :])
    return _compile_error(lines)


def _traceback_error(after_header: list[str]) -> str | None:
    # The error is the last unindented line; the indented ones are the stack.
    for line in reversed(after_header):
        if line.strip() and not line[:1].isspace():
            return line.strip()[:300]
    return None


def _compile_error(lines: list[str]) -> str | None:
    # A script that does not even compile gets no "Traceback" header, just the place and the error.
    tail = [line for line in lines[-6:] if line.strip()]
    if tail and _COMPILE_ERROR_RE.match(tail[-1]) and any(line.lstrip().startswith('File "') for line in tail):
        return tail[-1].strip()[:300]
    return None


_COMPILE_ERROR_RE = re.compile(r"^(SyntaxError|IndentationError|TabError): ")


def exit_reason(exit_code: int | None, window: str) -> str:
    if exit_code is not None and exit_code < 0:
        reason = f"killed by signal {_signal_name(-exit_code)}"
        if -exit_code == signal.SIGKILL:
            reason += " (out of memory?)"
    else:
        reason = f"exit code {exit_code}"
    exception = _exception_line(window)
    return f"{reason}: {exception}" if exception else reason


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
