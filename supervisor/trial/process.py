"""A running trial's process, watched from outside: its live metrics file and its process tree.

:class:`MetricsTail` reads the JSON-lines metrics a trainer appends; :class:`ProcessSweeper` finds and
kills everything the trial started; :func:`has_exited` asks without reaping. Used by
:mod:`supervisor.trial.runner`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

# Descendants are snapshotted this often so that children that escape the process group
# (setsid) can still be found and killed after the main process is gone.
DESCENDANT_SNAPSHOT_INTERVAL_S = 1.0
# A metrics line longer than this is garbage (or an attack on our memory): skip it.
MAX_METRIC_LINE_BYTES = 1024 * 1024
# Read at most this much of the metrics file per poll so that one poll never stalls the loop.
METRICS_READ_CHUNK = 4 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Live metrics
# ---------------------------------------------------------------------------------------------


class MetricsTail:
    """Incrementally reads a JSON-lines file that another process is appending to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.skipping = False  # inside an over-long line: drop bytes up to the next newline

    def poll(self, final: bool = False) -> list[dict]:
        records: list[dict] = []
        while True:
            data = self._read_chunk()
            records.extend(self._feed(data))
            # While running, one chunk per poll keeps the loop responsive; at the end, drain.
            if not final or len(data) < METRICS_READ_CHUNK:
                break
        if final and self.partial and not self.skipping:
            # The trainer may not terminate its last line.
            records.extend(self._parse_lines([self.partial]))
            self.partial = b""
        return records

    def _read_chunk(self) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                if size < self.offset:
                    # Truncated or replaced (a trainer reopening with "w"): start over.
                    self.offset, self.partial, self.skipping = 0, b"", False
                handle.seek(self.offset)
                data = handle.read(METRICS_READ_CHUNK)
        except OSError:
            return b""
        self.offset += len(data)
        return data

    def _feed(self, data: bytes) -> list[dict]:
        if not data:
            return []
        if self.skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return []
            data = data[newline + 1 :]
            self.skipping = False
        pieces = (self.partial + data).split(b"\n")
        self.partial = pieces.pop()
        if len(self.partial) > MAX_METRIC_LINE_BYTES:
            self.partial, self.skipping = b"", True
        return self._parse_lines(pieces)

    @staticmethod
    def _parse_lines(lines: list[bytes]) -> list[dict]:
        records = []
        for raw in lines:
            if len(raw) > MAX_METRIC_LINE_BYTES:
                continue
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a stray print into the metrics file is not a metric
            if isinstance(record, dict):
                records.append(record)
        return records


# ---------------------------------------------------------------------------------------------
# Process tree cleanup
# ---------------------------------------------------------------------------------------------


def _proc_stat_table() -> dict[int, tuple[str, int, int, int, int]] | None:
    """pid -> (state, ppid, pgid, sid, starttime) from /proc, or None where there is no /proc."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    table: dict[int, tuple[str, int, int, int, int]] = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                raw = handle.read()
        except OSError:
            continue  # exited meanwhile
        # The command name is in parentheses and may itself contain spaces or ')'.
        fields = raw[raw.rfind(b")") + 2 :].split()
        try:
            table[int(entry)] = (
                fields[0].decode(),
                int(fields[1]),
                int(fields[2]),
                int(fields[3]),
                int(fields[19]),
            )
        except (IndexError, ValueError):
            continue
    return table


class ProcessSweeper:
    """Finds and kills everything a trial started.

    The process group (= session, from start_new_session) catches almost everything: DataLoader
    workers, compile workers, shells. A child that calls setsid() leaves both, so on Linux the
    sweeper also remembers the trial's descendants (pid + start time, so a recycled pid is never
    hit) while the main process is alive, and kills them at the end. That is best effort: a
    child born and detached between two snapshots can still escape.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid  # also the pgid and sid of the trial
        self.known: dict[int, int] = {}  # pid -> starttime
        self.last_snapshot = 0.0

    def maybe_snapshot(self) -> None:
        now = time.monotonic()
        if now - self.last_snapshot >= DESCENDANT_SNAPSHOT_INTERVAL_S:
            self.last_snapshot = now
            self.snapshot()

    def snapshot(self) -> None:
        table = _proc_stat_table()
        if table is None:
            return
        children: dict[int, list[int]] = {}
        for pid, (_state, ppid, _pgid, _sid, _start) in table.items():
            children.setdefault(ppid, []).append(pid)
        stack = list(children.get(self.pid, []))
        while stack:
            pid = stack.pop()
            if pid in self.known or pid not in table:
                continue
            self.known[pid] = table[pid][4]
            stack.extend(children.get(pid, []))
        for pid, (_state, _ppid, pgid, sid, start) in table.items():
            if pid != self.pid and (pgid == self.pid or sid == self.pid):
                self.known.setdefault(pid, start)

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def kill_all(self) -> None:
        """SIGKILL the group and every remembered descendant still alive.

        Called while the main process is still unreaped (a zombie keeps its pid, hence the
        pgid, reserved), so killpg cannot hit an unrelated group that reused the number.
        """
        self.snapshot()
        for _ in range(2):  # a second pass catches what forked while the first one ran
            self.signal_group(signal.SIGKILL)
            table = _proc_stat_table()
            if table is None:
                return
            for pid, start in list(self.known.items()):
                info = table.get(pid)
                if info is None or info[4] != start or info[0] in ("Z", "X"):
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self.snapshot()


def has_exited(proc: subprocess.Popen) -> bool:
    """Whether the main process has exited, WITHOUT reaping it where the OS allows."""
    if proc.returncode is not None:
        return True
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # macOS: fall back to reaping; the pgid race is then merely unlikely
        return proc.poll() is not None
    try:
        result = waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        # Someone else reaped it (a stray os.wait() elsewhere); poll() records that.
        proc.poll()
        return True
    return result is not None
