"""The supervised research loop: propose -> trial -> record -> journal -> (reflect), and again.

A small agent loop: `run()` takes one `step()` after another until the trial budget is spent, the agent is
done, or a stop. A step builds the agent's context fresh from the ledger, asks the agent for a turn and
runs its tool calls. What must happen next is derived from the ledger, never from memory: a finished trial
without a journal entry means "journal", an open reflection trigger means "reflection". So a supervisor
killed at any moment and started again with --resume picks up exactly where it was.

Collaborators do the rest: the TrialExecutor (executor.py) commits, runs, decides and records trials and
is the only one touching git; the ToolBox (tools.py) holds every tool's handler; ApiHealth (api_health.py)
holds the outage, malformed-reply and cost-limit rules; every text the agent reads is in core/prompts.py.

Controls (pause, resume, stop the current trial, steer, stop) are plain methods, safe from any thread;
another process sends the same commands through the ledger's `commands` table.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.agents.base import (
    Agent,
    AgentAuthError,
    AgentConfigError,
    AgentRequestError,
    AgentUnavailable,
    ToolCall,
    ToolOutcome,
    TurnContext,
)
from supervisor.core import commands, prompts
from supervisor.core import events as ev
from supervisor.core.config import RunConfig, resolve_spend_limits
from supervisor.core.errors import UserError
from supervisor.core.failpoints import failpoint
from supervisor.core.paths import RunPaths
from supervisor.core.policy import NoiseMeasurement
from supervisor.core.pricing import PRICES_AS_OF, UsageTotals
from supervisor.core.transfer import DEFAULT_TRANSFER_SEEDS, Scale, TransferResult
from supervisor.core.types import RunState
from supervisor.run.api_health import ApiHealth
from supervisor.run.context import turn_context
from supervisor.run.executor import TrialExecutor
from supervisor.run.noise import measure_noise
from supervisor.run.runaway import RunawayGuard
from supervisor.run.tools import ToolBox, call_problem, obligation
from supervisor.run.transfer import (
    TransferCheck,
    TransferPlan,
    abort_left_running,
    plan_transfer,
    result_lines,
)
from supervisor.store.journal_files import JournalFiles
from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock
from supervisor.trial.runner import TrialOutcome, run_trial
from supervisor.trial.warm_start import WarmStarter
from supervisor.trial.workspace import WorkspaceError

COMMAND_POLL_S = 0.5


STOPPING_DETAIL = "stopping: the run stops when the agent's reply arrives (nothing in it will run)"


class SupervisorError(UserError, RuntimeError):
    """The run cannot start or go on; the message says what the person should do."""


class Supervisor:
    """One run: owns the lock, the ledger and the loop; the executor, the tools and the API's health help."""

    def __init__(self, config: RunConfig, agent: Agent, *, resume: bool = False,
                 bus: ev.EventBus | None = None, runner: Callable[..., TrialOutcome] = run_trial) -> None:
        self.config = config
        self.agent = agent
        self.bus = bus or ev.EventBus()
        self.paths = RunPaths(config.run_dir)
        self._runner = runner
        self._warm = WarmStarter(self.paths.trials) if config.warm_start else None
        self._lock = RunLock(self.paths.lock)
        self._control = threading.Condition()
        self._paused = False
        self._pause_reason = ""
        self._stop = False
        self._last_outcomes: list[ToolOutcome] = []
        self._end_detail = ""
        self._state = RunState.NEW
        self._closed = False
        self._lock.acquire(config.tag)
        try:
            self._open(resume)
        except BaseException:
            self._lock.release()
            raise
        self.toolbox = ToolBox(self.ledger, self.files, self.bus, self.executor)
        self.health = ApiHealth(self, outage_s=config.outage_s, probe_every_s=config.probe_every_s,
                                max_cost=config.max_cost, spend=self._spend_so_far(), sleep=self._sleep)
        self.runaway = RunawayGuard(config.stall_replies, config.repeat_limit)
        self._loop_thread: threading.Thread | None = None  # the thread in run(), once it runs
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
        if not resume:  # at once: another process that finds the ledger finds the run in it
            self.ledger.init_run(cfg.tag, cfg.to_json())
        self.files = JournalFiles(self.ledger, cfg.run_dir)
        self.executor = TrialExecutor(cfg, self.ledger, self.files, self.bus, set_state=self._set_state,
                                      run_stopping=lambda: self._stop, runner=self._runner, warm=self._warm)
        if not resume:
            try:
                self.executor.create_workspace()
            except WorkspaceError as exc:
                self._forget_unborn_run()
                raise SupervisorError(str(exc)) from exc
            self.ledger.set_state(RunState.READY, pid=os.getpid())
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
        if row.state == RunState.IMPORTED:
            raise SupervisorError(
                f"run {self.config.tag!r} was imported from an upstream results.tsv: it has no workspace to "
                "continue. Its graveyard, report and status work as for any run; start a new run with "
                "another --tag (or --upstream REPO to drive that checkout).")
        stored = RunConfig.from_json(row.config)
        old_budget = stored.budget_s
        # The person may change settings on resume; identity (tag, paths, layout) comes from the ledger.
        self.config.layout = stored.layout
        self.config.upstream_repo = stored.upstream_repo
        self.config.source_dir = stored.source_dir
        self.ledger.update_config(self.config.to_json())
        try:
            self.executor.open_workspace()
        except WorkspaceError as exc:
            raise SupervisorError(f"cannot resume: {exc}") from exc
        for trial_id in self.executor.abort_interrupted():
            self.bus.emit(ev.NOTICE, level="warning",
                          message=f"trial {trial_id} was interrupted by a supervisor stop; recorded as aborted")
        for run_id in abort_left_running(self.ledger, self.config.layout.command):
            self.bus.emit(ev.NOTICE, level="warning",
                          message=f"transfer run {run_id} was interrupted by a supervisor stop; recorded as aborted")
        self.executor.restore_branch()
        for trial_id in self.executor.score_missing_audits():  # a stop came between a keep and its audit score
            self.bus.emit(ev.NOTICE, level="info", message=f"keep {trial_id}: scored on the audit split on resume")
        if abs(old_budget - self.config.budget_s) > 1e-9 and self.ledger.finished_trials():
            self.ledger.add_trigger("budget change", f"the budget changed from {old_budget:g}s to "
                                                     f"{self.config.budget_s:g}s; results compare only within one budget")
        if stored.budget_tokens != self.config.budget_tokens and self.ledger.finished_trials():
            old_tokens = stored.budget_tokens or "none"
            self.ledger.add_trigger("budget change", f"the token budget changed from {old_tokens} to "
                                    f"{self.config.budget_tokens}; results compare only within one budget")
        stale = self.ledger.take_commands()  # addressed to a supervisor that is gone; steering is kept apart
        if stale:
            self.bus.emit(ev.NOTICE, level="info", message=f"ignored {len(stale)} control command(s) sent while "
                                                            "no supervisor was running")
        where = self._where_resumed()
        self.ledger.set_state(RunState.READY, f"resumed: {where}", pid=os.getpid())
        self.bus.emit(ev.NOTICE, level="info", message=f"resumed run {self.config.tag}: {where}")

    def _where_resumed(self) -> str:
        """Where the night stands: trials done, the last one, the best keep, the branch head, what is owed."""
        trials = self.ledger.finished_trials()
        best = self.ledger.best_keep()
        kind, _ = obligation(self.ledger)
        parts = [f"{len(trials)} trial(s) done" + (f" of {self.config.max_trials}" if self.config.max_trials else "")]
        if trials:
            last = trials[-1]
            parts.append(f"last trial {last.id} ({last.status}: {_storable(last.description, 80)})")
        if best is not None:
            parts.append(f"best trial {best.id} at val_bpb {best.val_bpb:.6f}" if best.val_bpb is not None
                         else f"best trial {best.id}")
        parts.append(f"branch at {self.executor.workspace.head()[:7]}")
        if kind:
            parts.append(f"the agent owes a {kind} first")
        return "; ".join(parts)

    # ---- controls (thread-safe; the TUI, tests and other processes use these) ------------------------------
    def pause(self, reason: str = "paused by the person") -> None:
        with self._control:
            self._paused = True
            self._pause_reason = reason
            self.health.paused_by_someone()
            self._control.notify_all()
        self.bus.emit(ev.NOTICE, level="info", message=f"pause requested: {reason} (takes effect at the next safe point)")

    def resume(self) -> None:
        with self._control:
            self._paused = False
            self._pause_reason = ""
            self._control.notify_all()

    def stop_trial(self) -> None:
        self.executor.trial_stop.set()

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
        self.executor.trial_stop.set()
        # A reply is on its way: say that the stop is heard. Not from the loop's own thread (a signal handler), which
        # may have interrupted that thread's ledger transaction; Ctrl+C prints its own line.
        if self.state == RunState.RUNNING and threading.current_thread() is not self._loop_thread:
            try:
                self.ledger.set_state(RunState.RUNNING, STOPPING_DETAIL)
            except (OSError, sqlite3.Error):
                pass  # the stop itself stands; only its display is lost
            self.bus.emit(ev.STATE, state=RunState.RUNNING, detail=STOPPING_DETAIL)

    def handle_command(self, command: str, arg: str = "") -> None:
        handlers: dict[str, Callable[[], None]] = {
            commands.PAUSE: lambda: self.pause(arg or "paused by the person"),
            commands.RESUME: self.resume,
            commands.STOP_TRIAL: self.stop_trial,
            commands.STEER: lambda: self.steer(arg),
            commands.STOP: self.stop,
        }
        handler = handlers.get(command)
        if handler is not None:
            handler()

    def _command_thread(self) -> None:
        while not self._closed:
            try:
                for cmd in self.ledger.take_commands():
                    self.handle_command(cmd.command, cmd.arg)
            except Exception:  # a busy ledger must not kill the control channel
                pass
            time.sleep(COMMAND_POLL_S)

    # ---- state --------------------------------------------------------------------------------------------
    def _set_state(self, state: RunState, detail: str = "") -> None:
        self._state = state
        self.ledger.set_state(state, detail)
        self.bus.emit(ev.STATE, state=state, detail=detail)

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def workspace(self) -> Any:
        """The run's git workspace (the executor owns it)."""
        return self.executor.workspace

    @property
    def spend(self) -> UsageTotals:
        return self.health.spend

    def obligation(self) -> tuple[str | None, str]:
        return obligation(self.ledger)

    def measure_noise(self, repeats: int) -> NoiseMeasurement:
        """Re-run the current best with `repeats` new seeds and store the spread."""
        return measure_noise(self.executor, repeats, run_stopping=lambda: self._stop)

    # ---- the main loop --------------------------------------------------------------------------------------
    def run(self) -> RunState:
        """Drive the agent until the trial budget is spent, the agent is done, or a stop. Returns the end state."""
        self._loop_thread = threading.current_thread()
        poller = threading.Thread(target=self._command_thread, name="commands", daemon=True)
        poller.start()
        end = RunState.STOPPED
        try:
            self._set_state(RunState.RUNNING)
            self._check_cost_limit_is_enforceable()
            self._apply_spend_limits()
            self.executor.warm_next_trial()
            if self.config.noise_repeats and self.ledger.latest_noise(self.config.budget_s) is None:
                self.measure_noise(self.config.noise_repeats)
            end = self._loop()
            if end == RunState.FINISHED and self.config.transfer_at_end and not self._stop:
                self._transfer_at_end()
        except (OSError, sqlite3.Error) as exc:
            # Storage failed (a full disk, a dying drive). Every finished trial is already durable; stop
            # cleanly and say how to go on, rather than run trials whose results cannot be recorded.
            raise SupervisorError(storage_failure_message(exc, self.config.run_dir)) from exc
        finally:
            try:
                self._set_state(end, self._pause_reason if end == RunState.PAUSED else self._end_detail)
            except (OSError, sqlite3.Error):
                pass  # the same storage failure; the message above says what to do
            self.close()
        return end

    def _loop(self) -> RunState:
        """Steps until the run ends; returns how it ended."""
        while True:
            if self._stop:
                return RunState.STOPPED
            if self._paused:
                self._wait_paused()
                continue
            cost_limit = self.health.cost_limit_reached()
            if cost_limit:
                self._end_detail = cost_limit
                return RunState.STOPPED
            kind, _ = self.obligation()
            left = self.executor.trial_budget_left()
            if kind is None and left is not None and left <= 0:
                self.bus.emit(ev.NOTICE, level="info",
                              message=f"trial budget of {self.config.max_trials} spent; the run is finished")
                return RunState.FINISHED
            if not self.step():
                return RunState.FINISHED

    def transfer_check(self, plan: TransferPlan) -> TransferResult:
        """Run the scale-transfer check's plan with this run's executor (`autoresearch transfer`, or at the end)."""
        return TransferCheck(self.executor, lambda: self._stop).run(plan)

    def _transfer_at_end(self) -> None:
        plan = plan_transfer(self.ledger, Scale(), DEFAULT_TRANSFER_SEEDS)
        self.bus.emit(ev.NOTICE, level="info", message="the night is finished: the scale-transfer check runs now\n"
                      + plan.describe(self.config.budget_s, self.config.budget_tokens))
        result = self.transfer_check(plan)
        for line in result_lines(result):
            self.bus.emit(ev.NOTICE, level="info", message=line)
        self.files.render()

    def _wait_paused(self) -> None:
        self._set_state(RunState.PAUSED, self._pause_reason)
        next_probe = time.monotonic() + self.config.probe_every_s
        while True:
            with self._control:
                if not self._paused or self._stop:
                    break
                self._control.wait(timeout=COMMAND_POLL_S)
            if self.health.outage_paused and time.monotonic() >= next_probe:
                self.health.probe(getattr(self.agent, "probe", None))
                next_probe = time.monotonic() + self.config.probe_every_s
        self.health.pause_ended()
        self.runaway.reset()  # whoever resumes gives the agent a fresh start (with a steer, usually)
        if not self._stop:
            self._set_state(RunState.RUNNING)

    def step(self) -> bool:
        """One agent turn and its tool calls. False when the agent has nothing more to do."""
        ctx = self.build_context()
        steering_ids = [s.id for s in self.ledger.pending_steering()]
        self._clear_live_reply()
        try:
            turn = self.agent.turn(ctx)
        except (AgentAuthError, AgentConfigError) as exc:
            self._agent_fatal(exc)
            raise
        except AgentUnavailable as exc:
            self.health.unavailable(exc)
            return True
        except AgentRequestError as exc:
            self.record(f"agent error: {exc}")
            self.pause(f"{exc}; fix the cause, then resume")
            return True
        except Exception as exc:  # the night must not die on one bad turn
            self.record(f"agent error: {type(exc).__name__}: {exc}")
            self.pause(f"the agent failed: {type(exc).__name__}: {exc}")
            return True
        self.health.answered()
        turn_id = self.ledger.add_turn("agent", turn.text, usage=turn.usage)
        self._clear_live_reply()  # the reply is in the ledger now
        self.health.record_usage(turn.usage)
        failpoint("turn_recorded")
        if steering_ids:
            self.ledger.mark_steering_delivered(steering_ids, turn_id)
        if turn.text:
            self.bus.emit(ev.AGENT_TEXT, text=turn.text)
        if self._stop:  # stopped while the reply was on its way: the person's stop wins over its calls
            if turn.calls:
                self.record(f"the run was stopped while this reply was on its way: its {len(turn.calls)} tool "
                            "call(s) were not run")
            return True
        self._last_outcomes = self._run_calls(turn.calls)
        self.files.append_transcript()
        runaway = self.runaway.observe(turn.calls, self._last_outcomes, reflection_due=ctx.obligation == "reflection",
                                       script_digest=hashlib.sha256(self.executor.editable_text().encode()).hexdigest())
        if runaway is not None:
            self.record(f"runaway guard: {runaway.reason}")
            self.bus.emit(ev.NOTICE, level="warning", message=runaway.reason)
            self.pause(runaway.reason)
        if turn.usage is not None:  # a paid model: garbage in a loop burns money
            self.health.count_malformed([p for p in map(call_problem, turn.calls) if p])
        if turn.done and not turn.calls:
            self.bus.emit(ev.NOTICE, level="info", message=f"the agent ({self.agent.name}) has nothing more to do")
            return False
        self.health.count_calls(len(turn.calls))
        return True

    def _run_calls(self, calls: list[ToolCall]) -> list[ToolOutcome]:
        outcomes: list[ToolOutcome] = []
        for call in calls:
            failed = next((o for o in outcomes if not o.ok), None)
            # The rest of a reply was planned on the failed call working: a run_trial after a failed
            # edit would spend a whole trial on code the description does not match.
            outcomes.append(self._dispatch(call) if failed is None else self._skip(call, failed))
        return outcomes

    def _dispatch(self, call: ToolCall) -> ToolOutcome:
        name = _storable(call.name)  # the model's text: it may hold anything, surrogates included
        self.bus.emit(ev.TOOL_CALL, tool=name, input=call.input)
        if call.problem:  # the model's call could not be read: it gets the reason, nothing runs
            outcome = ToolOutcome(name, ok=False, call_id=call.id,
                                  content=prompts.CALL_UNREADABLE.format(tool=name, problem=_storable(call.problem)))
        else:
            outcome = self.toolbox.dispatch(call)
        self.ledger.add_turn("tool", outcome.content, tool=name, input=call.input, refused=outcome.refused)
        self.bus.emit(ev.TOOL_RESULT, tool=name, ok=outcome.ok, refused=outcome.refused,
                      content=outcome.content)
        return outcome

    def _skip(self, call: ToolCall, failed: ToolOutcome) -> ToolOutcome:
        name = _storable(call.name)
        content = prompts.CALL_SKIPPED.format(tool=failed.tool)
        self.ledger.add_turn("tool", content, tool=name, input=call.input)
        self.bus.emit(ev.TOOL_RESULT, tool=name, ok=False, refused=False, content=content)
        return ToolOutcome(name, ok=False, content=content, call_id=call.id)

    # ---- what ApiHealth may ask of the loop (its HealthSink) ------------------------------------------------
    def record(self, text: str, *, usage: dict[str, Any] | None = None, transcript: bool = True) -> None:
        self.ledger.add_turn("system", text, usage=usage)
        if transcript:
            self.files.append_transcript()

    def notice(self, level: str, message: str) -> None:
        self.bus.emit(ev.NOTICE, level=level, message=message)

    def set_running(self, detail: str = "") -> None:
        self._set_state(RunState.RUNNING, detail)

    def usage_recorded(self, usage: dict[str, Any], totals: dict[str, Any]) -> None:
        self.bus.emit(ev.USAGE, usage=usage, totals=totals)

    # ---- the agent's API --------------------------------------------------------------------------------------
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

    def _agent_fatal(self, exc: Exception) -> None:
        """A key or setting the person must fix: record it, say it, and let the run stop."""
        self._end_detail = str(exc)
        self.record(f"agent error: {exc}")
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

    def _spend_so_far(self) -> UsageTotals:
        totals = UsageTotals()
        for turn in self.ledger.turns():
            totals.add(turn.usage)
        return totals

    def _check_cost_limit_is_enforceable(self) -> None:
        if self.config.max_cost is not None and not getattr(self.agent, "prices_known", True):
            model = getattr(self.agent, "model", self.config.model)
            raise SupervisorError(
                f"--max-cost needs the price of model {model!r}, which is not in the price table (as of "
                f"{PRICES_AS_OF}): give it with --price IN,OUT in dollars per million tokens, e.g. --price 3,15")

    def _apply_spend_limits(self) -> None:
        """A language model's night has a spend limit, in dollars or, without a known price, in tokens: said at
        the start and kept in the ledger for `status` and the UI."""
        if not hasattr(self.agent, "prices_known"):
            return  # the offline and scripted agents spend nothing
        max_cost, max_tokens, line = resolve_spend_limits(self.config, bool(self.agent.prices_known))
        self.health.max_cost, self.health.max_tokens = max_cost, max_tokens
        self.ledger.set_meta("spend_limits", {"max_cost": max_cost, "max_tokens": max_tokens, "line": line})
        self.bus.emit(ev.NOTICE, level="info", message=line)

    # ---- context for the agent ------------------------------------------------------------------------------
    def build_context(self) -> TurnContext:
        return turn_context(self.config, self.ledger, self.executor, self._last_outcomes)

    # ---- closing ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.executor.discard_warm()
        try:
            self.files.render_all()
        except OSError as exc:
            print(f"warning: could not write the journal files: {exc}", file=sys.stderr)
        try:
            self.agent.close()
        finally:
            self.ledger.close()
            self._lock.release()


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


__all__ = ["Supervisor", "SupervisorError", "storage_failure_message"]


def _storable(text: object, limit: int = 200) -> str:
    """A model-given name as text the ledger can store: valid UTF-8, bounded."""
    return str(text)[:limit].encode("utf-8", "replace").decode("utf-8")
