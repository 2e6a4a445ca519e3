"""The supervised research loop: propose -> trial -> record -> journal -> (reflect), and again.

A small explicit state machine. What must happen next is derived from the ledger, never from memory:
a finished trial without a journal entry means "journal", an open reflection trigger means "reflection".
So a supervisor killed at any moment and started again with --resume picks up exactly where it was.

Controls (pause, resume, stop the current trial, steer, stop) are plain methods, safe from any thread;
another process sends the same commands through the ledger's `commands` table.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.agents.base import (
    Agent,
    AgentAuthError,
    AgentConfigError,
    AgentRequestError,
    AgentTurn,
    AgentUnavailable,
    ToolCall,
    ToolOutcome,
    TurnContext,
)
from supervisor.core import events as ev
from supervisor.core.config import ConfigError, RunConfig
from supervisor.core.errors import UserError
from supervisor.core.failpoints import failpoint
from supervisor.core.policy import KeepPolicy, NoiseMeasurement, Verdict
from supervisor.core.pricing import PRICES_AS_OF, UsageTotals
from supervisor.run.tools import (
    JOURNAL_FIELDS,
    REFLECTION_FIELDS,
    TOOL_NAMES,
    TOOL_SCHEMAS,
    ToolBox,
    entry_problems,
    validate_input,
)
from supervisor.store.journal_files import JournalFiles, atomic_write
from supervisor.store.ledger import Ledger, LedgerError, Trial
from supervisor.store.lock import RunLock
from supervisor.trial.guards import eval_fingerprint, fingerprint_changes, scan_diff
from supervisor.trial.platform_info import platform_info
from supervisor.trial.runner import TrialOutcome, TrialSpec, run_trial, summary_float
from supervisor.trial.warm_start import COMPILE_MODULES, WarmStarter
from supervisor.trial.workspace import Workspace, WorkspaceError

PRIMARY_SEED = 42
CONFIRM_SEED_BASE = 1000
NOISE_SEED_BASE = 2000
MAX_EMPTY_TURNS = 3
MAX_MALFORMED_TURNS = 3     # replies with unreadable tool calls in a row before a paid agent is paused
OUTAGE_BACKOFF_S = 2.0      # first wait after the SDK's own retries gave up; doubles up to the max
OUTAGE_BACKOFF_MAX_S = 60.0
COMMAND_POLL_S = 0.5
METRIC_FLUSH_S = 1.0

# Commands accepted from other processes (the ledger's `commands` table) and from code alike.
COMMANDS = ("pause", "resume", "stop-trial", "steer", "stop")


class SupervisorError(UserError, RuntimeError):
    """The run cannot start or go on; the message says what the person should do."""


@dataclass
class RunPaths:
    run_dir: Path

    @property
    def ledger(self) -> Path:
        return self.run_dir / "ledger.sqlite"

    @property
    def lock(self) -> Path:
        return self.run_dir / "run.lock"

    @property
    def live_reply(self) -> Path:
        """The agent's reply while it streams in (a UI in another process tails it); empty between turns."""
        return self.run_dir / "agent_reply.live"

    def trial_dir(self, trial_id: int, attempt: int = 0) -> Path:
        suffix = "" if attempt == 0 else f"-seed{attempt}"
        return self.run_dir / "trials" / f"{trial_id:04d}{suffix}"

    def noise_dir(self, index: int) -> Path:
        return self.run_dir / "noise" / f"{int(time.time())}-{index}"

    @property
    def noise_progress(self) -> Path:
        """Which noise seed runs and what the finished ones scored: the UI, in another process, reads it."""
        return self.run_dir / "noise" / "progress.json"


def _fmt(v: float | None, digits: int = 6) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _delta(new: float | None, old: float | None, digits: int = 0, pct: bool = False) -> str:
    if new is None or old is None:
        return ""
    if pct and old:
        return f" ({(new - old) / old * 100:+.1f}%)"
    return f" ({new - old:+.{digits}f})"


class Supervisor:
    """One run: owns the lock, the ledger, the workspace and the loop."""

    def __init__(self, config: RunConfig, agent: Agent, *, resume: bool = False,
                 bus: ev.EventBus | None = None, runner: Callable[..., TrialOutcome] = run_trial) -> None:
        self.config = config
        self.agent = agent
        self.bus = bus or ev.EventBus()
        self.paths = RunPaths(config.run_dir)
        self._runner = runner
        self._warm = WarmStarter(self.paths.run_dir / "trials") if config.warm_start else None
        self._last_compiled = False  # whether the last trial compiled: its successor's warm start preloads inductor
        self._lock = RunLock(self.paths.lock)
        self._control = threading.Condition()
        self._paused = False
        self._pause_reason = ""
        self._stop = False
        self._trial_stop = threading.Event()
        self._last_outcomes: list[ToolOutcome] = []
        self._empty_turns = 0
        self._malformed_turns = 0
        self._outage_since: float | None = None  # monotonic time of the first failure of the current outage
        self._outage_attempts = 0
        self._outage_paused = False  # paused by an outage: a probe may resume the run
        self._end_detail = ""
        self._state = "new"
        self._closed = False
        self._platform = platform_info()
        self._lock.acquire(config.tag)
        try:
            self._open(resume)
        except BaseException:
            self._lock.release()
            raise
        self.toolbox = ToolBox(self)
        self.spend = self._spend_so_far()
        if hasattr(agent, "on_text"):  # a streaming agent: the UI shows its words as they come
            agent.on_text = self._reply_piece

    # ---- opening and resuming --------------------------------------------------------------------------
    def _open(self, resume: bool) -> None:
        cfg = self.config
        exists = self.paths.ledger.exists()
        if resume and not exists:
            raise SupervisorError(f"no run {cfg.tag!r} to resume in {cfg.run_dir}; start it without --resume")
        if not resume and exists:
            raise SupervisorError(
                f"run {cfg.tag!r} already exists in {cfg.run_dir}; continue it with --resume, or pick another --tag"
            )
        self.ledger = Ledger(self.paths.ledger, create=not resume)
        self.files = JournalFiles(self.ledger, cfg.run_dir)
        if not resume:
            self.ledger.init_run(cfg.tag, cfg.to_json())
            try:
                if cfg.upstream_repo:
                    self.workspace = Workspace.adopt(cfg.upstream_repo, cfg.layout, cfg.branch)
                else:
                    self.workspace = Workspace.create(cfg.workspace, cfg.source_dir, cfg.layout, cfg.branch)
            except WorkspaceError as exc:
                self._forget_unborn_run()
                raise SupervisorError(str(exc)) from exc
            self._harness_hash = self.workspace.committed_harness_hash()
            self.ledger.set_meta("eval_fingerprint", eval_fingerprint(cfg.cache_dir))
            self.ledger.set_state("ready", pid=os.getpid())
        else:
            self._resume()
        self.files.render_all()

    def _forget_unborn_run(self) -> None:
        """A new run whose workspace could not be made leaves no ledger behind, so the same command can be
        given again once its cause is fixed (a ledger without a workspace could neither resume nor restart)."""
        self.ledger.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.paths.ledger}{suffix}").unlink(missing_ok=True)

    def _resume(self) -> None:
        row = self.ledger.run_row()
        if row["state"] == "imported":
            raise SupervisorError(
                f"run {self.config.tag!r} was imported from an upstream results.tsv: it has no workspace to "
                "continue. Its graveyard, report and status work as for any run; start a new run with "
                "another --tag (or --upstream REPO to drive that checkout).")
        stored = RunConfig.from_json(row["config"])
        old_budget = stored.budget_s
        # The person may change settings on resume; identity (tag, paths, layout) comes from the ledger.
        self.config.layout = stored.layout
        self.config.upstream_repo = stored.upstream_repo
        self.config.source_dir = stored.source_dir
        self.ledger.update_config(self.config.to_json())
        try:
            self.workspace = Workspace(self.config.workspace, self.config.layout, self.config.branch)
            self.workspace.ensure_branch()
        except WorkspaceError as exc:
            raise SupervisorError(f"cannot resume: {exc}") from exc
        self._harness_hash = self.workspace.committed_harness_hash()
        for trial in self.ledger.running_trials():
            # Killed mid-trial: never half-recorded. It is marked aborted, its diff kept, and not counted.
            if trial.pid:
                kill_orphan_trial(trial.pid, self.config.layout.command)
            self.ledger.finish_trial(trial.id, status="aborted",
                                     crash_reason="the supervisor stopped during this trial; it was not finished")
            self.bus.emit(ev.NOTICE, level="warning",
                          message=f"trial {trial.id} was interrupted by a supervisor stop; recorded as aborted")
        self.workspace.reset_to(self._branch_target())
        if self.workspace.harness_hash() != self._harness_hash:
            self.workspace.restore_harness()
        finished = self.ledger.finished_trials()
        if finished:
            self._last_compiled = str(finished[-1].summary.get("compiled", "")).strip().lower() == "true"
        if abs(old_budget - self.config.budget_s) > 1e-9 and finished:
            self.ledger.add_trigger("budget change", f"the budget changed from {old_budget:g}s to "
                                                     f"{self.config.budget_s:g}s; results compare only within one budget")
        stale = self.ledger.take_commands()  # addressed to a supervisor that is gone; steering is kept apart
        if stale:
            self.bus.emit(ev.NOTICE, level="info", message=f"ignored {len(stale)} control command(s) sent while "
                                                            "no supervisor was running")
        self.ledger.set_state("ready", "resumed", pid=os.getpid())
        self.bus.emit(ev.NOTICE, level="info", message=f"resumed run {self.config.tag}")

    def _branch_target(self) -> str:
        """Where the branch must be: the last keep, or the initial commit before any keep."""
        best = self.ledger.best_keep()
        if best and best.commit_sha:
            return best.commit_sha
        return self.workspace.repo.git.rev_list("--max-parents=0", self.config.branch).splitlines()[0]

    # ---- controls (thread-safe; the TUI, tests and other processes use these) ------------------------------
    def pause(self, reason: str = "paused by the person") -> None:
        with self._control:
            self._paused = True
            self._pause_reason = reason
            self._outage_paused = False  # whoever pauses now decides; a probe must not undo it
            self._control.notify_all()
        self.bus.emit(ev.NOTICE, level="info", message=f"pause requested: {reason} (takes effect at the next safe point)")

    def resume(self) -> None:
        with self._control:
            self._paused = False
            self._pause_reason = ""
            self._control.notify_all()

    def stop_trial(self) -> None:
        self._trial_stop.set()

    def steer(self, message: str) -> None:
        message = message.strip()
        if not message:
            return
        self.ledger.add_steering(message)
        self.files.render()
        self.bus.emit(ev.STEERING, message=message)

    def stop(self) -> None:
        with self._control:
            self._stop = True
            self._control.notify_all()
        self._trial_stop.set()

    def handle_command(self, command: str, arg: str = "") -> None:
        if command == "pause":
            self.pause(arg or "paused by the person")
        elif command == "resume":
            self.resume()
        elif command == "stop-trial":
            self.stop_trial()
        elif command == "steer":
            self.steer(arg)
        elif command == "stop":
            self.stop()

    def _poll_commands(self) -> None:
        for cmd in self.ledger.take_commands():
            self.handle_command(cmd["command"], cmd["arg"])

    def _command_thread(self) -> None:
        while not self._closed:
            try:
                self._poll_commands()
            except Exception:  # noqa: BLE001 - a busy ledger must not kill the control channel
                pass
            time.sleep(COMMAND_POLL_S)

    # ---- state --------------------------------------------------------------------------------------------
    def _set_state(self, state: str, detail: str = "") -> None:
        self._state = state
        self.ledger.set_state(state, detail)
        self.bus.emit(ev.STATE, state=state, detail=detail)

    @property
    def state(self) -> str:
        return self._state

    @property
    def workspace_root(self) -> Path:
        return self.workspace.root

    @property
    def editable(self) -> str:
        return self.config.layout.editable

    def obligation(self) -> tuple[str | None, str]:
        missing = self.ledger.trials_missing_journal()
        if missing:
            t = missing[0]
            return "journal", (
                f"trial {t.id} ({t.status}, val_bpb {_fmt(t.val_bpb)}) has no journal entry yet. Call write_journal "
                f"with {', '.join(JOURNAL_FIELDS)} (the supervisor fills in the numbers) before anything else."
            )
        triggers = self.ledger.open_triggers()
        if triggers:
            why = "; ".join(f"{t['kind']}: {t['detail']}" for t in triggers)
            return "reflection", (
                f"a reflection is due ({why}). Call write_reflection with {', '.join(REFLECTION_FIELDS)} "
                "before the next trial."
            )
        return None, ""

    def trials_done(self) -> int:
        return len([t for t in self.ledger.finished_trials() if t.kind == "trial"])

    def trial_budget_left(self) -> int | None:
        if self.config.max_trials is None:
            return None
        return self.config.max_trials - self.trials_done()

    def noise_sd(self) -> float | None:
        noise = self.ledger.latest_noise(self.config.budget_s)
        return None if noise is None else noise["sd"]

    def noise_floor(self) -> float | None:
        sd = self.noise_sd()
        return None if sd is None else sd * self.config.floor_factor

    def policy(self) -> KeepPolicy:
        return KeepPolicy(self.config.policy, self.config.floor_factor, self.config.confirm_seeds)

    def working_diff(self) -> str:
        return self.workspace.working_diff()

    def notify_plan(self, plan_id: int, status: str) -> None:
        self.files.render()
        self.bus.emit(ev.PLAN, plan_id=plan_id, status=status)

    # ---- the main loop --------------------------------------------------------------------------------------
    def run(self) -> str:
        """Drive the agent until the trial budget is spent, the agent is done, or a stop. Returns the end state."""
        poller = threading.Thread(target=self._command_thread, name="commands", daemon=True)
        poller.start()
        end = "stopped"
        try:
            self._set_state("running")
            self._check_cost_limit_is_enforceable()
            self._warm_next_trial()
            if self.config.noise_repeats and self.ledger.latest_noise(self.config.budget_s) is None:
                self.measure_noise(self.config.noise_repeats)
            while True:
                if self._stop:
                    end = "stopped"
                    break
                if self._paused:
                    self._wait_paused()
                    continue
                if self._cost_limit_reached():
                    end = "stopped"
                    break
                kind, _ = self.obligation()
                left = self.trial_budget_left()
                if kind is None and left is not None and left <= 0:
                    end = "finished"
                    self.bus.emit(ev.NOTICE, level="info",
                                  message=f"trial budget of {self.config.max_trials} spent; the run is finished")
                    break
                if not self._one_turn():
                    end = "finished"
                    break
        except (OSError, sqlite3.Error) as exc:
            # Storage failed (a full disk, a dying drive). Every finished trial is already durable; stop
            # cleanly and say how to go on, rather than run trials whose results cannot be recorded.
            raise SupervisorError(storage_failure_message(exc, self.config.run_dir)) from exc
        finally:
            try:
                self._set_state(end, self._pause_reason if end == "paused" else self._end_detail)
            except (OSError, sqlite3.Error):
                pass  # the same storage failure; the message above says what to do
            self.close()
        return end

    def _wait_paused(self) -> None:
        self._set_state("paused", self._pause_reason)
        next_probe = time.monotonic() + self.config.probe_every_s
        while True:
            with self._control:
                if not self._paused or self._stop:
                    break
                self._control.wait(timeout=COMMAND_POLL_S)
            if self._outage_paused and time.monotonic() >= next_probe:
                self._probe_api()
                next_probe = time.monotonic() + self.config.probe_every_s
        self._outage_paused = False
        self._outage_since = None  # a resume starts a fresh outage window
        if not self._stop:
            self._set_state("running")

    def _one_turn(self) -> bool:
        """One agent turn and its tool calls. False when the agent has nothing more to do."""
        ctx = self.build_context()
        steering_ids = [s["id"] for s in self.ledger.pending_steering()]
        self._clear_live_reply()
        try:
            turn = self.agent.turn(ctx)
        except (AgentAuthError, AgentConfigError) as exc:
            self._agent_fatal(exc)
            raise
        except AgentUnavailable as exc:
            self._api_unavailable(exc)
            return True
        except AgentRequestError as exc:
            self.ledger.add_turn("system", f"agent error: {exc}")
            self.files.append_transcript()
            self.pause(f"{exc}; fix the cause, then resume")
            return True
        except Exception as exc:  # noqa: BLE001 - the night must not die on one bad turn
            self.ledger.add_turn("system", f"agent error: {type(exc).__name__}: {exc}")
            self.files.append_transcript()
            self.pause(f"the agent failed: {type(exc).__name__}: {exc}")
            return True
        self._api_answered()
        turn_id = self.ledger.add_turn("agent", turn.text, usage=turn.usage)
        self._clear_live_reply()  # the reply is in the ledger now
        self._record_usage(turn.usage)
        failpoint("turn_recorded")
        if steering_ids:
            self.ledger.mark_steering_delivered(steering_ids, turn_id)
        if turn.text:
            self.bus.emit(ev.AGENT_TEXT, text=turn.text)
        outcomes: list[ToolOutcome] = []
        for call in turn.calls:
            failed = next((o for o in outcomes if not o.ok), None)
            # The rest of a reply was planned on the failed call working: a run_trial after a failed
            # edit would spend a whole trial on code the description does not match.
            outcomes.append(self._dispatch(call) if failed is None else self._skip(call, failed))
        self.files.append_transcript()
        self._last_outcomes = outcomes
        if turn.usage is not None:  # a paid model: garbage in a loop burns money
            self._count_malformed([p for p in map(self._malformed, turn.calls) if p])
        if turn.done and not turn.calls:
            self.bus.emit(ev.NOTICE, level="info", message=f"the agent ({self.agent.name}) has nothing more to do")
            return False
        if not turn.calls:
            self._empty_turns += 1
            if self._empty_turns >= MAX_EMPTY_TURNS:
                self.pause(f"the agent made {MAX_EMPTY_TURNS} turns without a tool call")
        else:
            self._empty_turns = 0
        return True

    def _dispatch(self, call: ToolCall) -> ToolOutcome:
        self.bus.emit(ev.TOOL_CALL, tool=call.name, input=call.input)
        if call.problem:  # the model's call could not be read: it gets the reason, nothing runs
            outcome = ToolOutcome(call.name, ok=False, content=f"error: {call.name}: {call.problem}", call_id=call.id)
        else:
            outcome = self.toolbox.dispatch(call)
        self.ledger.add_turn("tool", outcome.content, tool=call.name, input=call.input, refused=outcome.refused)
        self.bus.emit(ev.TOOL_RESULT, tool=call.name, ok=outcome.ok, refused=outcome.refused,
                      content=outcome.content)
        return outcome

    def _skip(self, call: ToolCall, failed: ToolOutcome) -> ToolOutcome:
        content = (f"not run: the earlier {failed.tool} call in this reply did not succeed, and this call may "
                   "depend on it. Deal with that first, then send this call again if it still makes sense.")
        self.ledger.add_turn("tool", content, tool=call.name, input=call.input)
        self.bus.emit(ev.TOOL_RESULT, tool=call.name, ok=False, refused=False, content=content)
        return ToolOutcome(call.name, ok=False, content=content, call_id=call.id)

    # ---- the agent's API: outages, fatal errors, malformed replies, cost ---------------------------------------
    def _reply_piece(self, text: str) -> None:
        """A piece of the reply as it streams in: on the bus for this process, in a file for a UI in another."""
        try:
            with open(self.paths.live_reply, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError:
            pass  # a live preview is a nicety; the reply itself is recorded in the ledger
        self.bus.emit(ev.AGENT_DELTA, text=text)

    def _clear_live_reply(self) -> None:
        try:
            self.paths.live_reply.unlink(missing_ok=True)
        except OSError:
            pass

    def _api_unavailable(self, exc: AgentUnavailable) -> None:
        """The API failed even after the SDK's retries: wait longer and try again; pause after an outage."""
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since, self._outage_attempts = now, 0
            self.ledger.add_turn("system", f"API unavailable: {exc}")
            self.files.append_transcript()
        self._outage_attempts += 1
        elapsed = now - self._outage_since
        window = self.config.outage_s
        if elapsed >= window:
            self.ledger.add_turn("system", f"API outage for {_duration(elapsed)}: the run pauses ({exc})")
            self.files.append_transcript()
            self.pause(f"API outage: {exc}. No answer for {_duration(elapsed)}; the run resumes by itself when "
                       f"the API answers again (checked every {_duration(self.config.probe_every_s)}), or with "
                       "`control resume`")
            self._outage_paused = True
            return
        wait = min(max(exc.retry_after or 0.0, OUTAGE_BACKOFF_S * 2 ** (self._outage_attempts - 1)),
                   OUTAGE_BACKOFF_MAX_S, window - elapsed)
        self.bus.emit(ev.NOTICE, level="warning", message=(
            f"{exc}; trying again in {wait:.0f} s (the run pauses after {_duration(window)} without an answer)"))
        self._set_state("running", f"waiting for the API: {exc}")
        self._sleep(wait)

    def _api_answered(self) -> None:
        if self._outage_since is None:
            return
        message = f"the API answers again after {_duration(time.monotonic() - self._outage_since)}"
        self._outage_since = None
        self.ledger.add_turn("system", message)
        self.bus.emit(ev.NOTICE, level="info", message=message)
        self._set_state("running")

    def _probe_api(self) -> None:
        """While paused by an outage: one cheap request; resume the run if the API answers."""
        probe = getattr(self.agent, "probe", None)
        if probe is None:
            return
        try:
            usage = probe()
        except AgentUnavailable:
            return
        except (AgentAuthError, AgentConfigError) as exc:
            self.pause(f"the API answers again but refuses the run: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a failed probe only means: not yet
            self.bus.emit(ev.NOTICE, level="warning", message=f"API probe failed: {type(exc).__name__}: {exc}")
            return
        self.ledger.add_turn("system", "API probe answered: the outage is over, resuming", usage=usage)
        self.files.append_transcript()
        self._record_usage(usage)
        self.bus.emit(ev.NOTICE, level="info", message="the API answers again: resuming the run")
        self.resume()

    def _agent_fatal(self, exc: Exception) -> None:
        """A key or setting the person must fix: record it, say it, and let the run stop."""
        self._end_detail = str(exc)
        self.ledger.add_turn("system", f"agent error: {exc}")
        self.files.append_transcript()
        self.bus.emit(ev.NOTICE, level="error", message=str(exc))

    def _sleep(self, seconds: float) -> None:
        """Wait, but wake at once for a stop or a pause."""
        deadline = time.monotonic() + seconds
        with self._control:
            while not self._stop and not self._paused:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._control.wait(timeout=min(left, COMMAND_POLL_S))

    @staticmethod
    def _malformed(call: ToolCall) -> str | None:
        if call.problem:
            return f"{call.name}: {call.problem}"
        if call.name not in TOOL_NAMES:
            return f"unknown tool {call.name!r}"
        return validate_input(call.name, call.input)

    def _count_malformed(self, problems: list[str]) -> None:
        if not problems:
            self._malformed_turns = 0
            return
        self._malformed_turns += 1
        if self._malformed_turns >= MAX_MALFORMED_TURNS:
            self._malformed_turns = 0
            last = problems[0] if len(problems[0]) <= 200 else problems[0][:197] + "..."
            self.pause(f"the agent sent {MAX_MALFORMED_TURNS} malformed replies in a row (last: {last}); paused "
                       "rather than paying for more: check the model (--model), then resume")

    def _spend_so_far(self) -> UsageTotals:
        totals = UsageTotals()
        for turn in self.ledger.turns():
            totals.add(turn.get("usage"))
        return totals

    def _record_usage(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self.spend.add(usage)
        self.bus.emit(ev.USAGE, usage=usage, totals=self.spend.as_dict())

    def _check_cost_limit_is_enforceable(self) -> None:
        if self.config.max_cost is not None and not getattr(self.agent, "prices_known", True):
            model = getattr(self.agent, "model", self.config.model)
            raise SupervisorError(
                f"--max-cost needs the price of model {model!r}, which is not in the price table (as of "
                f"{PRICES_AS_OF}): give it with --price IN,OUT in dollars per million tokens, e.g. --price 3,15")

    def _cost_limit_reached(self) -> bool:
        limit = self.config.max_cost
        if limit is None or self.spend.cost_usd < limit:
            return False
        self._end_detail = (f"the cost limit is reached: ${self.spend.cost_usd:.2f} spent of --max-cost "
                            f"${limit:.2f}; continue with --resume and a higher --max-cost")
        self.ledger.add_turn("system", self._end_detail)
        self.files.append_transcript()
        self.bus.emit(ev.NOTICE, level="warning", message=self._end_detail)
        return True

    # ---- context for the agent ------------------------------------------------------------------------------
    def build_context(self) -> TurnContext:
        kind, message = self.obligation()
        pending = None
        if kind == "journal":
            t = self.ledger.trials_missing_journal()[0]
            pending = self._trial_dict(t)
        best = self.ledger.best_keep()
        journal = self.ledger.journal_entries()[-5:]
        reflections = self.ledger.reflections()
        program_path = self.config.source_dir / self.config.layout.program
        if not program_path.is_file():
            program_path = self.workspace.root / self.config.layout.program
        program = program_path.read_text(encoding="utf-8") if program_path.is_file() else ""
        return TurnContext(
            program=program,
            editable=self.editable,
            train_py=self.workspace.editable_path.read_text(encoding="utf-8"),
            results_table=self.results_table(last=40),
            results=[self._trial_dict(t) for t in self.ledger.finished_trials()],
            recent_journal=journal,
            latest_reflection=reflections[-1] if reflections else None,
            plans=self.ledger.plans(),
            steering=[s["message"] for s in self.ledger.pending_steering()],
            last_outcomes=list(self._last_outcomes),
            obligation=kind,
            obligation_message=message,
            pending_trial=pending,
            trials_done=self.trials_done(),
            max_trials=self.config.max_trials,
            budget_s=self.config.budget_s,
            policy=self.config.policy,
            noise_floor=self.noise_floor(),
            best=self._trial_dict(best) if best else None,
            profile=self._cache_profile(),
            tools=TOOL_SCHEMAS,
            stopped=[self._trial_dict(t) for t in self.ledger.trials(["aborted"])
                     if t.kind == "trial" and t.crash_reason == "stopped by the person"],
        )

    def _cache_profile(self) -> str | None:
        manifest = Path(self.config.cache_dir) / "manifest.json"
        try:
            return json.loads(manifest.read_text()).get("profile")
        except (OSError, ValueError):
            return None

    @staticmethod
    def _trial_dict(t: Trial) -> dict[str, Any]:
        return {
            "id": t.id, "status": t.status, "commit": t.short_commit, "parent_trial": t.parent_trial, "description": t.description,
            "category": t.category, "val_bpb": t.val_bpb, "parent_val_bpb": t.parent_val_bpb, "delta": t.delta,
            "flagged": t.flagged, "decision": t.decision, "crash_reason": t.crash_reason,
            "num_steps": t.num_steps, "tokens_per_s": t.tokens_per_s, "mfu_percent": t.mfu_percent,
            "peak_vram_mb": t.peak_vram_mb, "training_seconds": t.training_seconds, "log_tail": t.log_tail[-1500:],
        }

    def results_table(self, last: int | None = None, status: str | None = None) -> str:
        trials = self.ledger.finished_trials()
        if status:
            trials = [t for t in trials if t.status == status]
        if last:
            trials = trials[-last:]
        if not trials:
            return "(no finished trials yet)"
        floor = self.noise_floor()
        lines = [f"noise floor: {_fmt(floor) if floor is not None else 'not measured'}; policy: {self.config.policy}",
                 "id  status   val_bpb   delta     flag  steps  MFU%   VRAM_MB  description"]
        for t in trials:
            lines.append(
                f"{t.id:<3} {t.status:<8} {_fmt(t.val_bpb):<9} "
                f"{(f'{t.delta:+.5f}' if t.delta is not None else ''):<9} {'FLAG' if t.flagged else '':<5} "
                f"{t.num_steps if t.num_steps is not None else '':<6} "
                f"{(f'{t.mfu_percent:.1f}' if t.mfu_percent is not None else ''):<6} "
                f"{(f'{t.peak_vram_mb:.0f}' if t.peak_vram_mb is not None else ''):<8} {t.description}"
            )
        return "\n".join(lines)

    # ---- trials ----------------------------------------------------------------------------------------------
    def _spec(self, out_dir: Path, seed: int, create: bool = True) -> TrialSpec:
        if create:
            out_dir.mkdir(parents=True, exist_ok=True)
        return TrialSpec(
            command=list(self.config.layout.command),
            cwd=self.workspace.root,
            log_path=out_dir / "log.txt",
            metrics_path=out_dir / "metrics.jsonl",
            eval_record_path=out_dir / "eval.json",
            budget_s=self.config.budget_s,
            grace_s=self.config.effective_grace_s,
            seed=seed,
            extra_env={"AUTORESEARCH_CACHE": str(self.config.cache_dir),
                       "AUTORESEARCH_DEVICE": self.config.device,
                       # A compile cache of the run's own (surviving reboots, unlike /tmp): a trial whose
                       # graphs did not change loads its kernels instead of recompiling them.
                       "TORCHINDUCTOR_CACHE_DIR": str(self.config.run_dir / "compile-cache" / "inductor"),
                       "TRITON_CACHE_DIR": str(self.config.run_dir / "compile-cache" / "triton")},
            memory_limit_mb=self._memory_limit_mb(),
        )

    def _memory_limit_mb(self) -> int | None:
        """The person's cap, else on a CPU-only machine 80% of RAM, so a runaway trial dies alone.

        No default cap with a GPU: RLIMIT_AS caps virtual memory, and CUDA reserves far more of it than it uses.
        """
        if self.config.memory_limit_mb is not None:
            return self.config.memory_limit_mb or None  # 0 turns the cap off
        if self._platform.get("accelerator", "cpu") != "cpu" or self.config.device not in ("auto", "cpu"):
            return None
        try:
            pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
        return int(pages * page_size * 0.8 / 2**20)

    def _eval_data_changed(self) -> list[str]:
        """Evaluation inputs in the cache that differ from their fingerprint at the start of the run."""
        expected = self.ledger.get_meta("eval_fingerprint")
        return fingerprint_changes(expected, self.config.cache_dir) if expected else []

    def _harness_ok(self) -> bool:
        return self.workspace.harness_hash() == self._harness_hash

    def run_trial(self, description: str, category: str | None, plan_id: int | None) -> ToolOutcome:
        """Commit, run, decide, record. Called by the run_trial tool."""
        ws = self.workspace
        if not self._harness_ok():
            ws.restore_harness()
            return ToolOutcome("run_trial", ok=False, refused=True, content=(
                f"refused: the harness ({', '.join(self.config.layout.harness)}) was changed. It is read-only and "
                "has been restored. Only the training script may change; make your change there."))
        changed = self._eval_data_changed()
        if changed:
            return ToolOutcome("run_trial", ok=False, refused=True, content=(
                f"refused: the validation data changed since the run began ({', '.join(changed)} in "
                f"{self.config.cache_dir}). The person must look at this; no trial runs until the cache is "
                "restored (`autoresearch prepare` repairs it)."))
        untracked = set(ws.repo.untracked_files)
        stray = [p for p in ws.dirty_paths() if p != self.editable and p not in untracked]
        if stray:  # only the editable file may differ from the last keep
            ws.repo.git.checkout("HEAD", "--", *stray)
        best = self.ledger.best_keep()
        parent_commit = ws.head()
        diff = ws.working_diff()
        failpoint("before_commit")
        commit = ws.commit_trial(f"trial: {description}")
        failpoint("after_commit")
        trial_id = self.ledger.start_trial(
            commit_sha=commit, parent_commit=parent_commit, parent_trial=best.id if best else None,
            description=description, category=category, plan_id=plan_id, diff=diff,
            budget_s=self.config.budget_s, platform=self._platform, seed=PRIMARY_SEED,
        )
        failpoint("trial_started")
        self._trial_stop.clear()
        self._set_state("trial", f"trial {trial_id}: {description}")
        self.bus.emit(ev.TRIAL_STARTED, trial_id=trial_id, commit=commit, parent=parent_commit,
                      description=description, budget_s=self.config.budget_s, seed=PRIMARY_SEED,
                      parent_trial=best.id if best else None)
        outcome = self._execute(trial_id, self.paths.trial_dir(trial_id), PRIMARY_SEED, live=True)
        harness_intact = self._harness_ok()
        if not harness_intact:
            ws.restore_harness()
        eval_changed = self._eval_data_changed()
        suspicions = scan_diff(diff)
        if not harness_intact:
            suspicions.append("harness: the trial changed the read-only harness while it ran")
        if eval_changed:
            suspicions.append(f"validation data: the trial changed {', '.join(eval_changed)} while it ran")

        if outcome.stopped and not self._stop:
            self.ledger.finish_trial(trial_id, status="aborted", crash_reason="stopped by the person",
                                     log_tail=outcome.log_tail, wall_seconds=outcome.wall_seconds)
            ws.reset_to(parent_commit)
            self._set_state("running")
            self.bus.emit(ev.TRIAL_FINISHED, trial_id=trial_id, status="aborted", val_bpb=None, delta=None,
                          flagged=False, decision="stopped by the person")
            return ToolOutcome("run_trial", ok=False, content=(
                f"trial {trial_id} was stopped by the person and is not counted; the change was reverted "
                f"(its diff stays in the ledger)."))
        if outcome.stopped:  # the whole run is stopping: leave it for --resume to mark aborted
            self.ledger.finish_trial(trial_id, status="aborted", crash_reason="the run was stopped",
                                     log_tail=outcome.log_tail)
            ws.reset_to(parent_commit)
            return ToolOutcome("run_trial", ok=False, content="the run was stopped during the trial")

        fields = self._outcome_fields(outcome)
        parent_values = best.all_values if best else []
        parent_mean = best.mean_val_bpb if best else None
        if not harness_intact or eval_changed:
            what = "the harness" if not harness_intact else "the validation data"
            status, flagged, decision = "crash", False, f"{what} changed during the trial: result not trusted"
            fields["crash_reason"] = decision
        elif outcome.status != "ok" or outcome.val_bpb is None:
            status, flagged, decision = "crash", False, f"crashed: {outcome.reason}"
            fields["crash_reason"] = outcome.reason
        else:
            status, flagged, decision = self._decide(trial_id, parent_values, outcome.val_bpb)
        val = fields.get("val_bpb")
        delta = None if (val is None or parent_mean is None or status == "crash") else val - parent_mean
        self.ledger.finish_trial(
            trial_id, status=status, flagged=flagged, decision=decision, parent_val_bpb=parent_mean, delta=delta,
            suspicions=suspicions, **fields,
        )
        failpoint("trial_recorded")
        if status != "keep":
            ws.reset_to(parent_commit)
        failpoint("branch_reset")
        self._after_trial(trial_id)
        self.files.render()
        trial = self.ledger.trial(trial_id)
        assert trial is not None
        self._set_state("running")
        self.bus.emit(ev.TRIAL_FINISHED, trial_id=trial_id, status=status, val_bpb=trial.val_bpb, delta=delta,
                      flagged=flagged, decision=decision)
        return ToolOutcome("run_trial", ok=status != "crash", content=self._trial_report(trial, best))

    def _execute(self, trial_id: int | None, out_dir: Path, seed: int, live: bool) -> TrialOutcome:
        """Run the trainer once; stream metrics to the bus and (for the primary run) to the ledger."""
        buffer: list[dict[str, Any]] = []
        state = {"seq": 0, "flushed": time.monotonic()}

        def on_metric(metric: dict[str, Any]) -> None:
            if not live or trial_id is None:
                return
            buffer.append(metric)
            self.bus.emit(ev.METRIC, trial_id=trial_id, metric=metric)
            if time.monotonic() - state["flushed"] >= METRIC_FLUSH_S:
                flush()

        def flush() -> None:
            if buffer and trial_id is not None:
                rows = list(buffer)
                buffer.clear()
                self.ledger.add_metrics(trial_id, state["seq"], rows)
                state["seq"] += len(rows)
                failpoint("metrics_flushed")
            state["flushed"] = time.monotonic()

        def on_start(pid: int) -> None:
            if trial_id is not None and live:
                self.ledger.set_trial_pid(trial_id, pid)

        outcome = self._runner(self._spec(out_dir, seed), on_metric=on_metric, stop_event=self._trial_stop,
                               on_start=on_start, warm_start=self._warm)
        flush()
        if "compiled" in outcome.summary:
            self._last_compiled = outcome.summary["compiled"].strip().lower() == "true"
        self._warm_next_trial()
        return outcome

    def _warm_next_trial(self) -> None:
        """Start the next trial's interpreter now, so its imports overlap the agent's turns, not training."""
        if self._warm is not None and not self._stop:
            self._warm.prepare(self._spec(self.paths.run_dir / "trials", PRIMARY_SEED, create=False),
                               also=COMPILE_MODULES if self._last_compiled else ())

    @staticmethod
    def _outcome_fields(outcome: TrialOutcome) -> dict[str, Any]:
        s = outcome.summary

        def num(key: str) -> float | None:
            return summary_float(s, key)

        steps = num("num_steps")
        return {
            "val_bpb": outcome.val_bpb if outcome.status == "ok" else None,
            "summary": s,
            "log_tail": outcome.log_tail,
            "wall_seconds": outcome.wall_seconds,
            "training_seconds": num("training_seconds"),
            "num_steps": int(steps) if steps is not None else None,
            "tokens_per_s": num("tokens_per_s"),
            "mfu_percent": num("mfu_percent"),
            "peak_vram_mb": num("peak_vram_mb"),
            "num_params_m": num("num_params_M"),
        }

    def _decide(self, trial_id: int, parent_values: list[float], value: float) -> tuple[str, bool, str]:
        policy = self.policy()
        sd = self.noise_sd()
        values = [value]
        decision = policy.decide(parent_values, values, sd)
        if decision.verdict is Verdict.RETEST:
            self.bus.emit(ev.NOTICE, level="info", message=f"trial {trial_id}: {decision.reason}")
            for i in range(decision.seeds_needed):
                if self._trial_stop.is_set():
                    break
                seed = CONFIRM_SEED_BASE + trial_id * 10 + i
                rerun = self._execute(trial_id, self.paths.trial_dir(trial_id, i + 1), seed, live=False)
                if rerun.status != "ok" or rerun.val_bpb is None:
                    return "discard", False, (f"{decision.reason}; a confirmation run with seed {seed} crashed "
                                              f"({rerun.reason}): discarded")
                self.ledger.add_extra_value(trial_id, rerun.val_bpb)
                values.append(rerun.val_bpb)
            decision = policy.decide(parent_values, values, sd)
            if decision.verdict is Verdict.RETEST:  # a stop cut the re-runs short: do not keep on one run
                return "discard", False, "confirmation re-runs were interrupted: discarded"
        status = "keep" if decision.verdict is Verdict.KEEP else "discard"
        return status, decision.flagged, decision.reason

    def _after_trial(self, trial_id: int) -> None:
        """Reflection triggers that this trial may have set off."""
        cfg = self.config
        trials = [t for t in self.ledger.finished_trials() if t.kind == "trial"]
        n = len(trials)
        if n and n % cfg.reflect_every == 0:
            self.ledger.add_trigger("checkpoint", f"{n} trials done (a reflection every {cfg.reflect_every})")
        # A streak triggers when it reaches K, 2K, ...: once per K trials, whatever came between.
        no_keep = _streak(trials, lambda t: t.status != "keep")
        if no_keep and no_keep % cfg.plateau_trials == 0:
            self.ledger.add_trigger("plateau", f"{no_keep} trials in a row without a keep")
        crashes = _streak(trials, lambda t: t.status == "crash")
        if crashes and crashes % cfg.crash_streak == 0:
            self.ledger.add_trigger("crashes", f"{crashes} crashes in a row")

    def _trial_report(self, t: Trial, parent: Trial | None) -> str:
        lines = [f"trial {t.id} finished: {t.status.upper()}{' (FLAGGED)' if t.flagged else ''}",
                 f"decision: {t.decision}"]
        if t.status == "crash":
            lines.append(f"log tail:\n{t.log_tail[-2000:]}")
        else:
            lines.append(self._result_text(t, parent))
        lines.append("Now write the journal entry for this trial with write_journal.")
        return "\n".join(lines)

    def _result_text(self, t: Trial, parent: Trial | None) -> str:
        """The numbers of a trial with their deltas to the parent; the journal's 'result' field."""
        p = parent
        if t.status == "crash":
            return f"crash: {t.crash_reason}"
        parts = [f"val_bpb {_fmt(t.val_bpb)}"]
        if p is not None and t.parent_val_bpb is not None and t.val_bpb is not None:
            parts[0] += f" vs parent {_fmt(t.parent_val_bpb)} (delta {t.val_bpb - t.parent_val_bpb:+.6f})"
        floor = self.noise_floor()
        parts.append(f"noise floor {_fmt(floor)}" if floor is not None else "noise floor not measured")
        if len(t.extra_values):
            parts.append(f"confirmation runs {', '.join(_fmt(v) for v in t.extra_values)}")
        parts.append(f"steps {t.num_steps if t.num_steps is not None else 'n/a'}"
                     + (_delta(t.num_steps, p.num_steps) if p else ""))
        parts.append(f"tokens/s {t.tokens_per_s:,.0f}" + (_delta(t.tokens_per_s, p.tokens_per_s, pct=True) if p else "")
                     if t.tokens_per_s is not None else "tokens/s n/a")
        parts.append(f"MFU {t.mfu_percent:.1f}%" + (_delta(t.mfu_percent, p.mfu_percent, 1) if p else "")
                     if t.mfu_percent is not None else "MFU n/a")
        parts.append(f"peak VRAM {t.peak_vram_mb:.0f} MB" + (_delta(t.peak_vram_mb, p.peak_vram_mb) if p else "")
                     if t.peak_vram_mb is not None else "peak VRAM n/a")
        parts.append(f"budget {t.budget_s:g}s" if t.budget_s else "")
        return "; ".join(x for x in parts if x)

    # ---- journal and reflection -------------------------------------------------------------------------------
    def write_journal(self, fields: dict[str, str]) -> ToolOutcome:
        missing = self.ledger.trials_missing_journal()
        if not missing:
            return ToolOutcome("write_journal", ok=False, content="error: no trial is waiting for a journal entry")
        trial = missing[0]
        entries = self.ledger.journal_entries()
        problems = entry_problems(fields, JOURNAL_FIELDS, entries[-1] if entries else None)
        if problems:
            return ToolOutcome("write_journal", ok=False, refused=True, content=(
                f"refused: the journal entry for trial {trial.id} is not acceptable: {'; '.join(problems)}. "
                "Write each field as real sentences about this trial."))
        parent = self.ledger.trial(trial.parent_trial) if trial.parent_trial else None
        result = f"{trial.status}{' (flagged)' if trial.flagged else ''}. {self._result_text(trial, parent)}. " \
                 f"Decision: {trial.decision}"
        self.ledger.add_journal(trial.id, result=result, **{k: " ".join(fields[k].split()) for k in JOURNAL_FIELDS})
        failpoint("journal_recorded")
        self.files.render()
        self.bus.emit(ev.JOURNAL, trial_id=trial.id)
        kind, message = self.obligation()
        follow = f" Next: {message}" if kind else ""
        return ToolOutcome("write_journal", ok=True, content=f"journal entry for trial {trial.id} recorded.{follow}")

    def write_reflection(self, fields: dict[str, str]) -> ToolOutcome:
        previous = self.ledger.reflections()
        problems = entry_problems(fields, REFLECTION_FIELDS, previous[-1] if previous else None)
        if problems:
            return ToolOutcome("write_reflection", ok=False, refused=True, content=(
                f"refused: the reflection is not acceptable: {'; '.join(problems)}. Look at the whole run "
                "(get_results is available after the reflection; the table is in your context)."))
        finished = self.ledger.finished_trials()
        rid = self.ledger.add_reflection(after_trial=finished[-1].id if finished else None,
                                         **{k: fields[k].strip() for k in REFLECTION_FIELDS})
        failpoint("reflection_recorded")
        self.files.render()
        self.bus.emit(ev.REFLECTION, reflection_id=rid)
        return ToolOutcome("write_reflection", ok=True, content=f"reflection {rid} recorded.")

    # ---- the noise floor ----------------------------------------------------------------------------------------
    def measure_noise(self, repeats: int) -> NoiseMeasurement:
        """Re-run the current best with `repeats` new seeds and store the spread."""
        if repeats < 2:
            raise ConfigError("measuring the noise floor needs at least 2 repeats")
        ws = self.workspace
        ws.reset_to(self._branch_target())
        commit = ws.head()
        self._set_state("noise", f"measuring the noise floor: {repeats} seeds of {commit[:7]}")
        values: list[float] = []
        self._trial_stop.clear()
        # New seeds for every measurement, so re-measuring the same commit is a new sample.
        previous = len(self.ledger._query("SELECT id FROM noise"))  # noqa: SLF001
        progress: dict[str, Any] = {"commit": commit, "repeats": repeats, "budget_s": self.config.budget_s,
                                    "seeds": []}
        self._write_noise_progress(progress)  # replaces an earlier measurement's at once
        for i in range(repeats):
            if self._stop or self._trial_stop.is_set():
                break
            seed = NOISE_SEED_BASE + 100 * previous + i
            self.bus.emit(ev.NOTICE, level="info", message=f"noise run {i + 1}/{repeats} (seed {seed})")
            out_dir = self.paths.noise_dir(i)
            progress["seeds"].append({"index": i + 1, "seed": seed, "status": "running", "started": time.time(),
                                      "dir": out_dir.relative_to(self.paths.run_dir).as_posix()})
            self._write_noise_progress(progress)
            outcome = self._execute(None, out_dir, seed, live=False)
            ok = outcome.status == "ok" and outcome.val_bpb is not None
            steps = summary_float(outcome.summary, "num_steps")
            progress["seeds"][-1].update(status="ok" if ok else "stopped" if outcome.stopped else "crash",
                                         val_bpb=outcome.val_bpb if ok else None,
                                         num_steps=int(steps) if steps is not None else None)
            self._write_noise_progress(progress)
            if ok:
                values.append(outcome.val_bpb)
            else:
                self.bus.emit(ev.NOTICE, level="warning", message=f"noise run {i + 1} crashed: {outcome.reason}")
        platform = f"{self._platform.get('gpu', 'unknown')}, torch {self._platform.get('torch', '?')}"
        noise = NoiseMeasurement(values, self.config.budget_s, platform)
        interrupted = self._stop or self._trial_stop.is_set()
        if interrupted:
            self.bus.emit(ev.NOTICE, level="warning", message="noise measurement interrupted: nothing stored")
        elif noise.n >= 2:
            self.ledger.add_noise(commit_sha=commit, budget_s=self.config.budget_s, platform=platform,
                                  values=values, sd=noise.sd, factor=self.config.floor_factor)
            if self.ledger.finished_trials():
                self.ledger.add_trigger("noise", noise.describe(self.config.floor_factor))
            self.files.render()
        self.bus.emit(ev.NOISE, values=values, sd=noise.sd, floor=noise.floor(self.config.floor_factor))
        self._set_state("running")
        return noise

    def _write_noise_progress(self, progress: dict[str, Any]) -> None:
        try:
            atomic_write(self.paths.noise_progress, json.dumps(progress))
        except OSError:
            pass  # only the UI's view of the measurement: a full disk must not stop it

    # ---- closing ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._warm is not None:
            self._warm.discard()
        try:
            self.files.render_all()
        except OSError as exc:
            print(f"warning: could not write the journal files: {exc}", file=sys.stderr)
        try:
            self.agent.close()
        finally:
            self.ledger.close()
            self._lock.release()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def storage_failure_message(exc: BaseException, run_dir: Path) -> str:
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    full = full or "full" in str(exc).lower()
    try:
        free = f"{shutil.disk_usage(run_dir).free / 2**30:.1f} GiB free there now"
    except OSError:
        free = "free space unknown"
    what = "the disk is full" if full else f"writing the run's files failed ({exc}; {free})"
    return (f"{what}; the run stopped. Every finished trial and journal entry is safe in {run_dir}. "
            f"Free some space, then continue with `autoresearch run --resume --tag {run_dir.name}`.")


def _streak(trials: list[Trial], predicate: Callable[[Trial], bool]) -> int:
    """How many of the last trials in a row satisfy `predicate`."""
    n = 0
    for t in reversed(trials):
        if not predicate(t):
            break
        n += 1
    return n


def kill_orphan_trial(pid: int, command: list[str]) -> bool:
    """Kill the process group of a trial left running by a supervisor that died (SIGKILL, power cut).

    Only if that process still looks like our trial (its command line holds the trial's command), so a
    recycled pid is never hit.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if not command or command[-1] not in cmdline:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def open_ledger(config: RunConfig) -> Ledger:
    """A run's ledger for reading (status, review) or for sending commands, without taking the lock."""
    path = RunPaths(config.run_dir).ledger
    try:
        return Ledger(path)
    except LedgerError:
        raise


AgentFactory = Callable[[RunConfig], Agent]
__all__ = ["Supervisor", "SupervisorError", "RunPaths", "open_ledger", "COMMANDS", "AgentTurn"]
