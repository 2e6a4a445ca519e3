"""Run one training trial as a subprocess and report what happened.

The trial is untrusted code (the agent wrote it), so the runner:

* gives it a scrubbed environment: API keys and other credentials never reach it
  (:func:`scrub_environment`), plus the ``AUTORESEARCH_*`` variables of the trainer contract
  (docs/architecture.md);
* starts it in its own session / process group, so that the whole tree can be killed at once;
* streams its stdout+stderr to a log file, never into our memory;
* tails the JSON-lines metrics file while it runs and hands every new record to a callback;
* kills it (SIGTERM, then SIGKILL for the group and any descendants it saw) at ``budget + grace``
  or when the person asks, and always sweeps the group after the main process exits;
* parses the ``---`` summary from the end of the log and prefers the harness's own eval record
  for ``val_bpb`` over the number the trainer printed.

Only POSIX is supported (process groups, ``os.killpg``); Linux gets the most thorough cleanup
because it can read ``/proc``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from supervisor.trial.warm_start import WarmStarter

__all__ = [
    "TrialSpec",
    "TrialOutcome",
    "run_trial",
    "launch_command",
    "trial_environment",
    "scrub_environment",
    "is_secret_name",
    "parse_summary",
    "summary_float",
    "read_log_end",
    "log_tail",
]

log = logging.getLogger(__name__)

# How often the runner wakes up to read metrics and check the deadline: 10 Hz keeps the live
# loss curve smooth and costs nothing measurable.
POLL_INTERVAL_S = 0.1
# How much of the end of the log is read for the summary and the tail: the summary is a dozen
# short lines, and a log can be gigabytes when a trainer prints every step.
LOG_WINDOW_BYTES = 64 * 1024
TAIL_LINES = 60
# Descendants are snapshotted this often so that children that escape the process group
# (setsid) can still be found and killed after the main process is gone.
DESCENDANT_SNAPSHOT_INTERVAL_S = 1.0
# A metrics line longer than this is garbage (or an attack on our memory): skip it.
MAX_METRIC_LINE_BYTES = 1024 * 1024
# Read at most this much of the metrics file per poll so that one poll never stalls the loop.
METRICS_READ_CHUNK = 4 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------

# Substrings of variable names that mark credentials (matched case-insensitively).
_SECRET_SUBSTRINGS = (
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "AUTH",
    "COOKIE",
    "SESSION",
    "WEBHOOK",
)
# Whole ``_``-separated name parts that mark credentials but are too short to match as
# substrings without false positives (PAT would hit PATH).
_SECRET_NAME_PARTS = frozenset({"PAT", "PASS", "PASSPHRASE", "PRIVATE", "DSN", "PWD"})
# Prefixes of whole families of credential variables: LLM providers and clouds. The trainer
# has no network anyway, so losing a harmless one (AWS_REGION) costs nothing.
_SECRET_PREFIXES = (
    "ANTHROPIC_",
    "OPENAI_",
    "AZURE_",
    "AWS_",
    "GOOGLE_",
    "GCLOUD_",
    "CLOUDSDK_",
    "GEMINI_",
    "COHERE_",
    "MISTRAL_",
    "GROQ_",
    "TOGETHER_",
    "DEEPSEEK_",
    "OPENROUTER_",
    "XAI_",
    "HUGGING_FACE_",
    "WANDB_",
    "NEPTUNE_",
    "COMET_",
    "DIGITALOCEAN_",
    "CLOUDFLARE_",
)
_SECRET_NAMES = frozenset({"HF_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "NETRC", "KUBECONFIG", "DOCKER_CONFIG"})
# Names a trainer needs that would otherwise match a pattern above (TOKENIZERS_* contains
# TOKEN; PWD/OLDPWD contain the PWD part but are just directories).
_KEEP_NAMES = frozenset({"TOKENIZERS_PARALLELISM", "PWD", "OLDPWD"})
# Values that are credentials whatever the variable is called: well-known key formats and URLs
# with a password in them (proxies, package indexes, database URLs).
_SECRET_VALUE_RE = re.compile(
    r"""^\s*(?:
        sk-[A-Za-z0-9_\-]{20,}            # OpenAI / Anthropic style
      | gh[pousr]_[A-Za-z0-9]{30,}        # GitHub tokens
      | github_pat_[A-Za-z0-9_]{20,}
      | hf_[A-Za-z0-9]{30,}               # Hugging Face
      | (?:AKIA|ASIA)[0-9A-Z]{16}         # AWS access key ids
      | xox[abprs]-[A-Za-z0-9\-]{10,}     # Slack
      | [A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]+:[^/\s@]+@.*   # scheme://user:password@host
    )""",
    re.VERBOSE,
)


def is_secret_name(name: str) -> bool:
    """True when an environment variable's name says it holds a credential."""
    upper = name.upper()
    if upper in _KEEP_NAMES:
        return False
    if upper in _SECRET_NAMES or upper.startswith(_SECRET_PREFIXES):
        return True
    if any(part in upper for part in _SECRET_SUBSTRINGS):
        return True
    return any(part in _SECRET_NAME_PARTS for part in upper.split("_"))


def scrub_environment(env: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``env`` without anything that looks like a credential.

    A variable is dropped when its name contains KEY, TOKEN, SECRET, PASSWORD, PASSWD,
    CREDENTIAL, AUTH, COOKIE or SESSION (any case), belongs to a provider or cloud family
    (``ANTHROPIC_*``, ``OPENAI_*``, ``AWS_*``, ``AZURE_*``, ``GOOGLE_*``, ...), is a known
    credential pointer (``HF_TOKEN``, ``GITHUB_TOKEN``, ``NETRC``, ...), or when its value has
    the shape of a key (``sk-...``, ``ghp_...``, ``hf_...``, ``AKIA...``) or of a URL with a
    password. ``PATH``, ``HOME``, ``LANG``, ``CUDA_VISIBLE_DEVICES``, ``PYTHONPATH``,
    ``TOKENIZERS_PARALLELISM`` and the like are kept.
    """
    return {
        name: value
        for name, value in env.items()
        if not is_secret_name(name) and not _SECRET_VALUE_RE.match(value)
    }


def _format_seconds(value: float) -> str:
    # Trainers (ours and upstream's) may int() the budget; "300" parses both ways, "300.0" not.
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def trial_environment(spec: TrialSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The exact environment a trial gets: ``base`` (default ``os.environ``) scrubbed, with
    ``PYTHONUNBUFFERED=1``, the spec's ``extra_env`` and the contract's ``AUTORESEARCH_*``
    variables. ``extra_env`` is scrubbed too: no caller can hand a key to a trial by mistake.
    """
    merged: dict[str, str] = dict(os.environ if base is None else base)
    # Unbuffered so that the log (and the tail shown after a kill) is current, not stuck in a
    # block buffer of the dead process.
    merged["PYTHONUNBUFFERED"] = "1"
    merged.update(spec.extra_env)
    env = scrub_environment(merged)
    # The contract variables come last: the spec is the single source of truth for them.
    env["AUTORESEARCH_TIME_BUDGET"] = _format_seconds(spec.budget_s)
    env["AUTORESEARCH_SEED"] = str(int(spec.seed))
    env["AUTORESEARCH_METRICS"] = str(spec.metrics_path)
    env["AUTORESEARCH_EVAL_RECORD"] = str(spec.eval_record_path)
    return env


# ---------------------------------------------------------------------------------------------
# Spec and outcome
# ---------------------------------------------------------------------------------------------


@dataclass
class TrialSpec:
    """What to run and under which limits.

    ``memory_limit_mb`` caps the trial's *virtual* address space (``RLIMIT_AS``), not its
    resident memory. CUDA and ROCm reserve tens of GB of virtual address space at start-up, so
    leave it ``None`` for GPU trials; it is meant for CPU trials, where it turns a runaway
    allocation into a ``MemoryError`` instead of a visit from the OOM killer.
    """

    command: list[str]
    cwd: Path
    log_path: Path
    metrics_path: Path
    eval_record_path: Path
    budget_s: float
    grace_s: float
    seed: int = 42
    extra_env: dict[str, str] = field(default_factory=dict)
    memory_limit_mb: int | None = None
    # How long the trial gets to exit after SIGTERM before its group is SIGKILLed.
    term_timeout_s: float = 2.0
    # A trial that writes more output than this is killed: a flood would otherwise fill the disk overnight.
    max_log_mb: float | None = 1024.0


@dataclass
class TrialOutcome:
    """What one trial did. ``status`` is ``"ok"`` only for exit 0 with a finite ``val_bpb``.

    ``val_bpb`` is ``None`` for every crash, even one that printed a number before it was
    killed, so that no caller can mistake a crash for a result (``summary`` still holds what
    was printed).
    """

    status: Literal["ok", "crash"]
    reason: str
    exit_code: int | None
    summary: dict[str, str]
    val_bpb: float | None
    metrics: list[dict]
    log_tail: str
    wall_seconds: float
    timed_out: bool
    stopped: bool
    # "eval_record" (the harness measured it) or "summary" (the trainer printed it).
    val_bpb_source: Literal["eval_record", "summary"] | None = None
    # The harness's JSON record when one was written and readable.
    eval_record: dict | None = None
    # Whether it ran in an interpreter started ahead (supervisor/warm_start.py) rather than a fresh one.
    started_warm: bool = False


# ---------------------------------------------------------------------------------------------
# Summary and log parsing
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


def _fail_line(text: str) -> str | None:
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


def _read_eval_record(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _record_val_bpb(record: dict) -> tuple[bool, float | None]:
    """(has_key, finite value or None) for an eval record's val_bpb."""
    if "val_bpb" not in record:
        return False, None
    value = record["val_bpb"]
    if isinstance(value, bool):
        return True, None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return True, None
    return True, number if math.isfinite(number) else None


# ---------------------------------------------------------------------------------------------
# Live metrics
# ---------------------------------------------------------------------------------------------


class _MetricsTail:
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


class _ProcessSweeper:
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


def _has_exited(proc: subprocess.Popen) -> bool:
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


# ---------------------------------------------------------------------------------------------
# Running a trial
# ---------------------------------------------------------------------------------------------

# Applies RLIMIT_AS and then becomes the trainer (exec keeps the pid, group and session).
# Used instead of preexec_fn, which the docs call unsafe when the parent has threads, and the
# supervisor always has (UI, telemetry).
_RLIMIT_SHIM = (
    "import os, resource, sys\n"
    "limit = int(sys.argv[1])\n"
    "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
    "if hard != resource.RLIM_INFINITY:\n"
    "    limit = min(limit, hard)\n"
    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def launch_command(command: list[str], memory_limit_mb: int | None) -> list[str]:
    """The command line that starts ``command`` under the memory cap, if there is one."""
    if memory_limit_mb is None:
        return list(command)
    limit_bytes = int(memory_limit_mb) * 1024 * 1024
    return [sys.executable, "-I", "-c", _RLIMIT_SHIM, str(limit_bytes), *command]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _deliver(on_metric: Callable[[dict], None] | None, records: list[dict], sink: list[dict]) -> None:
    for record in records:
        sink.append(record)
        if on_metric is None:
            continue
        try:
            on_metric(record)
        except Exception:
            # A broken UI callback must not kill (or orphan) a running trial.
            log.exception("on_metric callback failed")


def _crash(reason: str, wall: float, *, stopped: bool = False) -> TrialOutcome:
    return TrialOutcome(
        status="crash",
        reason=reason,
        exit_code=None,
        summary={},
        val_bpb=None,
        metrics=[],
        log_tail="",
        wall_seconds=wall,
        timed_out=False,
        stopped=stopped,
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def run_trial(
    spec: TrialSpec,
    on_metric: Callable[[dict], None] | None = None,
    stop_event: threading.Event | None = None,
    on_start: Callable[[int], None] | None = None,
    warm_start: WarmStarter | None = None,
) -> TrialOutcome:
    """Run one trial to completion (or deadline, or stop) and return its outcome.

    ``on_start`` gets the trial's pid (also its process-group id) as soon as it runs, so a caller
    can record it durably and kill an orphaned trial after its own crash. ``warm_start`` may hand over an
    interpreter started ahead for this trial (:mod:`supervisor.trial.warm_start`); without one the trial starts cold.

    Blocks the calling thread. ``on_metric`` is called in that thread, in file order, for every
    metrics record as it appears (about 10 Hz). Setting ``stop_event`` from another thread kills
    the trial and returns ``stopped=True``. Never raises for anything the trial does; a command
    that cannot be started is a crash with reason ``could not start: ...``.
    """
    _prepare_paths(spec)
    if stop_event is not None and stop_event.is_set():
        return _crash("stopped by the person", 0.0, stopped=True)

    env = trial_environment(spec)
    started = time.monotonic()
    deadline = started + spec.budget_s + spec.grace_s
    proc = warm_start.launch(spec, env) if warm_start is not None else None
    started_warm = proc is not None
    if proc is None:
        try:
            proc = _start_cold(spec, env)
        except OSError as exc:
            return _could_not_start(spec, exc, time.monotonic() - started)

    _report_start(on_start, proc.pid)
    watch = _TrialWatch(spec, proc, on_metric, stop_event, deadline)
    ending = watch.run()
    wall = time.monotonic() - started
    watch.deliver_remaining_metrics()
    return _outcome(spec, proc.returncode, ending, watch.metrics, wall, started_warm)


def _prepare_paths(spec: TrialSpec) -> None:
    for path in (spec.log_path, spec.metrics_path, spec.eval_record_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh trial must not inherit an earlier trial's numbers.
    for path in (spec.metrics_path, spec.eval_record_path):
        path.unlink(missing_ok=True)


def _start_cold(spec: TrialSpec, env: dict[str, str]) -> subprocess.Popen:
    """A fresh interpreter for the trial, in its own session, its output going to the log."""
    with open(spec.log_path, "wb") as log_file:
        return subprocess.Popen(
            launch_command(spec.command, spec.memory_limit_mb),
            cwd=spec.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def _could_not_start(spec: TrialSpec, exc: OSError, wall: float) -> TrialOutcome:
    message = f"could not start: {exc}"
    try:
        spec.log_path.write_text(message + "\n", encoding="utf-8")
    except OSError:
        pass
    outcome = _crash(message, wall)
    outcome.log_tail = message
    return outcome


def _report_start(on_start: Callable[[int], None] | None, pid: int) -> None:
    if on_start is None:
        return
    try:
        on_start(pid)
    except Exception:  # bookkeeping must never leave a trial unsupervised
        log.exception("on_start callback failed")


# Why the runner ended a trial before it exited on its own.
_EarlyEnd = Literal["stopped", "flooded", "timed_out"]


class _TrialWatch:
    """Watches a running trial: delivers its metrics, and ends it on stop, output flood or deadline."""

    def __init__(
        self,
        spec: TrialSpec,
        proc: subprocess.Popen,
        on_metric: Callable[[dict], None] | None,
        stop_event: threading.Event | None,
        deadline: float,
    ) -> None:
        self.spec = spec
        self.proc = proc
        self.on_metric = on_metric
        self.stop_event = stop_event
        self.deadline = deadline
        self.max_log_bytes = None if spec.max_log_mb is None else int(spec.max_log_mb * 2**20)
        self.sweeper = _ProcessSweeper(proc.pid)
        self.tail = _MetricsTail(spec.metrics_path)
        self.metrics: list[dict] = []

    def run(self) -> _EarlyEnd | None:
        """Block until the trial is over and its whole process tree is gone; say why it ended early."""
        try:
            while True:
                _deliver(self.on_metric, self.tail.poll(), self.metrics)
                if _has_exited(self.proc):
                    return None
                ending = self._reason_to_end()
                if ending is not None:
                    self._terminate()
                    return ending
                self.sweeper.maybe_snapshot()
                self._pause()
        finally:
            # Always, even on our own exceptions (KeyboardInterrupt): no orphans, ever. Lingering
            # children of a cleanly exited trainer (a forgotten worker) go the same way.
            self.sweeper.kill_all()
            self.proc.wait()

    def deliver_remaining_metrics(self) -> None:
        _deliver(self.on_metric, self.tail.poll(final=True), self.metrics)

    def _reason_to_end(self) -> _EarlyEnd | None:
        if self.stop_event is not None and self.stop_event.is_set():
            return "stopped"
        if self.max_log_bytes is not None and _size(self.spec.log_path) > self.max_log_bytes:
            return "flooded"
        if time.monotonic() >= self.deadline:
            return "timed_out"
        return None

    def _terminate(self) -> None:
        # SIGTERM first so a trainer can flush its log; the group is SIGKILLed by kill_all
        # right after, whether or not it listened.
        self.sweeper.snapshot()
        self.sweeper.signal_group(signal.SIGTERM)
        until = time.monotonic() + self.spec.term_timeout_s
        while time.monotonic() < until and not _has_exited(self.proc):
            time.sleep(0.05)

    def _pause(self) -> None:
        # Waiting on the stop event wakes the loop as soon as the person asks.
        if self.stop_event is not None:
            self.stop_event.wait(POLL_INTERVAL_S)
        else:
            time.sleep(POLL_INTERVAL_S)


# ---------------------------------------------------------------------------------------------
# The outcome
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MeasuredBpb:
    """The val_bpb a trial produced, where it came from, and what an unusable one said."""

    value: float | None = None
    source: Literal["eval_record", "summary"] | None = None
    bad_value: str | None = None


def _measured_val_bpb(record: dict | None, summary: Mapping[str, str]) -> _MeasuredBpb:
    has_key, record_value = _record_val_bpb(record) if record is not None else (False, None)
    if has_key:
        assert record is not None  # has_key comes from the record
        # The harness measured it: its number stands, even a NaN (a trainer that printed a
        # finite number over a NaN evaluation must not get a keep).
        if record_value is None:
            return _MeasuredBpb(None, "eval_record", f"{str(record['val_bpb']).lower()} (harness eval record)")
        printed = summary_float(summary, "val_bpb")
        if printed is not None and abs(printed - record_value) > 1e-6:
            log.warning("trial printed val_bpb %s but the harness measured %s", printed, record_value)
        return _MeasuredBpb(record_value, "eval_record")
    if "val_bpb" in summary:
        value = summary_float(summary, "val_bpb")
        bad_value = None if value is not None else (summary["val_bpb"].strip().lower() or "empty")
        return _MeasuredBpb(value, "summary", bad_value)
    return _MeasuredBpb()


def _outcome(
    spec: TrialSpec,
    exit_code: int | None,
    ending: _EarlyEnd | None,
    metrics: list[dict],
    wall: float,
    started_warm: bool,
) -> TrialOutcome:
    window = read_log_end(spec.log_path)
    summary = parse_summary(window)
    record = _read_eval_record(spec.eval_record_path)
    measured = _measured_val_bpb(record, summary)
    reason = _reason(spec, ending, exit_code, window, summary, measured)
    ok = reason == "ok"
    return TrialOutcome(
        status="ok" if ok else "crash",
        reason=reason,
        exit_code=exit_code,
        summary=summary,
        val_bpb=measured.value if ok else None,
        metrics=metrics,
        log_tail=log_tail(window),
        wall_seconds=wall,
        timed_out=ending == "timed_out",
        stopped=ending == "stopped",
        val_bpb_source=measured.source if ok else None,
        eval_record=record,
        started_warm=started_warm,
    )


def _reason(
    spec: TrialSpec,
    ending: _EarlyEnd | None,
    exit_code: int | None,
    window: str,
    summary: Mapping[str, str],
    measured: _MeasuredBpb,
) -> str:
    """``"ok"``, or why the trial is a crash, in words for the journal."""
    if ending is not None:
        return _early_end_reason(spec, ending)
    if exit_code != 0:
        return _fail_line(window) or _exit_reason(exit_code, window)
    if measured.value is None:
        if measured.bad_value is not None:
            return f"val_bpb is {measured.bad_value}"
        return "no val_bpb in summary" if summary else "no summary"
    return "ok"


def _early_end_reason(spec: TrialSpec, ending: _EarlyEnd) -> str:
    if ending == "stopped":
        return "stopped by the person"
    if ending == "flooded":
        return f"killed: it wrote more than {spec.max_log_mb:g} MB of output (its log is kept)"
    return (
        f"killed at deadline (budget {_format_seconds(spec.budget_s)}s"
        f" + grace {_format_seconds(spec.grace_s)}s)"
    )


def _exit_reason(exit_code: int | None, window: str) -> str:
    if exit_code is not None and exit_code < 0:
        reason = f"killed by signal {_signal_name(-exit_code)}"
        if -exit_code == signal.SIGKILL:
            reason += " (out of memory?)"
    else:
        reason = f"exit code {exit_code}"
    exception = _exception_line(window)
    return f"{reason}: {exception}" if exception else reason
