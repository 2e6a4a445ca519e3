"""Run one training trial as a subprocess, take the model it hands over, and have it evaluated.

The trial is untrusted code (the agent wrote it), so the runner:

* gives it an allowlisted environment: API keys and other credentials never reach it
  (:mod:`supervisor.trial.environment`), plus the ``AUTORESEARCH_*`` variables of the trainer contract
  (docs/architecture.md);
* starts it in the spec's OS sandbox (:mod:`supervisor.trial.sandbox`; none where there is none, and the
  outcome says so), in its own session / process group, so that the whole tree can be killed at once;
* streams its stdout+stderr to a log file, never into our memory;
* tails the JSON-lines metrics file it writes in its exchange folder, re-encodes every record into the
  trial's folder and hands it to a callback, keeping a bounded sample in memory;
* takes the first model it hands over (:class:`supervisor.trial.evaluation.HandOverWatch`), on the
  supervisor's clock, and gives it a short while to exit;
* kills it (SIGTERM, then SIGKILL for the group and any descendants it saw) at ``budget + grace``
  or when the person asks, and always sweeps the group after the main process exits;
* voids a hand-over later than the budget plus the warm-up allowance, and otherwise has the trusted
  evaluator (started as the trial started) measure val_bpb: nothing the trial prints counts;
* under a token budget (``spec.budget_tokens``) also reads the tokens its metrics say it trained on, live:
  a claim past the budget ends the trial without a result, and so does a trial that never says; the
  seconds budget is then a wall-clock cap.

Only POSIX is supported (process groups, ``os.killpg``). Descendants that leave the group are found through
psutil on Linux and macOS alike; Linux also gets the sandbox, whose PID namespace ends every process with
the trial.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from supervisor.trial.environment import drop_credentials, is_secret_name, scrub_environment
from supervisor.trial.evaluation import MODEL_FILE, Evaluator, EvaluatorSpec, HandOverWatch
from supervisor.trial.process import MetricsBuffer, MetricsTail, ProcessSweeper, has_exited, wait_group_gone
from supervisor.trial.sandbox import SandboxPlan, seen_from
from supervisor.trial.summary import (
    exit_reason,
    fail_line,
    log_tail,
    parse_summary,
    read_log_end,
    summary_float,
)

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


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------

def _format_seconds(value: float) -> str:
    # Trainers (ours and upstream's) may int() the budget; "300" parses both ways, "300.0" not.
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# The trainer contract's token budget (trainer/prepare.py token_budget()); unset: the budget is in seconds.
BUDGET_TOKENS_VARIABLE = "AUTORESEARCH_BUDGET_TOKENS"

# Variables that hold host paths: inside a sandbox they are rewritten to where the trial sees the path.
_PATH_VARIABLES = ("AUTORESEARCH_CACHE", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def trial_environment(spec: TrialSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The exact environment a trial gets: ``base`` (default ``os.environ``) scrubbed, with
    ``PYTHONUNBUFFERED=1``, the spec's ``extra_env`` and the contract's ``AUTORESEARCH_*``
    variables. ``extra_env`` is scrubbed too: no caller can hand a key to a trial by mistake.
    In a sandbox every path is the one the trial sees, and HOME and TMPDIR are its private /tmp.
    """
    env = scrub_environment(os.environ if base is None else base)
    # Unbuffered so that the log (and the tail shown after a kill) is current, not stuck in a
    # block buffer of the dead process.
    env["PYTHONUNBUFFERED"] = "1"
    # What the supervisor sets on purpose passes the allowlist, but never a credential.
    env.update(drop_credentials(spec.extra_env))
    # The contract variables come last: the spec is the single source of truth for them.
    env["AUTORESEARCH_TIME_BUDGET"] = _format_seconds(spec.budget_s)
    if spec.budget_tokens is None:
        env.pop(BUDGET_TOKENS_VARIABLE, None)  # the supervisor's own environment does not decide the budget
    else:
        env[BUDGET_TOKENS_VARIABLE] = str(int(spec.budget_tokens))
    env["AUTORESEARCH_SEED"] = str(int(spec.seed))
    env["AUTORESEARCH_METRICS"] = spec.seen(spec.offered_metrics_path)
    env["AUTORESEARCH_MODEL_OUT"] = spec.seen(spec.offered_model_path)
    # The trial's own working folder, not the supervisor's (which may be the person's checkout).
    env.pop("OLDPWD", None)
    env["PWD"] = spec.sandbox.cwd if spec.sandbox is not None else str(spec.cwd)
    if spec.sandbox is not None:
        for name in _PATH_VARIABLES:
            if name in env:
                inside = spec.sandbox.inside(env[name])
                if inside is None:
                    del env[name]
                else:
                    env[name] = inside
        env.update(spec.sandbox.env_paths)
        env["HOME"] = env["TMPDIR"] = "/tmp/home"
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
    # Where the trial writes its metrics and hands over its model (default: an "exchange" folder beside the
    # log). The supervisor copies both out: the metrics as it reads them, the model when it appears.
    exchange_dir: Path | None = None
    # The OS sandbox (None: the trial runs unsandboxed) and how the trial is labelled ("bwrap", "none: why").
    sandbox: SandboxPlan | None = None
    sandbox_label: str = "none: no sandbox was set up"
    # The trusted evaluation of the handed-over model. Without one a trial has no result.
    evaluator: EvaluatorSpec | None = None
    # After the hand-over the trial has this long to exit (print its summary) before it is stopped.
    handover_exit_s: float = 15.0
    # The warm-up allowance of the budget rule (None: grace_s), and where it comes from, for the reason text.
    allowance_s: float | None = None
    allowance_source: str = "--grace"
    # Train on this many tokens (None: for budget_s seconds). budget_s is then the wall-clock cap, and the
    # tokens the trial's metrics claim are held against this number.
    budget_tokens: int | None = None

    @property
    def exchange(self) -> Path:
        return self.exchange_dir if self.exchange_dir is not None else self.log_path.parent / "exchange"

    @property
    def offered_metrics_path(self) -> Path:
        return self.exchange / "metrics.jsonl"

    @property
    def offered_model_path(self) -> Path:
        return self.exchange / MODEL_FILE

    @property
    def kept_model_path(self) -> Path:
        return self.evaluator.model_path if self.evaluator is not None else self.log_path.parent / MODEL_FILE

    def seen(self, host: Path) -> str:
        """A host path as the trial sees it."""
        return seen_from(self.sandbox, host)


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
    # "evaluator": the trusted evaluation measured it (the only source there is).
    val_bpb_source: Literal["evaluator"] | None = None
    # The evaluator's JSON record when there was one.
    eval_record: dict | None = None
    # Whether it ran in an interpreter started ahead (supervisor/trial/warm_start.py) rather than a fresh one.
    started_warm: bool = False
    # Whether the trial ran in the OS sandbox, and its label ("bwrap", or "none: why").
    sandboxed: bool = False
    sandbox: str = ""
    # Seconds from the trial's start to its hand-over, on the supervisor's clock; the evaluation's own time.
    handover_seconds: float | None = None
    evaluation_seconds: float | None = None
    # The token budget it ran under (None: seconds), and the most tokens its metrics said it trained on.
    budget_tokens: int | None = None
    tokens_claimed: int | None = None


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


def trial_argv(spec: TrialSpec, command: list[str]) -> list[str]:
    """The whole command line of a trial process: the memory cap inside the sandbox, when there is one."""
    inner = launch_command(command, spec.memory_limit_mb)
    return spec.sandbox.wrap(inner) if spec.sandbox is not None else inner



# Records handed on at a time: a flood of metrics goes through in slices, never all at once.
_DELIVERY_CHUNK = 5000


def _deliver(on_metric: Callable[[dict], None] | None, records: list[dict]) -> None:
    for record in records:
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
    """Run one trial to its hand-over (or deadline, or stop), evaluate what it handed over, return the outcome.

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
    evaluator = Evaluator(spec.evaluator) if spec.evaluator is not None else None
    if evaluator is not None:
        evaluator.start()  # its imports overlap the trial's training
    try:
        outcome = _run_and_watch(spec, on_metric, stop_event, on_start, warm_start)
        outcome.sandboxed, outcome.sandbox = spec.sandbox is not None, spec.sandbox_label
        if outcome.status == "ok":
            _evaluate(spec, outcome, evaluator, stop_event)
        return outcome
    finally:
        if evaluator is not None:
            evaluator.close()


def _run_and_watch(spec: TrialSpec, on_metric: Callable[[dict], None] | None, stop_event: threading.Event | None,
                   on_start: Callable[[int], None] | None, warm_start: WarmStarter | None) -> TrialOutcome:
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
    watch = _TrialWatch(spec, proc, on_metric, stop_event, deadline, started)
    ending = watch.run()
    wall = time.monotonic() - started
    watch.deliver_remaining_metrics()
    return _outcome(spec, proc.returncode, ending, watch, wall, started_warm)


def _evaluate(spec: TrialSpec, outcome: TrialOutcome, evaluator: Evaluator | None,
              stop_event: threading.Event | None) -> None:
    """The trusted evaluation of the handed-over model; a trial without one has no result."""
    if evaluator is None:
        _void(outcome, "no trusted evaluation was set up for this trial (its harness has no evaluator: "
                       "`prepare.py --serve-evaluation`), so it has no result")
        return
    began = time.monotonic()
    record = evaluator.evaluate(stop_requested=lambda: stop_event is not None and stop_event.is_set())
    outcome.evaluation_seconds = time.monotonic() - began
    outcome.eval_record = record
    value = record.get("val_bpb") if record.get("ok") is True else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        error = record.get("error") if record.get("ok") is not True else f"val_bpb is {value!r}"
        _void(outcome, f"evaluation: {str(error)[:500]}")
        outcome.stopped = error == "stopped by the person"
        return
    outcome.val_bpb, outcome.val_bpb_source = float(value), "evaluator"


def _void(outcome: TrialOutcome, reason: str) -> None:
    outcome.status, outcome.reason, outcome.val_bpb, outcome.val_bpb_source = "crash", reason, None, None


def _prepare_paths(spec: TrialSpec) -> None:
    for path in (spec.log_path, spec.metrics_path, spec.eval_record_path, spec.offered_metrics_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh trial must not inherit an earlier trial's numbers, metrics or model.
    for path in (spec.metrics_path, spec.eval_record_path, spec.offered_metrics_path, spec.offered_model_path,
                 spec.kept_model_path):
        path.unlink(missing_ok=True)
    for stray in spec.exchange.iterdir():
        if stray.is_file() or stray.is_symlink():
            stray.unlink(missing_ok=True)
        elif stray.is_dir():
            shutil.rmtree(stray, ignore_errors=True)


def _start_cold(spec: TrialSpec, env: dict[str, str]) -> subprocess.Popen:
    """A fresh interpreter for the trial, in its own session, its output going to the log."""
    with open(spec.log_path, "wb") as log_file:
        return subprocess.Popen(
            trial_argv(spec, spec.command),
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
_EarlyEnd = Literal["stopped", "flooded", "timed_out", "lingered", "over_tokens"]


class _TrialWatch:
    """Watches a running trial: delivers its metrics, takes its hand-over, and ends it on stop, output flood
    or deadline (or when it lingers after handing over)."""

    def __init__(
        self,
        spec: TrialSpec,
        proc: subprocess.Popen,
        on_metric: Callable[[dict], None] | None,
        stop_event: threading.Event | None,
        deadline: float,
        started: float,
    ) -> None:
        self.spec = spec
        self.proc = proc
        self.on_metric = on_metric
        self.stop_event = stop_event
        self.deadline = deadline
        self.max_log_bytes = None if spec.max_log_mb is None else int(spec.max_log_mb * 2**20)
        self.sweeper = ProcessSweeper(proc.pid)
        self.tail = MetricsTail(spec.offered_metrics_path)
        self.handover = HandOverWatch(spec.offered_model_path, spec.kept_model_path, started)
        self.buffer = MetricsBuffer()  # memory stays flat whatever the trial writes
        self._copy = _MetricsCopy(spec.metrics_path)
        self.tokens = TokenClaims(spec.budget_tokens)

    def run(self) -> _EarlyEnd | None:
        """Block until the trial is over and its whole process tree is gone; say why it ended early."""
        try:
            while True:
                self._deliver(self.tail.records())
                if self.handover.poll():
                    # Handed over: it has a short while to print its summary and exit.
                    self.deadline = min(self.deadline, time.monotonic() + self.spec.handover_exit_s)
                if has_exited(self.proc):
                    self.handover.poll()  # a model renamed into place just before the exit
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
            if not wait_group_gone(self.proc.pid):
                log.warning("trial %s: some of its processes were still dying when it was recorded", self.proc.pid)
            self._copy.close()

    @property
    def metrics(self) -> list[dict]:
        return self.buffer.records()

    def deliver_remaining_metrics(self) -> None:
        self._deliver(self.tail.records(final=True))

    def _deliver(self, records: Iterable[dict]) -> None:
        # In chunks, so that a flood of records is never all in memory at once.
        chunk: list[dict] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= _DELIVERY_CHUNK:
                self._deliver_chunk(chunk)
                chunk = []
        self._deliver_chunk(chunk)

    def _deliver_chunk(self, records: list[dict]) -> None:
        if not records:
            return
        self._copy.write(records)
        self.buffer.add(records)
        self.tokens.add(records)
        _deliver(self.on_metric, records)

    def _reason_to_end(self) -> _EarlyEnd | None:
        if self.stop_event is not None and self.stop_event.is_set():
            return "stopped"
        if self.max_log_bytes is not None and _size(self.spec.log_path) > self.max_log_bytes:
            return "flooded"
        if self.tokens.over:
            return "over_tokens"
        if time.monotonic() >= self.deadline:
            return "lingered" if self.handover.seconds is not None else "timed_out"
        return None

    def _terminate(self) -> None:
        # SIGTERM first so a trainer can flush its log; the group is SIGKILLed by kill_all
        # right after, whether or not it listened.
        self.sweeper.snapshot()
        self.sweeper.signal_group(signal.SIGTERM)
        until = time.monotonic() + self.spec.term_timeout_s
        while time.monotonic() < until and not has_exited(self.proc):
            time.sleep(0.05)

    def _pause(self) -> None:
        # Waiting on the stop event wakes the loop as soon as the person asks.
        if self.stop_event is not None:
            self.stop_event.wait(POLL_INTERVAL_S)
        else:
            time.sleep(POLL_INTERVAL_S)


class TokenClaims:
    """What a trial under a token budget says it trained on: the ``tokens`` of its metrics records (tokens
    trained so far), read as they arrive. Its word, not a measurement: it catches a trainer that trains past
    the budget and says so, or says nothing; one that reports fewer tokens than it trained on is not caught
    here (the guards see only budget arithmetic in the script, and the wall-clock cap bounds the rest).

    The trainer contract never trains past the budget (its last step is cut to the passes that fit), so any
    claim above the budget is over it: there is no slack of "one more step", whose size the trial chooses.
    """

    def __init__(self, budget_tokens: int | None) -> None:
        self.budget = budget_tokens
        self.most: int | None = None  # the largest count claimed so far
        self.over = False

    def add(self, records: Iterable[dict]) -> None:
        if self.budget is None:
            return
        for record in records:
            value = record.get("tokens")
            if type(value) not in (int, float) or not math.isfinite(value):
                continue  # a record without a count (a note, an evaluation line) says nothing about tokens
            claimed = math.ceil(value)
            self.most = claimed if self.most is None else max(self.most, claimed)
            self.over = self.over or claimed > self.budget

    def problem(self) -> str | None:
        """Why the trial has no result under its token budget, or None."""
        if self.budget is None:
            return None
        if self.over:
            return (f"over the token budget: its metrics say it trained on {self.most:,} tokens; the budget "
                    f"is {self.budget:,} tokens per trial (stop before a step that would pass it)")
        if self.most is None:
            return (f"no token count: under a token budget ({self.budget:,} tokens per trial) the metrics "
                    f"must say how many tokens were trained so far (`tokens` in each line), and none did")
        return None


class _MetricsCopy:
    """The trial's metrics as the supervisor read them, re-encoded into the trial's folder (the UI reads it
    there): only well-formed JSON objects, whatever the trial wrote into its own file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = None

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        try:
            if self.handle is None:
                self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            self.handle.write("".join(json.dumps(r, default=str) + "\n" for r in records))
            self.handle.flush()
        except (OSError, ValueError, TypeError):
            log.warning("could not copy metrics to %s", self.path)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


# ---------------------------------------------------------------------------------------------
# The outcome
# ---------------------------------------------------------------------------------------------

NO_HANDOVER = ("no model was handed over: train.py must end by calling prepare.hand_over(model), and the "
               "supervisor measures val_bpb on that model (a printed val_bpb is not a result)")


def _outcome(
    spec: TrialSpec,
    exit_code: int | None,
    ending: _EarlyEnd | None,
    watch: _TrialWatch,
    wall: float,
    started_warm: bool,
) -> TrialOutcome:
    """What the trial itself did, before the evaluation: ``ok`` means it handed over a model in time."""
    window = read_log_end(spec.log_path)
    summary = parse_summary(window)
    reason = _reason(spec, ending, exit_code, window, watch.handover, watch.tokens)
    return TrialOutcome(
        status="ok" if reason == "ok" else "crash",
        reason=reason,
        exit_code=exit_code,
        summary=summary,
        val_bpb=None,
        metrics=watch.metrics,
        log_tail=log_tail(window),
        wall_seconds=wall,
        timed_out=ending == "timed_out",
        stopped=ending == "stopped",
        started_warm=started_warm,
        handover_seconds=watch.handover.seconds,
        budget_tokens=spec.budget_tokens,
        tokens_claimed=watch.tokens.most,
    )


def _reason(spec: TrialSpec, ending: _EarlyEnd | None, exit_code: int | None, window: str,
            handover: HandOverWatch, tokens: TokenClaims) -> str:
    """``"ok"``, or why the trial is a crash, in words for the journal."""
    if ending == "over_tokens":
        return tokens.problem() or "over the token budget"
    if ending is not None and ending != "lingered":
        reason = _early_end_reason(spec, ending)
        # A hand-over that was refused says why, even when the trial then ran into its deadline.
        return f"{reason}; {handover.problem}" if handover.problem and ending == "timed_out" else reason
    if exit_code != 0 and ending != "lingered":  # stopped after its hand-over: its exit code does not matter
        return fail_line(window) or exit_reason(exit_code, window)
    if handover.problem:
        return handover.problem
    if handover.seconds is None:
        return NO_HANDOVER
    allowance = spec.grace_s if spec.allowance_s is None else min(spec.allowance_s, spec.grace_s)
    if handover.seconds > spec.budget_s + allowance:
        if spec.budget_tokens is not None:
            return (f"over the wall-clock cap: it handed over its model {handover.seconds:.1f} s after it "
                    f"started; under a token budget of {spec.budget_tokens:,} tokens the cap is --budget "
                    f"{_format_seconds(spec.budget_s)} s plus a warm-up allowance of {allowance:.1f} s "
                    f"({spec.allowance_source})")
        return (f"over budget: it handed over its model {handover.seconds:.1f} s after it started; the budget is "
                f"{_format_seconds(spec.budget_s)} s plus a warm-up allowance of {allowance:.1f} s "
                f"({spec.allowance_source})")
    return tokens.problem() or "ok"


def _early_end_reason(spec: TrialSpec, ending: _EarlyEnd) -> str:
    if ending == "stopped":
        return "stopped by the person"
    if ending == "flooded":
        return f"killed: it wrote more than {spec.max_log_mb:g} MB of output (its log is kept)"
    if spec.budget_tokens is not None:
        return (f"killed at the wall-clock cap (--budget {_format_seconds(spec.budget_s)}s + grace "
                f"{_format_seconds(spec.grace_s)}s) without handing over a model: under a token budget of "
                f"{spec.budget_tokens:,} tokens, speed does not count, but the trial must end within the cap")
    return (
        f"killed at deadline (budget {_format_seconds(spec.budget_s)}s"
        f" + grace {_format_seconds(spec.grace_s)}s) without handing over a model"
    )
