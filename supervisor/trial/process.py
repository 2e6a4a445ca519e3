"""A running trial's process, watched from outside: its live metrics file and its process tree.

:class:`MetricsTail` reads the JSON-lines metrics a trainer appends, each record cut to a bounded size
(:func:`clean_record`); :class:`MetricsBuffer` keeps a trial's records in bounded memory however many it
writes; :class:`ProcessSweeper` finds and kills everything the trial started; :func:`has_exited` asks
without reaping. Used by :mod:`supervisor.trial.runner`.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil

# Descendants are snapshotted this often so that children that escape the process group
# (setsid) can still be found and killed after the main process is gone.
DESCENDANT_SNAPSHOT_INTERVAL_S = 1.0
# A metrics line longer than this is garbage (or an attack on our memory): skip it.
MAX_METRIC_LINE_BYTES = 1024 * 1024
# Read at most this much of the metrics file at a time, so that one poll never stalls the loop and the
# records of one read stay small in memory (a chunk of tiny records is still only a few MB of objects).
METRICS_READ_CHUNK = 1024 * 1024
# What is kept of one record: this many keys, keys this long, text values this long (the trainer's
# records have seven numbers).
MAX_RECORD_KEYS = 32
MAX_KEY_CHARS = 64
MAX_TEXT_VALUE_CHARS = 1024
# The metrics contract's numbers (docs/architecture.md): anything else under these keys is dropped, so
# that every reader can do arithmetic and formatting on them and the ledger can store them.
NUMERIC_KEYS = frozenset({"step", "elapsed", "loss", "lr", "tokens_per_s", "mfu", "vram_mb"})
# How many records a MetricsBuffer keeps by default: the loss curve of a 5-minute trial at full resolution.
DEFAULT_KEPT_RECORDS = 20_000
_INT64 = (-(2**63), 2**63 - 1)
_DROP = object()


# ---------------------------------------------------------------------------------------------
# Live metrics
# ---------------------------------------------------------------------------------------------


def clean_record(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics record cut to what the supervisor keeps of one, whatever the trial wrote.

    At most MAX_RECORD_KEYS keys, each a string of at most MAX_KEY_CHARS; values are scalars only: None,
    booleans, numbers (NaN and infinities kept: a diverging loss is information), integers outside SQLite's
    64 bits as floats, strings up to MAX_TEXT_VALUE_CHARS. Lists, objects, longer strings and text that is
    not valid unicode are dropped; under NUMERIC_KEYS only numbers are kept (not None, booleans or text).
    A record that is already clean (the trainer's: a few numbers) is returned as it is, quickly.
    """
    if len(record) <= MAX_RECORD_KEYS and _all_numbers(record) and _plain_keys(record):
        return record
    out: dict[str, Any] = {}
    for key, value in record.items():
        if len(out) >= MAX_RECORD_KEYS:
            break
        if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or not _encodable(key):
            continue
        kept = _clean_value(value, key in NUMERIC_KEYS)
        if kept is not _DROP:
            out[key] = kept
    return out


def _all_numbers(record: dict[str, Any]) -> bool:
    for value in record.values():
        kind = type(value)
        if kind is float or (kind is int and _INT64[0] <= value <= _INT64[1]):
            continue
        return False
    return True


_PLAIN_KEYSETS: set[tuple[str, ...]] = set()  # key sets already checked (the trainer uses one or two)


def _plain_keys(record: dict[str, Any]) -> bool:
    keys = tuple(record)
    if keys in _PLAIN_KEYSETS:
        return True
    if not all(isinstance(k, str) and len(k) <= MAX_KEY_CHARS and _encodable(k) for k in keys):
        return False
    if len(_PLAIN_KEYSETS) < 64:
        _PLAIN_KEYSETS.add(keys)
    return True


def _clean_value(value: Any, numeric: bool) -> Any:
    if isinstance(value, float):
        return value
    if isinstance(value, bool):
        return _DROP if numeric else value
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return value
        try:
            return float(value)
        except OverflowError:
            return _DROP
    if numeric:
        return _DROP
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= MAX_TEXT_VALUE_CHARS and _encodable(value):
        return value
    return _DROP


def _encodable(text: str) -> bool:
    """Whether ``text`` is valid unicode (JSON's \\ud800 escapes give lone surrogates, which nothing can store)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class MetricsTail:
    """Incrementally reads a JSON-lines file that another process is appending to.

    Every record comes out through :func:`clean_record`. :meth:`records` yields them one at a time, so a
    caller that streams them (into a :class:`MetricsBuffer`) holds at most one read's worth in memory;
    :meth:`poll` returns them as a list (while running, one read's worth; with ``final``, all that is left).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.skipping = False  # inside an over-long line: drop bytes up to the next newline

    def poll(self, final: bool = False) -> list[dict]:
        return list(self.records(final))

    def records(self, final: bool = False) -> Iterator[dict]:
        """The records appended since the last call, in file order. Consume the iterator to the end before
        calling again (the position in the file moves as it is consumed)."""
        while True:
            data = self._read_chunk()
            yield from self._feed(data)
            # While running, one chunk per poll keeps the loop responsive; at the end, drain.
            if not final or len(data) < METRICS_READ_CHUNK:
                break
        if final and self.partial and not self.skipping:
            # The trainer may not terminate its last line.
            last, self.partial = self.partial, b""
            yield from self._parse_lines([last])

    def _read_chunk(self) -> bytes:
        # The trial owns the folder: the file may be a FIFO (a blocking open would stall the runner) or a link
        # to a host file (its lines would pass as metrics). Only a regular file of its own is read.
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return b""
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                return b""
            if info.st_size < self.offset:
                # Truncated or replaced (a trainer reopening with "w"): start over.
                self.offset, self.partial, self.skipping = 0, b"", False
            data = os.pread(fd, METRICS_READ_CHUNK, self.offset)
        except OSError:
            return b""
        finally:
            os.close(fd)
        self.offset += len(data)
        return data

    def _feed(self, data: bytes) -> Iterator[dict]:
        if not data:
            return
        if self.skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1 :]
            self.skipping = False
        pieces = (self.partial + data).split(b"\n")
        self.partial = pieces.pop()
        if len(self.partial) > MAX_METRIC_LINE_BYTES:
            self.partial, self.skipping = b"", True
        yield from self._parse_lines(pieces)

    @classmethod
    def _parse_lines(cls, lines: list[bytes]) -> Iterator[dict]:
        lines = [raw for raw in lines if len(raw) <= MAX_METRIC_LINE_BYTES]
        # Well-formed lines (the usual case) are parsed in one go, as a JSON array: many times faster
        # than line by line. Anything odd in them (a blank line, a stray print, a line holding two
        # values) and they are parsed line by line instead, each bad one skipped.
        try:
            parsed = json.loads(b"[" + b",".join(lines) + b"]") if lines else []
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, list) and len(parsed) == len(lines):
            for record in parsed:
                if isinstance(record, dict):
                    yield clean_record(record)
            return
        yield from cls._parse_each(lines)

    @staticmethod
    def _parse_each(lines: list[bytes]) -> Iterator[dict]:
        for raw in lines:
            if len(raw) > MAX_METRIC_LINE_BYTES:
                continue
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a stray print into the metrics file is not a metric; nor is "[[[[..." 100,000 deep
            if isinstance(record, dict):
                yield clean_record(record)


class MetricsBuffer:
    """A trial's metrics records in bounded memory, however many the trial writes.

    Keeps every record until ``capacity`` is reached, then every 2nd, every 4th, ... (the stride doubles
    each time the buffer fills, and the records kept are those whose index is a multiple of it), so the
    kept records always cover the whole trial evenly; the newest record is always kept besides. Records
    are passed through :func:`clean_record` as they are kept, so each one is bounded in size too.

    >>> buffer = MetricsBuffer(capacity=4)
    >>> buffer.add({"step": i} for i in range(10))
    >>> [r["step"] for r in buffer.records()], buffer.seen, buffer.dropped
    ([0, 4, 8, 9], 10, 6)
    """

    def __init__(self, capacity: int = DEFAULT_KEPT_RECORDS) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2, got {capacity}")
        self.capacity = capacity
        self.seen = 0  # records offered to add()
        self.stride = 1  # every stride-th record is kept
        self._kept: list[tuple[int, dict[str, Any]]] = []  # (index, cleaned record), index % stride == 0
        self._newest: tuple[int, dict[str, Any]] | None = None  # (index, record as given)

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        """Take records in order (a list, or an iterator such as :meth:`MetricsTail.records`)."""
        for record in records:
            index = self.seen
            self.seen += 1
            self._newest = (index, record)
            if index % self.stride:
                continue
            self._kept.append((index, clean_record(record)))
            if len(self._kept) >= self.capacity:  # room is left for the newest
                self.stride *= 2
                self._kept = [item for item in self._kept if item[0] % self.stride == 0]

    def records(self) -> list[dict[str, Any]]:
        """The kept records in order, the newest last; at most ``capacity``."""
        out = [record for _, record in self._kept]
        if self._newest is not None and (not self._kept or self._kept[-1][0] != self._newest[0]):
            out.append(clean_record(self._newest[1]))
        return out

    def __len__(self) -> int:
        newest_apart = self._newest is not None and (not self._kept or self._kept[-1][0] != self._newest[0])
        return len(self._kept) + newest_apart

    @property
    def dropped(self) -> int:
        """Records seen but not kept."""
        return self.seen - len(self)


# ---------------------------------------------------------------------------------------------
# Process tree cleanup
# ---------------------------------------------------------------------------------------------


_GONE_STATES = frozenset({psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})


def _group_and_session(pid: int) -> tuple[int | None, int | None]:
    """(pgid, sid) of a process, None for what the OS will not tell (macOS refuses another session's sid).

    Two system calls, no file read: cheap enough to ask of every process on the machine once a second,
    which psutil (it has no pgid or sid) is not.
    """
    ids: list[int | None] = []
    for read in (os.getpgid, os.getsid):
        try:
            ids.append(read(pid))
        except OSError:
            ids.append(None)
    return ids[0], ids[1]


def _all_pids() -> list[int] | None:
    try:
        return psutil.pids()
    except Exception:  # psutil cannot list processes on this OS
        return None


def _with_descendants(proc: psutil.Process) -> set[psutil.Process]:
    """``proc`` and every process under it now; only ``proc`` when psutil cannot say."""
    try:
        return {proc, *proc.children(recursive=True)}
    except psutil.Error:  # proc is gone or its pid was recycled, or /proc is not readable
        return {proc}


class ProcessSweeper:
    """Finds and kills everything a trial started.

    The process group (= session, from start_new_session) catches almost everything: DataLoader
    workers, compile workers, shells. A child that calls setsid() leaves both, so the sweeper also
    remembers the trial's descendants while the main process is alive, and kills them at the end.
    Descendants are found through psutil, so this works on macOS too; each one is remembered as a
    psutil.Process, which knows its start time, so a recycled pid is never hit. The descendants of
    group members that an orphaning reparented away from the trial (a double fork) are walked too.
    That is best effort: a child born and detached between two snapshots can still escape. In a
    sandbox with its own PID namespace nothing escapes: the kernel ends the namespace with its first
    process.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid  # also the pgid and sid of the trial
        self.known: set[psutil.Process] = set()  # hashed by (pid, start time)
        self.last_snapshot = 0.0
        try:
            # Taken now, while the pid is surely the trial's: later lookups check the start time against it.
            self.main: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self.main = None

    def maybe_snapshot(self) -> None:
        now = time.monotonic()
        if now - self.last_snapshot >= DESCENDANT_SNAPSHOT_INTERVAL_S:
            self.last_snapshot = now
            self.snapshot()

    def snapshot(self) -> None:
        found = _with_descendants(self.main) if self.main is not None else set()
        found_pids = {proc.pid for proc in found}
        # Members of the trial's group or session that are no longer under it: a double fork orphans the
        # grandchild to init, and a setsid() child of that grandchild would be found nowhere else.
        for pid in _all_pids() or []:
            if pid == self.pid or pid in found_pids or self.pid not in _group_and_session(pid):
                continue
            try:
                member = psutil.Process(pid)
            except psutil.Error:
                continue  # exited meanwhile
            for proc in _with_descendants(member):
                found_pids.add(proc.pid)
                found.add(proc)
        self.known.update(proc for proc in found if proc.pid != self.pid)

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
            for proc in list(self.known):
                try:
                    # psutil checks the start time first: a pid recycled by another process is left alone.
                    proc.kill()
                except psutil.Error:  # gone (NoSuchProcess), a zombie, or not ours to kill (AccessDenied)
                    self.known.discard(proc)
            self.snapshot()


def wait_group_gone(pgid: int, timeout_s: float = 10.0) -> bool:
    """Wait until no process of the group is left (a sandbox's processes die with its namespace, a moment
    after its first process); SIGKILL whatever is still there meanwhile. True when the group is gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if not _live_members(pgid):
            # Only zombies: dead, waiting for init to reap them (a sandbox's own init, orphaned when bwrap
            # exits, can wait a second for that).
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _live_members(pgid: int) -> bool:
    pids = _all_pids()
    if pids is None:
        return True  # psutil cannot list processes here: only killpg's answer counts
    for pid in pids:
        if _group_and_session(pid)[0] != pgid:
            continue
        try:
            if psutil.Process(pid).status() not in _GONE_STATES:
                return True
        except psutil.NoSuchProcess:  # exited meanwhile, or a zombie (ZombieProcess is one)
            continue
        except psutil.Error:
            return True  # cannot tell: count it as alive rather than leave a process behind
    return False


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
