"""Inside a finished trial, for the agent's `inspect_trial` tool: its loss curve against another trial's at
matched steps and at matched tokens, where its time went, and the tail of its log.

Until this existed the agent saw only a trial's final numbers, so a change that trained fewer steps looked
the same as one that learned less per step. Everything here reads what the supervisor recorded (the
ledger's metric rows, the trial's summary and the supervisor's own clock) or the trial's log file. The log
is the trial's own output: it is opened so that whatever an unsandboxed trial left in its place (a symlink,
a FIFO, a hard link to another file) is refused rather than followed, it is read from the end within a
fixed window, and it is shown as data, escaped, never as instructions.
"""

from __future__ import annotations

import bisect
import errno
import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.core import prompts
from supervisor.core.paths import RunPaths
from supervisor.core.types import Trial
from supervisor.store.ledger import Ledger, LedgerError
from supervisor.trial.edits import open_below, printable
from supervisor.trial.summary import summary_float

PARTS = ("curve", "timing", "log")
CURVE_POINTS = 20            # rows of each matched table: enough to see a trend, few enough to read at once
LOG_LINES_DEFAULT = 40
LOG_LINES_MAX = 200
LOG_WINDOW_BYTES = 64 * 1024  # of a log, only its end is read, whatever its size
LOG_MAX_CHARS = 5_000         # under the 6,000 characters of a tool result the next prompt shows uncut
LOG_LINE_CHARS = 300
TRIAL_LOG_NAME = "log.txt"    # the trainer's stdout and stderr, as the executor names it in each trial folder
TOTAL_TOKENS_DIGITS = 3       # the trainer prints total_tokens_M with 3 decimals


class LogUnavailable(Exception):
    """The log cannot be shown; the message says why in a few words."""


# ---- facts shared with the run header ----------------------------------------------------------------------
def read_manifest(cache_dir: str | Path | None) -> dict[str, Any]:
    """The data cache's manifest (sequence length, vocabulary, token counts), or {} when it cannot be read."""
    if not cache_dir:
        return {}
    try:
        data = json.loads((Path(cache_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def positive_int(value: Any) -> int | None:
    """A manifest number as a positive int, or None for anything else (a hand-edited manifest included)."""
    if not _finite(value) or value <= 0:
        return None
    return int(value)


def tokens_per_step(summary: Mapping[str, str], seq_len: int | None = None) -> int | None:
    """Tokens per optimizer step of a trial, from its summary: total_tokens (or total_tokens_M) / num_steps.

    total_tokens_M is printed with 3 decimals, so its quotient is off by up to 500 / steps tokens. A batch is
    a whole number of sequences, so when one multiple of the sequence length lies within that error it is
    the exact figure; otherwise the rounded quotient is given.
    """
    steps = summary_float(summary, "num_steps")
    if not steps or steps < 1:
        return None
    exact = summary_float(summary, "total_tokens")  # newer trainers print the count itself
    if exact and exact > 0:
        return round(exact / steps)
    total_m = summary_float(summary, "total_tokens_M")
    if not total_m or total_m <= 0:
        return None
    estimate = total_m * 1e6 / steps
    if seq_len:
        snapped = round(estimate / seq_len) * seq_len
        if snapped > 0 and abs(snapped - estimate) <= 0.5 * 10 ** (6 - TOTAL_TOKENS_DIGITS) / steps:
            return snapped
    return round(estimate)


# ---- the tool ----------------------------------------------------------------------------------------------
def inspect_trial(ledger: Ledger, paths: RunPaths, trial_id: int, part: str, against: int | None = None,
                  lines: int | None = None) -> tuple[bool, str]:
    """What inspect_trial returns: (ok, text). An unknown trial is an error listing the trials there are."""
    trial = ledger.trial(trial_id)
    if trial is None:
        return False, _no_such_trial(ledger, trial_id)
    if part == "log":
        return True, log_text(paths, trial.id, lines or LOG_LINES_DEFAULT)
    if against is not None and against == trial.id:
        return False, prompts.INSPECT_SAME_TRIAL.format(trial_id=trial.id)
    other_id = against if against is not None else trial.parent_trial
    other = ledger.trial(other_id) if other_id is not None else None
    if against is not None and other is None:
        return False, _no_such_trial(ledger, against)
    label = _other_label(trial, other, chosen=against is not None)
    if part == "timing":
        return True, timing_text(trial, other, label)
    seq_len = positive_int(read_manifest(_cache_dir(ledger)).get("max_seq_len"))
    return True, curve_text(trial, ledger.metrics(trial.id), other, ledger.metrics(other.id) if other else [],
                            label, seq_len)


def _no_such_trial(ledger: Ledger, trial_id: int) -> str:
    ids = [t.id for t in ledger.trials()]
    if not ids:
        return prompts.INSPECT_NO_TRIALS.format(trial_id=trial_id)
    return prompts.INSPECT_NO_SUCH_TRIAL.format(trial_id=trial_id, known=id_ranges(ids))


def id_ranges(ids: Sequence[int]) -> str:
    """1, 2, 3, 5, 7, 8 -> '1-3, 5, 7-8': every id, compactly."""
    spans: list[list[int]] = []
    for i in sorted(set(ids)):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def _other_label(trial: Trial, other: Trial | None, *, chosen: bool) -> str:
    if other is None:
        why = (prompts.INSPECT_NO_PARENT_BASELINE if trial.parent_trial is None
               else prompts.INSPECT_NO_PARENT_MISSING.format(parent=trial.parent_trial))
        return prompts.INSPECT_NO_OTHER.format(trial_id=trial.id, why=why)
    template = prompts.INSPECT_OTHER_CHOSEN if chosen else prompts.INSPECT_OTHER_PARENT
    return template.format(trial_id=other.id, status=other.status)


def _cache_dir(ledger: Ledger) -> str | None:
    """The run's data cache, from its stored settings (the tools are not handed the config)."""
    try:
        config = json.loads(ledger.run_row().config)
    except (LedgerError, ValueError, TypeError):
        return None
    value = config.get("cache_dir") if isinstance(config, dict) else None
    return value if isinstance(value, str) else None


# ---- the loss curve ----------------------------------------------------------------------------------------
@dataclass
class Curve:
    """A trial's recorded points in step order: step, loss, training seconds and (where the trainer
    reported it per step) tokens trained so far."""

    steps: list[float]
    losses: list[float]
    elapsed: list[float | None]
    tokens: list[float | None]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> Curve:
        by_step: dict[float, tuple[float, float | None, float | None]] = {}
        for row in rows:
            step, loss = row.get("step"), row.get("loss")
            if _finite(step) and _finite(loss):
                by_step[float(step)] = (float(loss), _maybe(row.get("elapsed")), _maybe(row.get("tokens")))
        steps = sorted(by_step)
        return cls(steps, [by_step[s][0] for s in steps], [by_step[s][1] for s in steps],
                   [by_step[s][2] for s in steps])

    @classmethod
    def empty(cls) -> Curve:
        return cls([], [], [], [])

    def __bool__(self) -> bool:
        return bool(self.steps)

    def loss_at(self, step: float) -> float | None:
        return _interpolate(self.steps, self.losses, step)

    def elapsed_at(self, step: float) -> float | None:
        known = [(s, e) for s, e in zip(self.steps, self.elapsed, strict=True) if e is not None]
        return _interpolate([s for s, _ in known], [e for _, e in known], step)

    def token_axis(self, per_step: int | None) -> list[float] | None:
        """Tokens trained by each recorded step: as the trainer counted them when every row has them (a last,
        shorter step under a token budget included), else step x tokens per step; None when unknown."""
        if all(t is not None for t in self.tokens):
            return [float(t) for t in self.tokens if t is not None]
        return [s * per_step for s in self.steps] if per_step else None

    def sample(self, count: int) -> list[int]:
        """Indices of up to `count` recorded points, evenly spread, first and last included."""
        if len(self.steps) <= count:
            return list(range(len(self.steps)))
        return sorted({round(i * (len(self.steps) - 1) / (count - 1)) for i in range(count)})


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _maybe(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    """Linear between the recorded points; None outside them (no extrapolation past a curve's end)."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    i = bisect.bisect_left(xs, x)
    if xs[i] == x:
        return ys[i]
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _diff(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{a - b:+.4f}"


def _step(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def curve_text(trial: Trial, rows: Sequence[Mapping[str, Any]], other: Trial | None,
               other_rows: Sequence[Mapping[str, Any]], other_label: str, seq_len: int | None = None) -> str:
    """The trial's loss next to the other trial's, at ~20 matched steps and at ~20 matched token counts."""
    mine = Curve.from_rows(rows)
    if not mine:
        return prompts.CURVE_NONE.format(trial_id=trial.id)
    my_tokens = tokens_per_step(trial.summary, seq_len)
    lines = [prompts.CURVE_HEAD.format(trial_id=trial.id, status=trial.status,
                                       description=_short(trial.description), other=other_label),
             _curve_facts(trial, mine, my_tokens)]
    if other is None:
        lines += [f"{'step':<7} {'loss':<10} s"] + [
            f"{_step(mine.steps[i]):<7} {_num(mine.losses[i]):<10} {_num(mine.elapsed[i], 1)}"
            for i in mine.sample(CURVE_POINTS)]
        return "\n".join(lines)
    theirs = Curve.from_rows(other_rows)
    if not theirs:
        lines.append(prompts.CURVE_NONE.format(trial_id=other.id))
        return "\n".join(lines)
    their_tokens = tokens_per_step(other.summary, seq_len)
    lines += [_curve_facts(other, theirs, their_tokens), "", prompts.CURVE_AT_STEPS,
              _matched_steps(trial.id, mine, other.id, theirs)]
    my_axis, their_axis = mine.token_axis(my_tokens), theirs.token_axis(their_tokens)
    if my_axis is None or their_axis is None:
        lines.append(prompts.CURVE_TOKENS_UNKNOWN.format(trial_id=trial.id if my_axis is None else other.id))
    elif my_tokens is not None and my_tokens == their_tokens and not _counted(mine) and not _counted(theirs):
        lines.append(prompts.CURVE_TOKENS_SAME.format(tokens=my_tokens))
    else:
        lines += ["", prompts.CURVE_AT_TOKENS,
                  _matched_tokens(trial.id, mine, my_axis, other.id, theirs, their_axis)]
    return "\n".join(lines)


def _counted(curve: Curve) -> bool:
    """Whether the trainer counted tokens on every row (then a last, shorter step can differ)."""
    return all(t is not None for t in curve.tokens)


def _short(text: str, limit: int = 100) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _curve_facts(trial: Trial, curve: Curve, tokens: int | None) -> str:
    return prompts.CURVE_FACTS.format(trial_id=trial.id, steps=len(curve.steps), last=_step(curve.steps[-1]),
                                      final=_num(curve.losses[-1]),
                                      tokens=f"{tokens:,}" if tokens is not None else "unknown")


def _beyond(value: float | None, x: float, xs: Sequence[float]) -> str:
    """The other trial's value, or 'ended' past its last point."""
    if value is not None:
        return _num(value)
    return prompts.CURVE_ENDED if xs and x > xs[-1] else ""


def _matched_steps(mine_id: int, mine: Curve, other_id: int, theirs: Curve) -> str:
    out = [f"{'step':<7} {f'loss {mine_id}':<10} {f'loss {other_id}':<10} {'diff':<8} {f's {mine_id}':<8} "
           f"s {other_id}"]
    for i in mine.sample(CURVE_POINTS):
        step, loss = mine.steps[i], mine.losses[i]
        their_loss = theirs.loss_at(step)
        out.append(f"{_step(step):<7} {_num(loss):<10} {_beyond(their_loss, step, theirs.steps):<10} "
                   f"{_diff(loss, their_loss):<8} {_num(mine.elapsed[i], 1):<8} "
                   f"{_num(theirs.elapsed_at(step), 1)}".rstrip())
    return "\n".join(out)


def _matched_tokens(mine_id: int, mine: Curve, my_axis: list[float], other_id: int, theirs: Curve,
                    their_axis: list[float]) -> str:
    out = [f"{'tokens':<10} {f'step {mine_id}':<8} {f'loss {mine_id}':<10} {f'step {other_id}':<8} "
           f"{f'loss {other_id}':<10} diff"]
    for i in mine.sample(CURVE_POINTS):
        tokens, loss = my_axis[i], mine.losses[i]
        their_loss = _interpolate(their_axis, theirs.losses, tokens)
        their_step = _interpolate(their_axis, theirs.steps, tokens)
        out.append(f"{_tokens(tokens):<10} {_step(mine.steps[i]):<8} {_num(loss):<10} "
                   f"{_num(their_step, 1) if their_step is not None else '':<8} "
                   f"{_beyond(their_loss, tokens, their_axis):<10} {_diff(loss, their_loss)}".rstrip())
    return "\n".join(out)


def _tokens(count: float) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.3g}B"
    if count >= 1e6:
        return f"{count / 1e6:.3g}M"
    if count >= 1e3:
        return f"{count / 1e3:.3g}K"
    return f"{count:.0f}"


# ---- where the time went -----------------------------------------------------------------------------------
def time_split(trial: Trial) -> dict[str, float | None]:
    """The parts of a trial's time, by TIMING_ROWS key; None where a figure is missing (a crash, another
    trainer)."""
    s = trial.summary
    keys = ("total_seconds", "compile_seconds", "training_seconds", "handover_seconds")
    total, compile_s, training, export = (summary_float(s, k) for k in keys)
    handover = summary_float(s, "supervisor.handover_seconds")
    evaluation = summary_float(s, "supervisor.evaluation_seconds")
    wall = trial.wall_seconds
    return {
        # The trainer's clock starts at its first line: what is not a step or the export is start-up.
        "startup": _remainder(total, compile_s, training, export), "compile": compile_s, "training": training,
        "export": export, "handover": handover, "after": _remainder(wall, handover), "wall": wall,
        "evaluation": evaluation, "whole": None if wall is None else wall + (evaluation or 0.0),
    }


def _remainder(whole: float | None, *parts: float | None) -> float | None:
    """whole minus the parts (never below 0: two clocks), or None when any figure is missing."""
    if whole is None or any(p is None for p in parts):
        return None
    return max(0.0, whole - sum(p for p in parts if p is not None))


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _minus(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{a - b:+.1f}"


def timing_text(trial: Trial, other: Trial | None, other_label: str) -> str:
    mine = time_split(trial)
    if all(v is None for v in mine.values()):
        return prompts.TIMING_NONE.format(trial_id=trial.id)
    lines = [prompts.TIMING_HEAD.format(trial_id=trial.id, other=other_label), _timing_facts(trial)]
    width = max(len(label) for _, label in prompts.TIMING_ROWS)
    head = f"{'':<{width}} {f'trial {trial.id}':>10}"
    theirs: dict[str, float | None] = {}
    if other is not None:
        lines.append(_timing_facts(other))
        theirs = time_split(other)
        head += f" {f'trial {other.id}':>10} {'diff':>8}"
    lines.append(head)
    for key, label in prompts.TIMING_ROWS:
        row = f"{label:<{width}} {_seconds(mine[key]):>10}"
        if other is not None:
            row += f" {_seconds(theirs[key]):>10} {_minus(mine[key], theirs[key]):>8}"
        lines.append(row.rstrip())
    return "\n".join(lines)


def _timing_facts(trial: Trial) -> str:
    s = trial.summary
    tps = trial.tokens_per_s
    return prompts.TIMING_FACTS.format(trial_id=trial.id, device=printable(s.get("device", "unknown"), 40),
                                       compiled=printable(s.get("compiled", "unknown"), 20),
                                       steps=trial.num_steps if trial.num_steps is not None else "unknown",
                                       tokens_per_s=f"{tps:,.0f}" if tps is not None else "unknown")


# ---- the log -----------------------------------------------------------------------------------------------
def log_text(paths: RunPaths, trial_id: int, lines: int = LOG_LINES_DEFAULT) -> str:
    """The last `lines` lines of the trial's log, escaped and bounded, or why there is none to show."""
    lines = max(1, min(int(lines), LOG_LINES_MAX))
    try:
        text, size = read_log_end(paths, trial_id)
    except LogUnavailable as exc:
        return prompts.LOG_MISSING.format(trial_id=trial_id, why=exc)
    if not text.strip():
        return prompts.LOG_EMPTY.format(trial_id=trial_id)
    shown = [printable(line, LOG_LINE_CHARS) for line in text.splitlines()[-lines:]]
    left_out = 0
    while len(shown) > 1 and sum(len(x) + 1 for x in shown) > LOG_MAX_CHARS:
        shown.pop(0)  # the end of a log says the most: what it did last, how it ended
        left_out += 1
    head = prompts.LOG_HEAD.format(shown=len(shown), trial_id=trial_id, size=_size(size))
    cut = [prompts.LOG_CUT.format(left=left_out, limit=LOG_MAX_CHARS)] if left_out else []
    return "\n".join([head, *cut, *shown])


def _size(size: int) -> str:
    if size >= 2**20:
        return f"{size / 2**20:.1f} MB"
    if size >= 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size} bytes"


def read_log_end(paths: RunPaths, trial_id: int, window: int = LOG_WINDOW_BYTES) -> tuple[str, int]:
    """The end of a trial's log (at most `window` bytes, from a line boundary) and the log's size.

    The folder and the file are opened one component at a time below the run folder with O_NOFOLLOW, the file
    with O_NONBLOCK too, and it must be a regular file with one link: a trial that ran unsandboxed could have
    put a symlink, a FIFO or a hard link to another file where its log was.
    """
    trial_dir = paths.trial_dir(trial_id)
    parts = (*trial_dir.relative_to(paths.run_dir).parts, TRIAL_LOG_NAME)
    fd = _open_log(paths.run_dir, parts)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LogUnavailable("it is not a regular file")
        if info.st_nlink != 1:
            raise LogUnavailable("it has more than one hard link, so it may be another file")
        start = max(0, info.st_size - window)
        os.lseek(fd, start, os.SEEK_SET)
        data = b""
        while len(data) < window:
            chunk = os.read(fd, window - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if start > 0:
        newline = data.find(b"\n")
        data = data[newline + 1:] if newline >= 0 else data  # a window that began mid-line
    return data.decode("utf-8", errors="replace"), info.st_size


def _open_log(root: Path, parts: Sequence[str]) -> int:
    try:
        return open_below(root, parts)
    except FileNotFoundError:
        raise LogUnavailable("no log file was kept for it") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):  # O_NOFOLLOW met a symlink
            raise LogUnavailable("a symbolic link is where its log was; it is not followed") from None
        raise LogUnavailable(f"its log cannot be opened: {exc.strerror or type(exc).__name__}") from None
